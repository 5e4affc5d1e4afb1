"""Llama 3.x and every model mlx-lm loads with `mlx_lm.models.llama` (Mistral, ...)."""

from .base import DecoderAdapter


class LlamaAdapter(DecoderAdapter):
    family = "llama"
    stop_token_strings = ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>")
