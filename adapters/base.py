"""The target contract every adapter implements, and the decoder-stack runner the dense families share.

An adapter wraps a loaded mlx-lm model and runs the model's own layer modules itself, so it can
keep the hidden states of the tapped layers from the same pass that produces the logits. Nothing
in mlx-lm is patched. What the decode loop uses:

- `embed(tokens)` and `lm_head(hidden)`: the target's embedding and LM head (the drafter has none;
  `first_layer_input` and `finish_logits` are where a family's own call differs from them, and
  `head_logits` is the head before `finish_logits`);
- `make_cache()` and `verify(tokens, caches, layer_ids)`: one pass over a block of tokens that
  returns the final hidden states, the tapped states and `commit(n)`, which keeps the first n
  positions of the pass in the caches and forgets the rest (a rejected draft's tail);
- `default_layer_ids(n)`, `stop_tokens(tokenizer)` and `apply_chat_template(tokenizer, prompt)`.

"Layer i" is the output of decoder layer i (0-based), i.e. `hidden_states[i + 1]` in Hugging
Face terms.

Cache kinds and how `commit` rolls them back:
- a KV cache is trimmed;
- a sliding-window layer gets a plain KV cache that keeps every position, its mask limiting
  attention to the window: mlx-lm's rotating cache cannot be trimmed once it has wrapped around;
- a recurrent state (an ArraysCache: GatedDeltaNet's conv and recurrent state) is restored from
  the state before the pass and the accepted prefix is run through the layer's recurrence again
  (`replay`, which the family's adapter provides). A full accept needs neither. In a batch whose
  rows keep different counts, one replay serves every row: the cache's per-row `lengths` make
  mlx-lm's recurrence leave a row's state alone past its count.
"""

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.base import create_attention_mask, create_ssm_mask
from mlx_lm.models.cache import ArraysCache, KVCache, QuantizedKVCache, RotatingKVCache, make_prompt_cache

from .errors import DFlashError
from .loading import DTYPES


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
    # commit(n): keep the first n of the L positions in the caches; for a batch, n is a list, one per row.
    commit: Callable[[object], None]


