"""Target-family adapters. `adapter_for(model)` picks the adapter of a loaded mlx-lm model."""

from .base import DecoderAdapter, Verification, default_target_layer_ids
from .errors import DFlashError
from .gemma4 import Gemma4Adapter
from .gpt_oss import GptOssAdapter
from .llama import LlamaAdapter
from .muse_glimmer import MuseGlimmerAdapter
from .qwen3 import Qwen3Adapter
from .qwen3_5 import Qwen3_5Adapter
from .qwen3_moe import Qwen3MoeAdapter
from .qwen3_next import Qwen3NextAdapter

# mlx-lm family module -> adapter
ADAPTERS = {
    "llama": LlamaAdapter,
    "qwen3": Qwen3Adapter,
    "qwen3_moe": Qwen3MoeAdapter,
    "qwen3_next": Qwen3NextAdapter,
    "qwen3_5": Qwen3_5Adapter,
    "qwen3_5_moe": Qwen3_5Adapter,
    "gpt_oss": GptOssAdapter,
    "gemma4_text": Gemma4Adapter,
    "gemma4": Gemma4Adapter,  # the text path; mlx-lm loads gemma4_unified checkpoints with it too
    "muse_glimmer": MuseGlimmerAdapter,  # the text tower
}


def adapter_for(model) -> DecoderAdapter:
    family = type(model).__module__.removeprefix("mlx_lm.models.")
    if family not in ADAPTERS:
        raise DFlashError(
            f"no dflash-mlx adapter for target family '{family}'; supported families: {', '.join(ADAPTERS)}"
        )
    return ADAPTERS[family](model)


__all__ = [
    "ADAPTERS", "DFlashError", "DecoderAdapter", "Gemma4Adapter", "GptOssAdapter", "LlamaAdapter",
    "MuseGlimmerAdapter", "Qwen3Adapter", "Qwen3MoeAdapter", "Qwen3NextAdapter", "Qwen3_5Adapter", "Verification",
    "adapter_for", "default_target_layer_ids",
]  # fmt: skip
