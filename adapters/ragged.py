"""A KV cache for a batch of sequences whose lengths drift apart: each row forgets its own number
of positions after a speculative verify pass, without moving any data.

Rows are left-aligned: row i holds its positions 0..length_i - 1 at the front of the buffer, and
whatever lies past its length is stale (a rejected draft's keys) and masked out. New positions
are written at each row's own end, and `offset` is the per-row length that RoPE reads. mlx-lm's
BatchKVCache is left-padded instead: rolling a row back by its own amount means moving its
whole history, a copy of the cache every step.

Prompts of different lengths are prefilled together right-padded, through mlx-lm's cache protocol
for that (`prepare(right_padding=...)` before the passes, `finalize()` after): the padding is
forgotten like a rejected draft.
"""

from typing import List, Optional

import mlx.core as mx
from mlx_lm.models.cache import KVCache

STEP = 256  # positions the buffer grows by


class RaggedKVCache:
    def __init__(self, rows: int, keys: Optional[mx.array] = None, values: Optional[mx.array] = None):
        """`rows` sequences with no positions yet. Without `keys` and `values` (empty buffers
        [rows, kv_heads, 0, head_dim]) the buffers take their shape from the first update."""
        self.keys, self.values = keys, values  # [B, kv_heads, capacity, head_dim]
        self.lengths = [0] * rows
        self.right_padding: Optional[List[int]] = None

    @classmethod
    def empty(cls, rows: int, heads: int, head_dim: int, dtype) -> "RaggedKVCache":
        buffer = mx.zeros((rows, heads, 0, head_dim), dtype)
        return cls(rows, buffer, buffer)

    @classmethod
    def from_cache(cls, cache: KVCache) -> "RaggedKVCache":
        """One row holding what a (prefilled) KVCache of one sequence holds."""
        keys, values = cache.keys[..., : cache.offset, :], cache.values[..., : cache.offset, :]
        ragged = cls(1, keys, values)
        ragged.lengths = [cache.offset]
        return ragged

    def extract(self, row: int) -> KVCache:
        """Row `row`'s positions as a KVCache of one sequence."""
        cache = KVCache()
        length = self.lengths[row]
        cache.state = (self.keys[row : row + 1, :, :length], self.values[row : row + 1, :, :length], length)
        return cache

    @property
    def offset(self) -> mx.array:
        return mx.array(self.lengths)

    @property
    def state(self):
        return self.keys, self.values

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        """Write each row's new positions at its own end; return every row's keys and values up to
        the longest row's end (the stale tail of shorter rows is masked)."""
        new = keys.shape[2]
        end = max(self.lengths) + new
        if self.keys is None:
            self.keys = mx.zeros((*keys.shape[:2], 0, keys.shape[3]), keys.dtype)
            self.values = mx.zeros((*values.shape[:2], 0, values.shape[3]), values.dtype)
        if end > self.keys.shape[2]:
            grow = ((end - self.keys.shape[2] + STEP - 1) // STEP) * STEP
            self.keys = mx.pad(self.keys, [(0, 0), (0, 0), (0, grow), (0, 0)])
            self.values = mx.pad(self.values, [(0, 0), (0, 0), (0, grow), (0, 0)])
        for row, length in enumerate(self.lengths):
            self.keys[row : row + 1, :, length : length + new, :] = keys[row : row + 1]
            self.values[row : row + 1, :, length : length + new, :] = values[row : row + 1]
        self.lengths = [length + new for length in self.lengths]
        return self.keys[..., :end, :], self.values[..., :end, :]

    def make_mask(self, N: int, window_size: Optional[int] = None, **kwargs) -> mx.array:
        """[B, 1, N, longest + N]: query j of row i (at position length_i + j) sees the row's keys
        up to its own position, within `window_size` when it has one."""
        query = self.offset[:, None, None, None] + mx.arange(N)[None, None, :, None]
        key = mx.arange(max(self.lengths) + N)[None, None, None, :]
        mask = key <= query
        if window_size is not None:
            mask = mask & (key > query - window_size)
        return mask

    def forget(self, counts: List[int]) -> None:
        """Row i forgets its last counts[i] positions."""
        self.lengths = [length - count for length, count in zip(self.lengths, counts)]

    def prepare(self, *, right_padding: List[int], **kwargs) -> None:
        """The next passes write row i's right_padding[i] padding positions after its tokens."""
        self.right_padding = right_padding

    def finalize(self) -> None:
        """The padded passes are over: forget the padding."""
        self.forget(self.right_padding)
        self.right_padding = None

    def extend(self, other: "RaggedKVCache") -> None:
        """Append `other`'s rows (both caches have their buffers: a prefilled batch's have)."""
        capacity = max(self.keys.shape[2], other.keys.shape[2])

        def right_pad(array):
            return mx.pad(array, [(0, 0), (0, 0), (0, capacity - array.shape[2]), (0, 0)])

        self.keys = mx.concatenate([right_pad(self.keys), right_pad(other.keys)])
        self.values = mx.concatenate([right_pad(self.values), right_pad(other.values)])
        self.lengths += other.lengths

    def filter(self, rows: List[int]) -> None:
        """Keep only `rows`."""
        index = mx.array(rows)
        self.keys, self.values = self.keys[index], self.values[index]
        self.lengths = [self.lengths[row] for row in rows]
