"""Loading mlx-lm checkpoints (local directories or Hugging Face repo ids) in a chosen dtype."""

from pathlib import Path
from typing import Optional

import mlx.core as mx
from mlx_lm import load as mlx_lm_load

from .errors import DFlashError

DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}
DTYPE_CHOICES = ("auto", *DTYPES)  # what every command's --dtype accepts


def resolve_dtype(dtype: Optional[str]) -> Optional[str]:
    """"auto": float32 on the CPU backend (only fp32 matmuls go through BLAS there), the
    checkpoint's dtype elsewhere; None keeps the checkpoint's."""
    if dtype == "auto":
        return "float32" if mx.default_device() == mx.cpu else None
    if dtype is not None and dtype not in DTYPES:
        raise DFlashError(f"unknown dtype '{dtype}'; choose one of {', '.join(DTYPES)}")
    return dtype


def is_hub_id(name: str) -> bool:
    return not name.startswith((".", "/", "~")) and name.count("/") == 1 and not Path(name).exists()


def resolve_path(path_or_repo: str, what: str) -> Path:
    """A local directory, or a Hugging Face repo id downloaded (config and weights only)."""
    path = Path(path_or_repo).expanduser()
    if path.is_dir():
        return path
    if not is_hub_id(path_or_repo):
        raise DFlashError(f"{what} '{path_or_repo}' not found")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(path_or_repo, allow_patterns=["*.json", "*.safetensors", "*.jinja"]))
    except Exception as e:
        raise DFlashError(f"cannot fetch {what} '{path_or_repo}' from the Hugging Face hub: {type(e).__name__}: {e}") from None


def load_target(path_or_repo: str, dtype: Optional[str] = "auto", what: str = "target"):
    """Load an mlx-lm checkpoint (local directory or hub id) in `dtype`. Returns (model, tokenizer)."""
    dtype = resolve_dtype(dtype)
    if not Path(path_or_repo).expanduser().is_dir() and not is_hub_id(path_or_repo):
        raise DFlashError(f"{what} '{path_or_repo}' not found")
    try:
        model, tokenizer = mlx_lm_load(path_or_repo)
    except Exception as e:
        raise DFlashError(f"cannot load {what} '{path_or_repo}': {type(e).__name__}: {e}") from None
    if dtype is not None:
        model.set_dtype(DTYPES[dtype])
    return model, tokenizer
