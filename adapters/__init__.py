"""Target-family adapters. `adapter_for(model)` picks the adapter of a loaded mlx-lm model."""

from mlx_lm.models.cache import ArraysCache, make_prompt_cache

from .base import DecoderAdapter, Verification, default_target_layer_ids
from .errors import DFlashError
from .llama import LlamaAdapter
from .qwen3 import Qwen3Adapter

ADAPTERS = {
    "mlx_lm.models.llama": LlamaAdapter,
    "mlx_lm.models.qwen3": Qwen3Adapter,
}


def adapter_for(model) -> DecoderAdapter:
    module = type(model).__module__
    if module in ADAPTERS:
        return ADAPTERS[module](model)
    family = module.rsplit(".", 1)[-1]
    if any(isinstance(c, ArraysCache) for c in make_prompt_cache(model)):
        raise DFlashError(
            f"target family '{family}' has recurrent (linear-attention) layers whose state cannot be "
            "rolled back yet; supported families: llama, qwen3"
        )
    raise DFlashError(f"no dflash-mlx adapter for target family '{family}'; supported families: llama, qwen3")


__all__ = [
    "ADAPTERS", "DFlashError", "DecoderAdapter", "LlamaAdapter", "Qwen3Adapter", "Verification", "adapter_for",
    "default_target_layer_ids",
]  # fmt: skip
