"""The fast model: the small model that answers fast-route prompts and powers the probe or the judge."""

from dataclasses import dataclass
from typing import Optional

import mlx.nn as nn

from .. import adapter_for
from ..base import DecoderAdapter
from ..loading import load_target


@dataclass
class FastModel:
    """A loaded fast model; its generation stops at `adapter.stop_tokens(tokenizer)`."""

    model: nn.Module
    tokenizer: object  # mlx-lm TokenizerWrapper
    adapter: DecoderAdapter
    path: str

    @property
    def dtype(self) -> str:
        return self.adapter.dtype


def load_fast_model(path: str, dtype: Optional[str] = "auto") -> FastModel:
    """Load an mlx-lm checkpoint (local directory or hub id) as the fast model; dtype as in `load_target`."""
    model, tokenizer = load_target(path, dtype, what="fast model")
    return FastModel(model, tokenizer, adapter_for(model), str(path))
