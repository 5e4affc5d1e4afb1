"""Loading mlx-lm checkpoints (local directories or Hugging Face repo ids) in a chosen dtype,
quantized checkpoints dequantized where their quantized matmuls are slow."""

import json
import os
import sys
from pathlib import Path
from typing import Optional

import mlx.core as mx
import mlx.nn as nn
from mlx_lm import load as mlx_lm_load
from mlx_lm.utils import dequantize_model

from .errors import DFlashError
from .gguf import is_gguf, load_gguf

DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}
DTYPE_CHOICES = ("auto", *DTYPES)  # what every command's --dtype accepts
DEQUANTIZE_CHOICES = ("auto", "on", "off")  # what every command's --dequantize accepts


def cpu_backend() -> bool:
    return mx.default_device() == mx.cpu


def resolve_dtype(dtype: Optional[str]) -> Optional[str]:
    """"auto": float32 on the CPU backend (only fp32 matmuls go through BLAS there), the
    checkpoint's dtype elsewhere; None keeps the checkpoint's."""
    if dtype == "auto":
        return "float32" if cpu_backend() else None
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


# Fields of a target's config.json (or its text_config) that mlx-lm's model classes compute with:
# a wrong type fails deep inside them, an error that does not name the field.
INTEGER_FIELDS = ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "vocab_size", "max_position_embeddings",
                  "num_experts", "num_experts_per_tok", "moe_intermediate_size")  # fmt: skip
NUMBER_FIELDS = ("rms_norm_eps", "rope_theta")


def check_config_types(config_path: Path, what: str) -> None:
    """A one-line error naming the first field of a local config.json with a wrong type (a
    missing file or field is left to mlx-lm)."""
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError):
        return
    for section in (config, config.get("text_config")):
        if not isinstance(section, dict):
            continue
        for name in INTEGER_FIELDS + NUMBER_FIELDS:
            value = section.get(name)
            types = (int,) if name in INTEGER_FIELDS else (int, float)
            if value is not None and (isinstance(value, bool) or not isinstance(value, types)):
                kind = "a whole number" if name in INTEGER_FIELDS else "a number"
                raise DFlashError(f"{what} config {config_path}: {name} must be {kind}, got {value!r}")


def load_target(path_or_repo: str, dtype: Optional[str] = "auto", what: str = "target", dequantize: str = "auto"):
    """Load an mlx-lm checkpoint (local directory or hub id) or a GGUF file (`adapters.gguf`) in
    `dtype`, dequantized as `dequantize` says (see `dequantize_if_asked`). Returns (model, tokenizer)."""
    dtype = resolve_dtype(dtype)
    if dequantize not in DEQUANTIZE_CHOICES:
        raise DFlashError(f"unknown dequantize setting '{dequantize}'; choose one of {', '.join(DEQUANTIZE_CHOICES)}")
    if is_gguf(path_or_repo):
        model, tokenizer = load_gguf(path_or_repo, what)
    elif not Path(path_or_repo).expanduser().is_dir() and not is_hub_id(path_or_repo):
        raise DFlashError(f"{what} '{path_or_repo}' not found")
    else:
        check_config_types(Path(path_or_repo).expanduser() / "config.json", what)
        try:
            model, tokenizer = mlx_lm_load(path_or_repo)
        except Exception as e:
            raise DFlashError(f"cannot load {what} '{path_or_repo}': {type(e).__name__}: {e}") from None
    if dtype is not None:
        model.set_dtype(DTYPES[dtype])
    dequantize_if_asked(model, dequantize, what)
    return model, tokenizer


def quantized_layers(model: nn.Module) -> list:
    """The model's quantized modules (linear, embedding and MoE expert layers, all with `scales`)."""
    return [module for _, module in model.named_modules() if "scales" in module]


def dequantized_bytes(layers: list) -> int:
    """An upper bound on the size of `layers` dequantized: every weight in float32."""
    return 4 * sum(layer.scales.size * layer.group_size for layer in layers)


def physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def dequantize_if_asked(model: nn.Module, setting: str, what: str) -> None:
    """Replace the quantized layers of `model` by plain ones holding the dequantized weights, in
    the dtype of their scales, as `setting` says: "on", "off", or "auto": on the CPU backend if
    the weights fit in half the memory. The CPU backend's quantized matmul over several tokens
    costs many times a one-token one (a speculative verify pass loses its advantage), while fp32
    matmuls go through BLAS; Metal's quantized kernels are fast, so auto keeps them there.
    "auto" says on stderr, in one line, what it did."""
    layers = quantized_layers(model)
    if setting == "off" or not layers or (setting == "auto" and not cpu_backend()):
        return
    size = dequantized_bytes(layers)
    if setting == "auto" and size > physical_memory() // 2:
        print(f"dflash-mlx: keeping the quantized {what} quantized: dequantized it would take {size / 1e9:.1f} GB, "
              "over half the memory; decoding on the CPU backend will be slow", file=sys.stderr)  # fmt: skip
        return
    dequantize_model(model)
    mx.eval(model.parameters())
    if setting == "auto":
        print(f"dflash-mlx: dequantized the {what} ({size / 1e9:.2f} GB) for the CPU backend, where quantized "
              "matmuls over several tokens are slow; dequantize off keeps it quantized", file=sys.stderr)  # fmt: skip
