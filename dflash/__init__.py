"""dflash-mlx: DFlash block-diffusion speculative decoding on MLX.

    model, tokenizer = dflash.load("Qwen/Qwen3-4B", "z-lab/Qwen3-4B-DFlash-b16")
    result = dflash.generate(model, tokenizer, "Write quicksort in Python.", max_tokens=256, chat=True)
    print(result.text, result.stats.mean_acceptance)
"""

from . import blas  # noqa: F401  (must run before mlx is imported)
from .errors import DFlashError
from .generate import GenerationResult, GenerationStats, generate, stream_generate
from .loading import DFlashModel, load, load_draft, save_draft
from .model import DFlashDraftModel, DraftConfig

__all__ = [
    "DFlashDraftModel",
    "DFlashError",
    "DFlashModel",
    "DraftConfig",
    "GenerationResult",
    "GenerationStats",
    "generate",
    "load",
    "load_draft",
    "save_draft",
    "stream_generate",
]
