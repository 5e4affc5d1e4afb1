"""Muse Glimmer (`mlx_lm.models.muse_glimmer`, the text tower mlx-lm ports): three sliding-window
layers to one global layer without positions, gated attention outputs and scaleless q/k norms
inside the family's own layers; the token embeddings RMS-normed (no scale) before the first layer,
and the head's logits multiplied by `output_multiplier`, then soft-capped.

The drafters embed their block with the embedding table's rows, not normed (z-lab's reference: the
target's token embedding times the drafter's `input_embedding_scale`): `embed` returns those rows
and `first_layer_input` what the first layer receives. The published DFlash 2 drafter repeats the
target's multiplier and soft cap in its own config and applies them to the head's logits itself
(DFlashModel.draft_head)."""

import mlx.core as mx

from .base import DecoderAdapter


class MuseGlimmerAdapter(DecoderAdapter):
    family = "muse_glimmer"

    def first_layer_input(self, tokens: mx.array) -> mx.array:
        return mx.fast.rms_norm(self.embed(tokens), None, self.decoder.embed_eps)

    def finish_logits(self, logits: mx.array) -> mx.array:
        cap = self.args.final_logit_softcapping
        return mx.tanh(logits * self.args.output_multiplier / cap) * cap
