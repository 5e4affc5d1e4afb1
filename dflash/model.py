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
drafters.
"""

from dataclasses import dataclass, field
from typing import List, Optional

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.base import scaled_dot_product_attention
from mlx_lm.models.cache import KVCache, RotatingKVCache
from mlx_lm.models.qwen3 import MLP
from mlx_lm.models.rope_utils import initialize_rope


@dataclass
class DraftConfig:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int
    block_size: int
    num_target_layers: int
    target_layer_ids: List[int]
    mask_token_id: int
    head_dim: Optional[int] = None
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    max_position_embeddings: int = 40960
    rope_scaling: Optional[dict] = None
    attention_bias: bool = False
    tie_word_embeddings: bool = False
    layer_types: Optional[List[str]] = None
    sliding_window: Optional[int] = None
    extra: dict = field(default_factory=dict)  # other config.json keys, written back unchanged

    def __post_init__(self):
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.layer_types is None:
            self.layer_types = ["full_attention"] * self.num_hidden_layers

    @classmethod
    def from_dict(cls, config: dict) -> "DraftConfig":
        dflash_config = config.get("dflash_config")
        if not isinstance(dflash_config, dict):
            raise ValueError("drafter config.json has no 'dflash_config' section (target_layer_ids, mask_token_id)")
        missing = [k for k in ("target_layer_ids", "mask_token_id") if k not in dflash_config]
        required = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                    "vocab_size", "block_size", "num_target_layers")
        missing += [k for k in required if k not in config]
        if missing:
            raise ValueError(f"drafter config.json is missing {', '.join(missing)}")
        known = {f for f in cls.__dataclass_fields__ if f not in ("target_layer_ids", "mask_token_id", "extra")}
        kwargs = {k: v for k, v in config.items() if k in known}
        kwargs.setdefault("num_key_value_heads", config["num_attention_heads"])
        extra = {k: v for k, v in config.items() if k not in known and k != "dflash_config"}
        return cls(
            target_layer_ids=list(dflash_config["target_layer_ids"]),
            mask_token_id=int(dflash_config["mask_token_id"]),
            extra=extra,
            **kwargs,
        )

    def to_dict(self) -> dict:
        config = dict(self.extra)
        config.setdefault("architectures", ["DFlashDraftModel"])
        config.setdefault("model_type", "qwen3")
        for name in self.__dataclass_fields__:
            if name not in ("target_layer_ids", "mask_token_id", "extra"):
                config[name] = getattr(self, name)
        if all(t == "full_attention" for t in self.layer_types):
            config.pop("layer_types")
        config["dflash_config"] = {"target_layer_ids": self.target_layer_ids, "mask_token_id": self.mask_token_id}
        return config


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
            head_dim, config.rope_theta, False, config.rope_scaling, config.max_position_embeddings
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
    def __init__(self, config: DraftConfig, sliding_window: Optional[int]):
        super().__init__()
        self.self_attn = DraftAttention(config, sliding_window)
        self.mlp = MLP(config.hidden_size, config.intermediate_size)
        self.input_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def __call__(self, x, context, cache=None, block_offset=None, mask=None):
        h = x + self.self_attn(self.input_layernorm(x), context, cache, block_offset, mask)
        return h + self.mlp(self.post_attention_layernorm(h))


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
        for i, layer in enumerate(self.layers):
            h = layer(h, context, cache[i] if cache is not None else None, block_offset, mask)
        return self.norm(h)
