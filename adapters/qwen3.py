"""Qwen3 dense models (`mlx_lm.models.qwen3`)."""

from .base import DecoderAdapter


class Qwen3Adapter(DecoderAdapter):
    family = "qwen3"
    stop_token_strings = ("<|im_end|>", "<|endoftext|>")
    # The published Qwen3 DFlash drafters were trained with thinking disabled.
    chat_template_kwargs = {"enable_thinking": False}
