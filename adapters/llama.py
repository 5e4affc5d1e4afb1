"""Llama 3.x and every model mlx-lm loads with `mlx_lm.models.llama` (Mistral, ...)."""

from mlx_lm.models.base import create_attention_mask

from .base import DecoderAdapter


class LlamaAdapter(DecoderAdapter):
    family = "llama"
    stop_token_strings = ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>")

    def attention_masks(self, h, caches):
        # Same masks as LlamaModel.__call__: one for full-attention layers and, when the
        # model has sliding-window layers, one limited to the window.
        decoder = self.decoder
        full = create_attention_mask(h, caches[decoder.fa_idx])
        sliding = None
        if decoder.swa_idx is not None:
            sliding = create_attention_mask(h, caches[decoder.swa_idx], window_size=decoder.sliding_window)
        return [sliding if layer.use_sliding else full for layer in self.layers]
