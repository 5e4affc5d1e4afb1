"""The DFlash block-diffusion drafter (Chen, Liang and Liu, arXiv 2602.06036) and its checkpoint format.

A few Qwen3-style layers (RMSNorm, q_norm/k_norm on heads, RoPE, SwiGLU MLP) with the target's
hidden size. The drafter has no embedding and no LM head of its own: the caller embeds the block
`[last committed token, mask, ..., mask]` with the target's embedding and turns the drafter's
output into logits with the target's LM head; positions 1..B-1 are the proposals.

Every draft layer attends from the block tokens to [context features ; block tokens], with no
causal mask inside the block. The context features are the target's tapped hidden states
(concatenated on the feature axis), projected by `fc` (n_taps * D -> D, no bias) and normalised by
`hidden_norm`; one feature per position, shared by every layer. Their keys and values go into a
per-layer KVCache, so each step only projects the positions committed since the last step. RoPE
puts context features at their sequence positions; the block continues after them.

Checkpoints: a directory with `config.json` (the Qwen3 fields plus `block_size`,
`num_target_layers` and `dflash_config: {target_layer_ids, mask_token_id}`, optionally
`layer_types` with `sliding_window`) and `*.safetensors` whose names carry no `model.` prefix
(`fc.weight`, `hidden_norm.weight`, `norm.weight`, `layers.i.*`), the format of the published
drafters. DFlash 2 drafters (dflash/dflash2.py) add dynamic convolutions to every layer and a path
selector; their config.json is parsed and written by dflash/draft_config.py.

A drafter may carry a draft vocabulary (our extension, `draft_vocab_size` in `dflash_config` and
the ascending token ids in a `draft_vocab` weight): its logits are computed for those tokens alone
(the rows of the target's LM head, DFlashModel.draft_head) and it never proposes another. Training
and drafting then skip most of a large vocabulary's LM head; the target's verification keeps the
output exact whatever is proposed.
"""

from typing import Optional

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.base import scaled_dot_product_attention
from mlx_lm.models.cache import KVCache, RotatingKVCache
from mlx_lm.models.qwen3 import MLP
from mlx_lm.models.rope_utils import initialize_rope

from .dflash2 import CandidateSelector, DynamicConv, scale_logits
from .draft_config import DraftConfig

__all__ = ["DFlashDraftModel", "DraftConfig"]


