"""dflash-mlx: DFlash block-diffusion speculative decoding on MLX.

    model, tokenizer = dflash.load("Qwen/Qwen3-4B", "z-lab/Qwen3-4B-DFlash-b16")
    result = dflash.generate(model, tokenizer, "Write quicksort in Python.", max_tokens=256, chat=True)
    print(result.text, result.stats.mean_acceptance)

    # Lossless sampling: speculative sampling (or "match"), reproducible with a seed.
    acceptance = dflash.make_acceptance(dflash.SamplingSettings(temperature=0.7, top_p=0.9), seed=0)
    result = dflash.generate(model, tokenizer, "Write quicksort in Python.", acceptance=acceptance)
"""

from . import blas

blas.use_openblas()  # before anything imports mlx

from adapters.errors import DFlashError  # noqa: E402

from .generate import GenerationResult, GenerationStats, generate, stream_generate  # noqa: E402
from .loading import DFlashModel, load, load_draft, save_draft  # noqa: E402
from .model import DFlashDraftModel, DraftConfig  # noqa: E402
from .sampling import SamplingSettings, SpeculativeSampling, TokenMatching, make_acceptance  # noqa: E402

__all__ = [
    "DFlashDraftModel",
    "DFlashError",
    "DFlashModel",
    "DraftConfig",
    "GenerationResult",
    "GenerationStats",
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
