"""Qwen3 MoE models (`mlx_lm.models.qwen3_moe`, Qwen3-Coder-30B-A3B): Qwen3 attention and KV
caches, sparse MoE MLPs inside the family's own layers."""

from .qwen3 import Qwen3Adapter


class Qwen3MoeAdapter(Qwen3Adapter):
    family = "qwen3_moe"
    # Qwen3-Coder has no thinking mode; its template takes no switch.
    chat_template_kwargs = {}