class DecoderAdapter:
    family = "decoder"
    stop_token_strings: Tuple[str, ...] = ()
    chat_template_kwargs: dict = {}

    def __init__(self, model: nn.Module):
        self.model = model
        # Vision-language checkpoints (qwen3_5) wrap the text model; only its text path is used.
        self.text_model = getattr(model, "language_model", model)
        self.args = self.text_model.args
        self.decoder = self.text_model.model  # embed_tokens, layers, norm
        self.layers = self.text_model.layers
        family_caches = make_prompt_cache(model)
        # The attention window of each layer, None for full attention.
        self.windows = [c.max_size if isinstance(c, RotatingKVCache) else None for c in family_caches]
        self.check_caches(family_caches)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def hidden_size(self) -> int:
        return self.args.hidden_size

    @property
    def vocab_size(self) -> int:
        return self.decoder.embed_tokens.weight.shape[0]

    @property
    def context_window(self):
        return getattr(self.args, "max_position_embeddings", None)

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
        """The token embeddings the drafters embed their block with."""
        return self.decoder.embed_tokens(tokens)

    def first_layer_input(self, tokens: mx.array) -> mx.array:
        """What the first decoder layer receives for `tokens`: their embeddings, in most families."""
        return self.embed(tokens)

    def lm_head(self, hidden: mx.array, rows: Optional[mx.array] = None) -> mx.array:
        """Logits from final-normed hidden states, exactly as the model's own __call__ does: its
        head's (`head_logits`), finished as the family finishes them (`finish_logits`)."""
        return self.finish_logits(self.head_logits(hidden, rows))

    def head_logits(self, hidden: mx.array, rows: Optional[mx.array] = None) -> mx.array:
        """What the LM head itself computes: the head, or the tied embedding where there is none.
        With `rows` (`head_rows` of some tokens), the logits of those tokens alone."""
        if rows is not None:
            return hidden @ rows.T
        head = self.head_module
        return head(hidden) if head is not self.decoder.embed_tokens else head.as_linear(hidden)

    def finish_logits(self, logits: mx.array) -> mx.array:
        """What the family's __call__ does to its head's logits (Gemma 4's soft cap): nothing here."""
        return logits

    @property
    def head_module(self) -> nn.Module:
        """The module that holds the LM head's weight: the model's head, or its tied embedding."""
        return self.text_model.lm_head if hasattr(self.text_model, "lm_head") else self.decoder.embed_tokens

    def head_rows(self, tokens: mx.array) -> mx.array:
        """The LM head's weight rows of `tokens` [K] (the tied embedding's where there is no head),
        dequantized, in the hidden states' dtype: [K, D]."""
        head = self.head_module
        if not isinstance(head, (nn.Linear, nn.QuantizedLinear, nn.Embedding, nn.QuantizedEmbedding)):
            raise DFlashError(f"the {self.family} target's LM head ({type(head).__name__}) has no rows to restrict")
        rows = head.weight[tokens]
        if hasattr(head, "scales"):
            biases = head.biases[tokens] if getattr(head, "biases", None) is not None else None
            rows = mx.dequantize(rows, head.scales[tokens], biases, head.group_size, head.bits, mode=head.mode)
        return rows.astype(DTYPES[self.dtype])

    def mask(self, h: mx.array, cache, window) -> object:
        """The mask the layer of `cache` needs for the pass over `h`."""
        if isinstance(cache, ArraysCache):
            return create_ssm_mask(h, cache)
        return create_attention_mask(h, cache, window_size=window)

    def verify(self, tokens: mx.array, caches: list, layer_ids: Sequence[int]) -> Verification:
        """Run `tokens` [1, L] through the target, appending them to `caches`."""
        h = self.first_layer_input(tokens)
        masks, wanted, recurrent = {}, {layer_id: None for layer_id in layer_ids}, []
        for i, (layer, cache, window) in enumerate(zip(self.layers, caches, self.windows)):
            kind = (type(cache), window)
            if kind not in masks:
                masks[kind] = self.mask(h, cache, window)
            if isinstance(cache, ArraysCache):
                recurrent.append((layer, cache, list(cache.cache), h))  # arrays are immutable: no copy
            h = layer(h, masks[kind], cache)
            if i in wanted:
                wanted[i] = h
        taps = mx.concatenate([wanted[i] for i in layer_ids], axis=-1)
        return Verification(self.decoder.norm(h), taps, self.commit_function(caches, tokens.shape[1], recurrent))

    def commit_function(self, caches: list, length: int, recurrent: Sequence = ()) -> Callable[[object], None]:
        """`commit(n)` for a pass of `length` positions through `caches`, each trimmed (or, in a
        batch, each row told to forget) once; `recurrent` holds (layer, cache, state before the
        pass, the layer's inputs) for each recurrent layer, restored and replayed."""

        def commit(n) -> None:
            ragged = isinstance(n, list)  # a batch: each row keeps its own number of positions
            kept = n if ragged else [n]
            if min(kept) == length:
                return
            for cache in caches:
                if isinstance(cache, ArraysCache):
                    continue
                if ragged:
                    cache.forget([length - k for k in kept])
                else:
                    cache.trim(length - n)
            for layer, cache, before, inputs in recurrent:
                cache.cache = before
                if min(kept) < max(kept):  # the recurrence's padding mask stops each row at its own length
                    cache.lengths = mx.array(kept)
                self.replay(layer, inputs[:, : max(kept)], cache)
                cache.lengths = None

        return commit

    def replay(self, layer: nn.Module, inputs: mx.array, cache: ArraysCache) -> None:
        """Advance a recurrent layer's state over `inputs` (the layer's inputs at the accepted
        positions): the families with recurrent layers say how."""
        raise NotImplementedError

    def make_cache(self) -> list:
        """The family's caches, with a plain KV cache (trimmable at any length) for every sliding-window layer."""
        return [KVCache() if window else cache for cache, window in zip(make_prompt_cache(self.model), self.windows)]

    def check_caches(self, caches: list) -> None:
        recurrent_ok = type(self).replay is not DecoderAdapter.replay
        for cache in caches:
            if not (isinstance(cache, (KVCache, QuantizedKVCache, RotatingKVCache))
                    or (recurrent_ok and isinstance(cache, ArraysCache))):  # fmt: skip
                raise DFlashError(
                    f"{self.family} target uses a {type(cache).__name__}, which dflash-mlx cannot roll back "
                    "after a rejected draft"
                )

    def stop_tokens(self, tokenizer) -> set:
        stops = set(tokenizer.eos_token_ids)
        vocab = tokenizer.get_vocab()
        stops.update(vocab[s] for s in self.stop_token_strings if s in vocab)
        return stops

    def apply_chat_template(self, tokenizer, prompt, thinking: Optional[bool] = None) -> str:
        """A conversation (a list of {"role", "content"} messages, or one user turn's text) rendered
        for generation; `thinking` switches the template's thinking mode (None: the family's default,
        the one its published drafters were trained with)."""
        if getattr(tokenizer, "chat_template", None) is None:
            raise DFlashError("the target's tokenizer has no chat template; turn chat off to give it raw text")
        options = dict(self.chat_template_kwargs)
        if thinking is not None:
            options["enable_thinking"] = thinking
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **options)