class DraftAttention(nn.Module):
    def __init__(self, config: DraftConfig, sliding_window: Optional[int]):
        super().__init__()
        dim, head_dim = config.hidden_size, config.head_dim
        self.n_heads = config.num_attention_heads
        self.n_kv_heads = config.num_key_value_heads
        self.scale = head_dim**-0.5
        self.sliding_window = sliding_window
        bias = config.attention_bias
        self.q_proj = nn.Linear(dim, self.n_heads * head_dim, bias=bias)
        self.k_proj = nn.Linear(dim, self.n_kv_heads * head_dim, bias=bias)
        self.v_proj = nn.Linear(dim, self.n_kv_heads * head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * head_dim, dim, bias=bias)
        self.q_norm = nn.RMSNorm(head_dim, eps=config.rms_norm_eps)
        self.k_norm = nn.RMSNorm(head_dim, eps=config.rms_norm_eps)
        self.rope = initialize_rope(
            head_dim, config.rope_theta, False, config.rope_config, config.max_position_embeddings
        )

    def _heads(self, x: mx.array, n_heads: int) -> mx.array:
        B, L, _ = x.shape
        return x.reshape(B, L, n_heads, -1).transpose(0, 2, 1, 3)

    @staticmethod
    def _side_by_side(x: mx.array) -> mx.array:
        """[N, heads, Lb, hd] blocks -> [1, heads, N * Lb, hd]: one sequence sharing one context."""
        N, H, L, D = x.shape
        return x.transpose(1, 0, 2, 3).reshape(1, H, N * L, D)

    def __call__(self, x, context, cache=None, block_offset=None, mask=None):
        """x: blocks [N, Lb, D]; context: context features [1, Lc, D] (Lc may be 0), or [N, Lc, D].

        Decoding: one block per sequence, each with its own context ([N, Lc, D]); `cache` holds the
        earlier context, `context` continues it and the block follows the context. A batch of
        sequences (dflash/batch.py) passes its per-row `block_offset` ([N]) and `mask` ([N, 1, 1,
        Lcache + Lb], which context positions each row sees). Training: no cache, one `context`
        from position 0 that N blocks share, block n starting at `block_offset[n]`; the blocks are
        laid side by side after the context so that its keys and values are computed once, and
        `mask` ([N * Lb, Lc + N * Lb]) says what each block position may see.
        """
        n_blocks, block_len, _ = x.shape
        side_by_side = context.shape[0] != n_blocks
        lay_out = self._side_by_side if side_by_side else (lambda blocks: blocks)
        context_start = cache.offset if cache is not None else 0
        if block_offset is None:
            block_offset = context_start + context.shape[1]

        q = self.rope(self.q_norm(self._heads(self.q_proj(x), self.n_heads)), offset=block_offset)
        k_block = self.rope(self.k_norm(self._heads(self.k_proj(x), self.n_kv_heads)), offset=block_offset)
        v_block = self._heads(self.v_proj(x), self.n_kv_heads)
        k_ctx = self.rope(self.k_norm(self._heads(self.k_proj(context), self.n_kv_heads)), offset=context_start)
        v_ctx = self._heads(self.v_proj(context), self.n_kv_heads)
        if cache is not None:
            k_ctx, v_ctx = cache.update_and_fetch(k_ctx, v_ctx)
        keys = mx.concatenate([k_ctx, lay_out(k_block)], axis=2)
        values = mx.concatenate([v_ctx, lay_out(v_block)], axis=2)

        # The window mask reads the decoding layout, each row's context then its block (training
        # lays blocks side by side and passes its own mask).
        if self.sliding_window is not None and not side_by_side and keys.shape[2] > self.sliding_window:
            window = self._window_mask(block_offset, block_len, k_ctx.shape[2])
            mask = window if mask is None else mask & window
        out = scaled_dot_product_attention(
            lay_out(q), keys, values, cache=None, scale=self.scale, mask=mask
        )
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(n_blocks, block_len, -1))

    def _window_mask(self, block_start, block_len: int, context_len: int) -> mx.array:
        """[rows, 1, block_len, context_len + block_len]: block position j of row i (at block_start,
        an int or one per row, plus j) sees the keys within the window; context key k is at position k."""
        query_pos = mx.array(block_start).reshape(-1, 1) + mx.arange(block_len)
        context_pos = mx.broadcast_to(mx.arange(context_len), (query_pos.shape[0], context_len))
        key_pos = mx.concatenate([context_pos, query_pos], axis=1)
        return ((query_pos[:, :, None] - key_pos[:, None, :]) < self.sliding_window)[:, None]


class DraftLayer(nn.Module):
    """Attention then MLP, each with a residual; a DFlash 2 layer convolves each sublayer's input
    and output along the block (dflash/dflash2.py)."""

    def __init__(self, config: DraftConfig, sliding_window: Optional[int]):
        super().__init__()
        self.self_attn = DraftAttention(config, sliding_window)
        self.mlp = MLP(config.hidden_size, config.intermediate_size)
        self.input_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        if config.dflash2:
            self.attention_conv = DynamicConv(config.hidden_size, config.conv_kernel_size, config.conv_group_size)
            self.mlp_conv = DynamicConv(config.hidden_size, config.conv_kernel_size, config.conv_group_size)

    def __call__(self, x, context, cache=None, block_offset=None, mask=None):
        if "attention_conv" not in self:
            h = x + self.self_attn(self.input_layernorm(x), context, cache, block_offset, mask)
            return h + self.mlp(self.post_attention_layernorm(h))
        h = x + self._convolved(self.attention_conv, lambda y: self.self_attn(y, context, cache, block_offset, mask),
                                self.input_layernorm(x))  # fmt: skip
        return h + self._convolved(self.mlp_conv, self.mlp, self.post_attention_layernorm(h))

    @staticmethod
    def _convolved(conv: DynamicConv, sublayer, normed: mx.array) -> mx.array:
        kernels = conv.kernels(normed)
        return conv(sublayer(conv(normed, kernels, site=0)), kernels, site=1)


