"""dflash-mlx: DFlash block-diffusion speculative decoding on MLX.

    model, tokenizer = dflash.load("Qwen/Qwen3-4B", "z-lab/Qwen3-4B-DFlash-b16")
    result = dflash.generate(model, tokenizer, "Write quicksort in Python.", max_tokens=256, chat=True)
    print(result.text, result.stats.mean_acceptance)

    # Lossless sampling: speculative sampling (or "match"), reproducible with a seed.
    acceptance = dflash.make_acceptance(dflash.SamplingSettings(temperature=0.7, top_p=0.9), seed=0)
    result = dflash.generate(model, tokenizer, "Write quicksort in Python.", acceptance=acceptance)
"""

from . import blas  # noqa: F401  (must run before mlx is imported)
from .errors import DFlashError
from .generate import GenerationResult, GenerationStats, generate, stream_generate
from .loading import DFlashModel, load, load_draft, save_draft
from .model import DFlashDraftModel, DraftConfig
from .sampling import SamplingSettings, SpeculativeSampling, TokenMatching, make_acceptance

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
