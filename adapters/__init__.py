"""Target-family adapters and the router. `adapter_for(model)` picks the adapter of a loaded mlx-lm model."""

import dflash.blas  # noqa: F401  (OpenBLAS before mlx)
from dflash.errors import DFlashError

from .base import DecoderAdapter
from .llama import LlamaAdapter
from .qwen3 import Qwen3Adapter

ADAPTERS = {
    "mlx_lm.models.llama": LlamaAdapter,
    "mlx_lm.models.qwen3": Qwen3Adapter,
}

# Families mlx-lm loads whose recurrent layers need a state snapshot to roll back.
HYBRID_FAMILIES = ("qwen3_next", "qwen3_5", "mamba", "mamba2", "falcon_h1", "jamba", "nemotron_h", "granitemoehybrid")


def adapter_for(model) -> DecoderAdapter:
    module = type(model).__module__
    if module in ADAPTERS:
        return ADAPTERS[module](model)
    family = module.rsplit(".", 1)[-1]
    if family in HYBRID_FAMILIES:
        raise DFlashError(
            f"target family '{family}' has recurrent (linear-attention) layers whose state cannot be "
            "rolled back yet; supported families: llama, qwen3"
        )
    raise DFlashError(f"no dflash-mlx adapter for target family '{family}'; supported families: llama, qwen3")


__all__ = ["ADAPTERS", "DecoderAdapter", "LlamaAdapter", "Qwen3Adapter", "adapter_for"]