class DFlashDraftModel(nn.Module):
    def __init__(self, config: DraftConfig):
        super().__init__()
        self.config = config
        n_taps = len(config.target_layer_ids)
        self.fc = nn.Linear(n_taps * config.hidden_size, config.hidden_size, bias=False)
        self.hidden_norm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.layers = [
            DraftLayer(config, config.sliding_window if kind == "sliding_attention" else None)
            for kind in config.layer_types
        ]
        self.norm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        if config.dflash2:
            self.candidate_selector = CandidateSelector(
                config.hidden_size, config.vocab_size, config.selector_rank, config.selector_top_k
            )
        if config.draft_vocab_size:
            self.draft_vocab = mx.arange(config.draft_vocab_size, dtype=mx.int32)  # a buffer: loaded, not trained
            self.freeze(keys=["draft_vocab"], recurse=False)

    def make_cache(self, context_window: Optional[int] = None) -> list:
        """One KV cache per layer. With `context_window`, the full-attention layers keep only the
        keys and values of the last `context_window` context positions (at least; RoPE keeps them
        at their absolute positions): the drafter's cost per step stops growing with the context."""
        if context_window is None:
            return [KVCache() for _ in self.layers]
        return [
            KVCache() if layer.self_attn.sliding_window else RotatingKVCache(context_window) for layer in self.layers
        ]

    def __call__(self, block_embeddings, target_hidden, cache=None, block_offset=None, mask=None):
        """block_embeddings: [N, Lb, D] embedded blocks; target_hidden: [1, Lc, n_taps * D]
        tapped target states of the context positions not yet in `cache` (see DraftAttention
        for the training arguments). Returns normalised hidden states [N, Lb, D] for the
        target's LM head."""
        context = self.hidden_norm(self.fc(target_hidden))
        h = block_embeddings
        if self.config.input_embedding_scale != 1.0:
            h = h * self.config.input_embedding_scale
        for i, layer in enumerate(self.layers):
            h = layer(h, context, cache[i] if cache is not None else None, block_offset, mask)
        return self.norm(h)

    def finish_block(self, hidden: mx.array, head, anchors: mx.array, selector: bool = True):
        """(logits [N, P, V], best [N, P]) from the drafter's output at block positions 1..P [N, P, D]
        (`head`: see `vocab_logits`): its logits over the target's whole vocabulary, and its best
        block: a DFlash 2 drafter's selector path after the blocks' given tokens `anchors` [N] (unless
        `selector` is off), else its argmax. The best block is found in the logits of the drafter's
        own vocabulary, so that a rule proposing it that never reads the whole vocabulary's logits
        (greedy) never computes them: spreading a draft vocabulary's logits over the target's costs
        as much as the head itself on the CPU."""
        logits, token_ids = self.vocab_logits(hidden, head), self.vocab_token_ids
        if self.config.dflash2 and selector:
            best = self.candidate_selector(hidden, logits, anchors, token_ids)
        else:
            # draft_vocab ascends: the first maximum here is the first over the whole vocabulary
            best = mx.argmax(logits, axis=-1)
            best = best if token_ids is None else token_ids[best]
        return self.whole_vocabulary(logits), best

    def whole_vocabulary(self, logits: mx.array) -> mx.array:
        """The drafter's logits [..., K] over the target's whole vocabulary [..., V]: -inf outside its
        draft vocabulary, where it has one."""
        if not self.config.draft_vocab_size:
            return logits
        full = mx.full((*logits.shape[:-1], self.config.vocab_size), -mx.inf, dtype=logits.dtype)
        full[..., self.draft_vocab] = logits
        return full

    @property
    def vocab_token_ids(self) -> Optional[mx.array]:
        """The token ids [K] of the drafter's vocabulary, the last axis of `vocab_logits`; None where it
        is the target's whole vocabulary."""
        return self.draft_vocab if self.config.draft_vocab_size else None

    def vocab_logits(self, hidden: mx.array, head) -> mx.array:
        """The logits of the drafter's vocabulary [..., K] (the target's whole one where it has no
        draft vocabulary): `head` (DFlashModel.draft_head: the target's LM head, restricted to the
        draft vocabulary's rows) on its output, scaled as the config says."""
        return scale_logits(head(hidden), self.config.output_multiplier, self.config.final_logit_softcapping)
