"""Gemma 4 (`mlx_lm.models.gemma4_text`, and the text path of `gemma4`, which mlx-lm also loads
`gemma4_unified` checkpoints with): sliding-window and global layers, the last layers reading the
keys and values of an earlier layer instead of their own, per-layer input embeddings (the small
models), MoE blocks (26B-A4B) and keys equal to values on global layers inside the family's own
layers, the embedding scaled by sqrt(hidden size), and the final logits soft-capped.

Only the layers before the KV-shared ones have a cache (the family's `make_cache` stops there), so
`commit` trims each underlying cache once; a shared layer reads the keys and values its source
layer's cache returned in the same pass, as the model's own `__call__` passes them on."""

from typing import Sequence

import mlx.core as mx
from mlx_lm.models.gemma4_text import logit_softcap

from .base import DecoderAdapter, Verification


class Gemma4Adapter(DecoderAdapter):
    family = "gemma4"
    # <turn|> ends a turn (the tokenizer's eot_token; its eos_token is <eos>).
    stop_token_strings = ("<turn|>",)

    def embed(self, tokens: mx.array) -> mx.array:
        """What the first layer receives: the token embedding times sqrt(hidden size). The DFlash
        drafters embed their block with the target's `embed_tokens` module, which in Hugging Face's
        Gemma 4 (Gemma4TextScaledWordEmbedding) applies that scale itself."""
        return self.decoder.embed_tokens(tokens) * self.decoder.embed_scale

    def finish_logits(self, logits: mx.array) -> mx.array:
        softcap = self.text_model.final_logit_softcapping
        return logits if softcap is None else logit_softcap(softcap, logits)

    def verify(self, tokens: mx.array, caches: list, layer_ids: Sequence[int]) -> Verification:
        """Run `tokens` [B, L] through the target the way Gemma4TextModel.__call__ does, keeping
        the outputs of the tapped layers."""
        decoder, count = self.decoder, self.num_layers
        # The per-layer inputs and the masks come from the model's own helpers, as in its call.
        h = self.embed(tokens)
        per_layer_inputs = [None] * count
        if decoder.hidden_size_per_layer_input:
            projected = decoder._project_per_layer_inputs(h, decoder._get_per_layer_inputs(tokens))
            per_layer_inputs = [projected[:, :, i, :] for i in range(count)]
        layer_caches = caches + [None] * (count - len(caches))  # the KV-shared layers have none
        masks = decoder._make_masks(h, layer_caches)
        passed_on = [(None, None)] * count  # each layer's keys, values and RoPE offset
        wanted = {layer_id: None for layer_id in layer_ids}
        for i, (layer, cache, mask, source, per_layer_input) in enumerate(
            zip(self.layers, layer_caches, masks, decoder.previous_kvs, per_layer_inputs)
        ):
            shared_kv, offset = passed_on[source]  # (None, None) for a layer with its own keys and values
            h, shared_kv, offset = layer(h, mask, cache, per_layer_input=per_layer_input, shared_kv=shared_kv,
                                         offset=offset)  # fmt: skip
            passed_on[i] = (shared_kv, offset)
            if i in wanted:
                wanted[i] = h
        taps = mx.concatenate([wanted[i] for i in layer_ids], axis=-1)
        return Verification(decoder.norm(h), taps, self.commit_function(caches, tokens.shape[1]))
