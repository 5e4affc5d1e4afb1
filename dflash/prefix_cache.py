"""A prefix cache shared by requests: a request that shares a prefix with an earlier one starts from
that one's caches and prefills only the rest of its prompt.

After a request, the target's caches hold every committed position but the last (its prompt and
its answer but the last token) and the drafter has the context features of all but the last few
of them, the tapped target states of those few waiting for its next step. Both are kept together,
keyed by the tokens of those positions, in mlx-lm's LRUPromptCache: the longest cached prefix of a
new prompt is found in its trie, copied out (MLX arrays copy lazily) and trimmed to the prefix
(`DrafterPrefix` trims the drafter's side to the same positions), entries past the byte limit
are evicted least recently used first, and an entry that a longer trimmable one extends is
dropped.

A recurrent state (GatedDeltaNet in Qwen3.5/3.6, Qwen3-Next) exists only at the position where it
was saved and cannot be trimmed: a hybrid target's entry serves only prompts that extend its
tokens, the next turn of its conversation, not a prefix that ends inside it nor a repeat of the
same prompt (whose first token needs the last prompt position run again). Sliding-window layers
keep every position in a plain KV cache (adapters/base.py) and trim like the others. A drafter
with a context window (a rotating cache) is not cached.
"""

import math
from dataclasses import dataclass
from typing import List, Optional

import mlx.core as mx
from mlx_lm.models.cache import LRUPromptCache, can_trim_prompt_cache, trim_prompt_cache

from adapters.errors import DFlashError

DEFAULT_GB = 1.0
MAX_ENTRIES = 1 << 20  # entries are bounded by their bytes
MODEL = "target"  # one cache serves one pair: the trie's model key is constant


def check_drafter_window(prefix_cache: Optional["PrefixCache"], draft_window: Optional[int]) -> None:
    """A drafter with a context window keeps rotating caches, which a prefix cache cannot trim."""
    if prefix_cache is not None and draft_window is not None:
        raise DFlashError("a prefix cache cannot keep a drafter with a context window (its rotating caches do not "
                          "trim)")  # fmt: skip


class DrafterPrefix:
    """The drafter's side of `length` cached positions, kept beside the target's caches so that the
    LRUPromptCache trims it with them: the drafter's KV caches, holding the context features of
    the first positions, and the tapped target states of the remaining ones (`context`), which
    the drafter has not seen yet."""

    def __init__(self, caches: list, context: mx.array, length: int):
        self.caches, self.context, self.length = caches, context, length

    def is_trimmable(self) -> bool:
        return all(cache.is_trimmable() for cache in self.caches)

    def trim(self, n: int) -> int:
        """Forget the last `n` positions."""
        n = min(n, self.length)
        kept, seen = self.length - n, self.length - self.context.shape[1]
        if kept >= seen:
            self.context = self.context[:, : kept - seen]
        else:
            for cache in self.caches:
                cache.trim(seen - kept)
            self.context = self.context[:, :0]
        self.length = kept
        return n

    @property
    def nbytes(self) -> int:
        return sum(cache.nbytes for cache in self.caches) + self.context.nbytes


@dataclass
class Reused:
    """What a request starts from: caches of the first `length` positions of its prompt."""

    length: int
    target_cache: list
    draft_cache: list
    context: mx.array  # [1, n, n_taps * D] tapped target states of the last n positions, unseen by the drafter


class PrefixCache:
    """Caches of finished requests, at most `max_gb` gigabytes (10^9 bytes) of them."""

    def __init__(self, max_gb: float = DEFAULT_GB):
        if not (isinstance(max_gb, (int, float)) and math.isfinite(max_gb) and max_gb > 0):
            raise DFlashError(f"the prefix cache's size must be a positive number of GB, got {max_gb!r}")
        self.max_bytes = int(max_gb * 1e9)
        self.entries = LRUPromptCache(max_size=MAX_ENTRIES, max_bytes=self.max_bytes)
        self.lookups = self.hits = self.reused_tokens = 0

    def fetch(self, prompt: List[int]) -> Optional[Reused]:
        """The caches of the longest cached prefix of `prompt` that leaves at least its last token
        to run (its logits give the first new token), or None."""
        self.lookups += 1
        cache, rest = self.entries.fetch_nearest_cache(MODEL, prompt)
        if cache is not None and not rest:  # an entry of exactly this prompt
            if not can_trim_prompt_cache(cache):
                return None
            trim_prompt_cache(cache, 1)
            rest = prompt[-1:]
        if cache is None:
            return None
        self.hits += 1
        length = len(prompt) - len(rest)
        self.reused_tokens += length
        *target_cache, drafter = cache
        return Reused(length, target_cache, drafter.caches, drafter.context)

    def store(self, tokens: List[int], target_cache: list, draft_cache: list, context: mx.array) -> None:
        """Keep the caches of a finished request (one row each), which hold the positions of
        `tokens`; `context` holds the tapped states of the last positions, unseen by the drafter."""
        drafter = DrafterPrefix(draft_cache, context, len(tokens))
        self.entries.insert_cache(MODEL, list(tokens), [*target_cache, drafter])

    def stats(self) -> dict:
        return {"lookups": self.lookups, "hits": self.hits, "reused_tokens": self.reused_tokens,
                "entries": len(self.entries), "bytes": self.entries.nbytes, "max_bytes": self.max_bytes}  # fmt: skip
