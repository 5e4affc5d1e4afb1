"""gpt-oss (`mlx_lm.models.gpt_oss`): sliding-window and full attention layers in turn, attention
sinks and MoE MLPs inside the family's own layers; the harmony chat format."""

from .base import DecoderAdapter


class GptOssAdapter(DecoderAdapter):
    family = "gpt_oss"
    # <|return|> ends a final answer, <|call|> a tool call, <|end|> a message.
    stop_token_strings = ("<|return|>", "<|call|>", "<|endoftext|>")
