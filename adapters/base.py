"""What every target adapter shares: running an mlx-lm decoder stack layer by layer.

An adapter wraps a loaded mlx-lm model and runs the model's own layer modules itself, so it
can keep the hidden states of the tapped layers from the same pass that produces the
logits. Nothing in mlx-lm is patched. Family files say how masks are built, which cache
kinds can be rolled back, and the chat conventions.
"""

from typing import List, Sequence, Tuple

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import KVCache, QuantizedKVCache, RotatingKVCache, make_prompt_cache

from dflash.errors import DFlashError
from dflash.model import default_target_layer_ids


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

    def default_layer_ids(self, num_draft_layers: int) -> List[int]:
        return default_target_layer_ids(self.num_layers, num_draft_layers)

    def embed(self, tokens: mx.array) -> mx.array:
        return self.decoder.embed_tokens(tokens)

    def lm_head(self, hidden: mx.array) -> mx.array:
        """Logits from final-normed hidden states, exactly as the model's own __call__ does."""
        if self.model.args.tie_word_embeddings:
            return self.decoder.embed_tokens.as_linear(hidden)
        return self.model.lm_head(hidden)

    def attention_masks(self, h: mx.array, caches: list) -> list:
        raise NotImplementedError

    def forward(self, tokens: mx.array, caches: list, layer_ids: Sequence[int]) -> Tuple[mx.array, mx.array]:
        """Run `tokens` [1, L] through the target, updating `caches`.

        Returns the final normed hidden states [1, L, D] (feed them to `lm_head`) and the
        outputs of decoder layers `layer_ids`, concatenated in that order: [1, L, len * D].
        """
        h = self.embed(tokens)
        wanted = {layer_id: None for layer_id in layer_ids}
        for i, (layer, mask, cache) in enumerate(zip(self.layers, self.attention_masks(h, caches), caches)):
            h = layer(h, mask, cache)
            if i in wanted:
                wanted[i] = h
        return self.decoder.norm(h), mx.concatenate([wanted[i] for i in layer_ids], axis=-1)

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
