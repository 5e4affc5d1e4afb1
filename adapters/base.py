"""The target contract every adapter implements, and the decoder-stack runner the dense families share.

An adapter wraps a loaded mlx-lm model and runs the model's own layer modules itself, so it can
keep the hidden states of the tapped layers from the same pass that produces the logits. Nothing
in mlx-lm is patched. What the decode loop uses:

- `embed(tokens)` and `lm_head(hidden)`: the target's embedding and LM head (the drafter has none);
- `make_cache()` and `verify(tokens, caches, layer_ids)`: one pass over a block of tokens that
  returns the final hidden states, the tapped states and `commit(n)`, which keeps the first n
  positions of the pass in the caches and forgets the rest (a rejected draft's tail);
- `default_layer_ids(n)`, `stop_tokens(tokenizer)` and `apply_chat_template(tokenizer, prompt)`.

"Layer i" is the output of decoder layer i (0-based), i.e. `hidden_states[i + 1]` in Hugging
Face terms.
"""

from dataclasses import dataclass
from typing import Callable, List, Sequence, Tuple

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.base import create_attention_mask
from mlx_lm.models.cache import KVCache, QuantizedKVCache, RotatingKVCache, make_prompt_cache

from .errors import DFlashError


def default_target_layer_ids(num_target_layers: int, num_draft_layers: int) -> List[int]:
    """The published rule for the layers a drafter taps: one per draft layer, spread uniformly from
    the second layer to the third-to-last (36 layers, 5 draft layers: [1, 9, 17, 25, 33]); the
    middle layer for a one-layer drafter."""
    if num_draft_layers == 1:
        return [num_target_layers // 2]
    span = num_target_layers - 4
    return [round(1 + k * span / (num_draft_layers - 1)) for k in range(num_draft_layers)]


@dataclass
class Verification:
    """What one target pass over L tokens returns."""

    hidden: mx.array  # final normed hidden states [1, L, D]; `lm_head` turns them into logits
    taps: mx.array  # outputs of the tapped layers, concatenated in the order asked: [1, L, n_taps * D]
    commit: Callable[[int], None]  # commit(n): keep the first n of the L positions in the caches


class DecoderAdapter:
    family = "decoder"
    stop_token_strings: Tuple[str, ...] = ()
    chat_template_kwargs: dict = {}

    def __init__(self, model: nn.Module):
        self.model = model
        self.decoder = model.model  # embed_tokens, layers, norm
        self.layers = model.layers
        self.check_caches(self.make_cache())

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def hidden_size(self) -> int:
        return self.model.args.hidden_size

    @property
    def vocab_size(self) -> int:
        return self.decoder.embed_tokens.weight.shape[0]

    @property
    def context_window(self):
        return getattr(self.model.args, "max_position_embeddings", None)

    @property
    def dtype(self) -> str:
        """The dtype the target computes in (that of its hidden states)."""
        return str(self.embed(mx.array([[0]])).dtype).removeprefix("mlx.core.")

    def default_layer_ids(self, num_draft_layers: int) -> List[int]:
        return default_target_layer_ids(self.num_layers, num_draft_layers)

    def check_layer_ids(self, layer_ids: Sequence[int], what: str, model: str = "target") -> None:
        """Raise a DFlashError unless `layer_ids` is a non-empty list of this model's layers."""
        if not layer_ids or any(not 0 <= i < self.num_layers for i in layer_ids):
            raise DFlashError(f"{what} {list(layer_ids)}; the {model} has layers 0..{self.num_layers - 1}")

    def embed(self, tokens: mx.array) -> mx.array:
        return self.decoder.embed_tokens(tokens)

    def lm_head(self, hidden: mx.array) -> mx.array:
        """Logits from final-normed hidden states, exactly as the model's own __call__ does."""
        if self.model.args.tie_word_embeddings:
            return self.decoder.embed_tokens.as_linear(hidden)
        return self.model.lm_head(hidden)

    def verify(self, tokens: mx.array, caches: list, layer_ids: Sequence[int]) -> Verification:
        """Run `tokens` [1, L] through the target, appending them to `caches`."""
        h = self.embed(tokens)
        # Each cache makes the mask its layer needs: causal, limited to its window where it rotates.
        masks = {}
        wanted = {layer_id: None for layer_id in layer_ids}
        for i, (layer, cache) in enumerate(zip(self.layers, caches)):
            window = getattr(cache, "max_size", None)
            if window not in masks:
                masks[window] = create_attention_mask(h, cache)
            h = layer(h, masks[window], cache)
            if i in wanted:
                wanted[i] = h
        taps = mx.concatenate([wanted[i] for i in layer_ids], axis=-1)
        length = tokens.shape[1]
        return Verification(self.decoder.norm(h), taps, lambda n: self.rollback(caches, length - n))

    def make_cache(self) -> list:
        return make_prompt_cache(self.model)

    def check_caches(self, caches: list) -> None:
        for cache in caches:
            if not isinstance(cache, (KVCache, QuantizedKVCache, RotatingKVCache)):
                raise DFlashError(
                    f"{self.family} target uses a {type(cache).__name__}, which dflash-mlx cannot roll back "
                    "after a rejected draft (only KV caches are supported)"
                )

    def rollback(self, caches: list, n: int) -> None:
        """Forget the last `n` positions of every layer's cache."""
        if n == 0:
            return
        for cache in caches:
            if not cache.is_trimmable():
                raise DFlashError(
                    f"cannot roll back a {type(cache).__name__} that has wrapped around its window of "
                    f"{getattr(cache, 'max_size', '?')} tokens; use a shorter prompt plus max tokens"
                )
            cache.trim(n)

    def stop_tokens(self, tokenizer) -> set:
        stops = set(tokenizer.eos_token_ids)
        vocab = tokenizer.get_vocab()
        stops.update(vocab[s] for s in self.stop_token_strings if s in vocab)
        return stops

    def apply_chat_template(self, tokenizer, prompt: str) -> str:
        if getattr(tokenizer, "chat_template", None) is None:
            raise DFlashError("the target's tokenizer has no chat template; run with --no-chat")
        messages = [{"role": "user", "content": prompt}]
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, **self.chat_template_kwargs
        )
