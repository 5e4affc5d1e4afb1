"""What DFlash 2 (Inco AI / z-lab, August 2026) adds to the DFlash drafter: a dynamic depthwise
convolution over the block around every attention and MLP sublayer, and a path selector that
chooses the proposed block among the drafter's top candidates.

Facts relied on, as z-lab's reference MLX loader (`dflash/model_mlx.py`: `GroupedDynamicCausalConv`,
`DFlash2DecoderLayer`, `CandidateSelector`, `_dflash2_config_kwargs`) and its published-checkpoint
fixtures (`tests/fixtures/dflash2-config.json`, `dflash2-safetensors-header.json`) have them:

- config.json: `architectures: ["DFlash2DraftModel"]`; `dflash_config` holds `block_size`,
  `target_layer_ids`, `mask_token_id`, `conv_kernel_size` (2), `conv_group_size` (16),
  `selector_rank` (256), `selector_top_k` (16), and optionally `output_multiplier`,
  `final_logit_softcapping` (also read at the top level) and `input_embedding_scale`; RoPE comes
  as `rope_parameters: {rope_theta, rope_type}`; `is_causal: false` (in-block attention stays
  bidirectional; the reference makes it causal when `is_causal` is true, or absent with sliding
  layers).
- Weights: `layers.i.attention_conv` and `layers.i.mlp_conv`, each `base_kernel` [2, K, D] (per
  site, before/after the sublayer; per tap; per channel) and `kernel_projection.weight`
  [2 * K * D / G, D] (no bias; output laid out as site, tap, channel group); the selector's
  `candidate_selector.predecessor_codebook` and `successor_codebook` [V, rank] (plain arrays, no
  `.weight`) and `candidate_selector.hidden_projection.weight` [rank, D].
- Convolution: along the block positions only (the context features are not convolved), causal,
  zero before the block's first position: y_t = sum_j (base[j] + k_tj) * x_{t-j}, with the dynamic
  kernels k_t a linear function of the sublayer's normed input at position t, one value per group
  of G channels. Both sites' kernels come from the sublayer's input.
- Logits: the target's LM head on the drafter's output, times `output_multiplier`, then
  cap * tanh(logits / cap) with `final_logit_softcapping`.
- Selector: top-k candidates of those logits at block positions 1..B-1; candidate b after
  predecessor a at position t scores S(a, b) = U_t(b) + <A(a) * H(h_t), B(b)> (U the logits, A and
  B the predecessor and successor codebooks, H the hidden projection of the drafter's final normed
  state h_t at that position); the first predecessor is the block's given token; the path is
  greedy left to right, each position taking its best candidate after the previous choice.
"""

from typing import Optional

import mlx.core as mx
import mlx.nn as nn

ARCHITECTURE = "DFlash2DraftModel"
SITES = 2  # a convolution before the sublayer and one after it


class DynamicConv(nn.Module):
    """The causal depthwise convolution with content-dependent kernels around one sublayer."""

    def __init__(self, hidden_size: int, kernel_size: int, group_size: int):
        super().__init__()
        self.kernel_size, self.group_size = kernel_size, group_size
        self.groups = hidden_size // group_size
        # Starts as the identity (tap 0 is 1, the dynamic part 0): a fresh DFlash 2 layer computes
        # what a DFlash layer does.
        self.base_kernel = mx.zeros((SITES, kernel_size, hidden_size)).at[:, 0].add(1.0)
        self.kernel_projection = nn.Linear(hidden_size, SITES * kernel_size * self.groups, bias=False)
        self.kernel_projection.weight = mx.zeros_like(self.kernel_projection.weight)

    def kernels(self, x: mx.array) -> mx.array:
        """Dynamic kernels [N, L, SITES, K, groups] from the sublayer's input x [N, L, D]."""
        return self.kernel_projection(x).reshape(*x.shape[:-1], SITES, self.kernel_size, self.groups)

    def __call__(self, x: mx.array, kernels: mx.array, site: int) -> mx.array:
        """x [N, L, D] convolved along L with `site`'s base kernel plus its dynamic kernels."""
        n, length, dim = x.shape
        grouped = x.reshape(n, length, self.groups, self.group_size)
        base = self.base_kernel[site].reshape(self.kernel_size, 1, 1, self.groups, self.group_size)
        out = mx.zeros_like(grouped)
        for tap in range(min(self.kernel_size, length)):
            shifted = mx.pad(grouped[:, : length - tap], [(0, 0), (tap, 0), (0, 0), (0, 0)])
            out = out + (base[tap].astype(x.dtype) + kernels[:, :, site, tap, :, None]) * shifted
        return out.reshape(n, length, dim)


class CandidateSelector(nn.Module):
    def __init__(self, hidden_size: int, vocab_size: int, rank: int, top_k: int):
        super().__init__()
        self.top_k = top_k
        scale = rank**-0.5
        self.predecessor_codebook = mx.random.normal((vocab_size, rank)) * scale
        self.successor_codebook = mx.random.normal((vocab_size, rank)) * scale
        self.hidden_projection = nn.Linear(hidden_size, rank, bias=False)

    def candidates(self, logits: mx.array) -> mx.array:
        """The top-k candidate tokens [N, P, k] of logits [N, P, V] (in no particular order)."""
        return mx.argpartition(-logits, self.top_k - 1, axis=-1)[..., : self.top_k]

    def scores(self, hidden: mx.array, unary: mx.array, candidates: mx.array, predecessors: mx.array) -> mx.array:
        """S [N, P, m, k]: S[n, t, i, j] scores candidate j of position t [N, P, k] after
        predecessor i [N, P, m], all pairs at once; hidden [N, P, D] is the drafter's output at the
        positions, unary [N, P, k] its logits of the candidates."""
        left = self.predecessor_codebook[predecessors] * self.hidden_projection(hidden)[:, :, None]  # [N, P, m, r]
        right = self.successor_codebook[candidates]  # [N, P, k, r]
        return unary[:, :, None, :] + left @ right.swapaxes(-1, -2)

    def __call__(self, hidden: mx.array, logits: mx.array, anchors: mx.array,
                 token_ids: Optional[mx.array] = None) -> mx.array:  # fmt: skip
        """The greedy path [N, P] of token ids: hidden [N, P, D] and logits [N, P, K] at block positions
        1..P, over the vocabulary whose token ids are `token_ids` [K] (None: 0..K-1, the target's
        whole vocabulary); anchors [N] the blocks' given tokens."""
        places = self.candidates(logits)
        candidates = places if token_ids is None else token_ids[places]
        # Every candidate of position t - 1 may precede those of t; at t = 0 the anchor does (k times).
        predecessors = mx.concatenate(
            [mx.broadcast_to(anchors[:, None, None], candidates[:, :1].shape), candidates[:, :-1]], axis=1
        )
        scores = self.scores(hidden, mx.take_along_axis(logits, places, axis=-1), candidates, predecessors)
        rows = mx.arange(candidates.shape[0])
        choice = mx.argmax(scores[:, 0, 0], axis=-1)
        path = [candidates[rows, 0, choice]]
        for t in range(1, candidates.shape[1]):
            choice = mx.argmax(scores[rows, t, choice], axis=-1)
            path.append(candidates[rows, t, choice])
        return mx.stack(path, axis=1)


def scale_logits(logits: mx.array, multiplier: float, softcap) -> mx.array:
    if multiplier != 1.0:
        logits = logits * multiplier
    if softcap:
        logits = mx.tanh(logits / softcap) * softcap
    return logits
