"""Qwen3.5 and Qwen3.6, dense and MoE (`mlx_lm.models.qwen3_5`, `qwen3_5_moe`): the text path of
the vision-language checkpoints, built from Qwen3-Next's layers (mlx-lm reuses them too), with
partial rotary embeddings inside the family's own attention."""

from .qwen3_next import Qwen3NextAdapter


class Qwen3_5Adapter(Qwen3NextAdapter):
    family = "qwen3_5"
    # The published Qwen3.5/3.6 DFlash drafters were trained with thinking enabled.
    chat_template_kwargs = {"enable_thinking": True}
