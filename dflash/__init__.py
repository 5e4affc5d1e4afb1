"""dflash-mlx: DFlash block-diffusion speculative decoding on MLX.

    model, tokenizer = dflash.load("Qwen/Qwen3-4B", "z-lab/Qwen3-4B-DFlash-b16")
    result = dflash.generate(model, tokenizer, "Write quicksort in Python.", max_tokens=256, chat=True)
    print(result.text, result.stats.mean_acceptance)

    # Lossless sampling: speculative sampling (or "match"), reproducible with a seed.
    acceptance = dflash.make_acceptance(dflash.SamplingSettings(temperature=0.7, top_p=0.9))
    result = dflash.generate(model, tokenizer, "Write quicksort in Python.", acceptance=acceptance, seed=0)

    # Plain mlx-lm decoding of the target alone, the baseline: the same call on its adapter.
    baseline = dflash.generate(model.adapter, tokenizer, "Write quicksort in Python.", max_tokens=256, chat=True)
"""

from . import blas

blas.use_openblas()  # before anything imports mlx

from adapters.errors import DFlashError  # noqa: E402

from .acceptance import GreedyAcceptance, SpeculativeSampling, TokenMatching, make_acceptance  # noqa: E402
from .generate import GenerationResult, generate, stream_generate  # noqa: E402
from .loading import DFlashModel, load, load_draft, save_draft  # noqa: E402
from .model import DFlashDraftModel, DraftConfig  # noqa: E402
from .sampling import SamplingSettings  # noqa: E402
from .stats import GenerationStats  # noqa: E402

__all__ = [
    "DFlashDraftModel",
    "DFlashError",
    "DFlashModel",
    "DraftConfig",
    "GenerationResult",
    "GenerationStats",
    "GreedyAcceptance",
    "SamplingSettings",
    "SpeculativeSampling",
    "TokenMatching",
    "generate",
    "load",
    "load_draft",
    "make_acceptance",
    "save_draft",
    "stream_generate",
]
