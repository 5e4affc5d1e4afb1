"""Qwen3-Next (`mlx_lm.models.qwen3_next`, Qwen3-Coder-Next): GatedDeltaNet linear-attention
layers between full-attention layers, MoE MLPs."""

from .qwen3 import Qwen3Adapter


class Qwen3NextAdapter(Qwen3Adapter):
    family = "qwen3_next"

    def replay(self, layer, inputs, cache):
        # The layer's own linear attention, run over the accepted positions from the restored
        # state: its conv state and recurrent state end where plain decoding's would.
        layer.linear_attn(layer.input_layernorm(inputs), self.mask(inputs, cache, None), cache)
