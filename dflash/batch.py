"""Batched speculative decoding: one drafter pass drafts a block for every active sequence, one
target pass verifies all the blocks, and each sequence accepts its own prefix.

Layout. The target's and the drafter's KV caches are `RaggedKVCache`s (adapters/ragged.py): each
row starts at the front of the buffer and has its own length, which RoPE and the masks read. After
a verify pass row i keeps n_i of the block's positions and simply forgets the rest: no data moves.
A hybrid target's recurrent states are mlx-lm ArraysCaches, one row per sequence; the adapter's
commit replays each row's accepted prefix from the state before the pass (adapters/base.py).
The drafter's cache grows by a ragged n_i context features per row the same way: the features go
in right-padded, the padding is masked during the pass and forgotten after it. (A left-padded
mlx-lm BatchKVCache would have to roll each row's whole history by its own amount every step;
measured here, that copy cost as much as the batched verify pass itself at 8 rows.)

The step itself is dflash/decode.py's, the one a single sequence takes. Each sequence keeps its
own `DecodeState` (random key, statistics, committed tokens, rule, context) and its own
`Responder` (stop tokens, detokenising), so its output is what it gets alone: token for token
when greedy, in distribution when sampling. Sequences join between steps
(`BatchDecoder.insert`), those arriving together prefilled in right-padded batches of similar
lengths, and leave when they finish (`BatchDecoder.step`).
"""

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import mlx.core as mx
from mlx_lm.models.cache import ArraysCache

from adapters.errors import DFlashError
from adapters.loading import DTYPES
from adapters.ragged import RaggedKVCache

from . import decode
from .acceptance import Acceptance, GreedyAcceptance
from .generate import GenerationResponse, GenerationResult, Responder, collect, encode_prompt, within_window
from .loading import DFlashModel
from .prefix_cache import PrefixCache, check_drafter_window
from .stats import GenerationStats

# A prefill group's padded positions may exceed its prompts' tokens by this share.
PADDING_SLACK = 0.25


def length_groups(lengths: List[int]) -> List[List[int]]:
    """The prompts' indices, shortest first, in the groups prefilled together: a group takes the
    next longer prompt while right-padding every prompt to it stays within PADDING_SLACK."""
    groups, tokens = [], 0
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        if groups and lengths[i] * (len(groups[-1]) + 1) <= (1 + PADDING_SLACK) * (tokens + lengths[i]):
            groups[-1].append(i)
            tokens += lengths[i]
        else:
            groups.append([i])
            tokens = lengths[i]
    return groups


@dataclass
class Row:
    uid: int
    prompt: List[int]
    state: decode.DecodeState
    respond: Responder


class BatchDecoder:
    """Speculative decoding of many sequences at once with one model: the rows (each request's
    DecodeState and Responder) and the batch that owns their caches (dflash/decode.py)."""

    def __init__(self, model: DFlashModel, tokenizer, *, block_size: Union[int, str, None] = None,
                 acceptance: Optional[Acceptance] = None, draft_window: Optional[int] = None,
                 prefix_cache: Optional[PrefixCache] = None):  # fmt: skip
        """`prefix_cache`: a sequence starts from the caches of its longest cached prefix, and leaves
        its own there when it finishes (dflash/prefix_cache.py)."""
        check_drafter_window(prefix_cache, draft_window)
        self.batch = decode.new_batch(model, block_size, draft_window, ragged=True)
        self.prefix_cache = prefix_cache
        window = model.draft.config.sliding_window
        sliding = any(layer.self_attn.sliding_window for layer in model.draft.layers)
        if draft_window is not None and sliding and window > draft_window:
            # The batch's mask applies the window to every drafter layer; within a sliding
            # layer's own narrower window that changes nothing.
            raise DFlashError(f"in a batch the drafter's context window must be at least its sliding window "
                              f"{window}, got {draft_window}")  # fmt: skip
        self.model, self.tokenizer = model, tokenizer
        self.acceptance = acceptance or GreedyAcceptance()
        self.stop_tokens = model.adapter.stop_tokens(tokenizer)
        self.rows: List[Row] = []
        self.next_uid = 0

    def insert(self, prompts: List[List[int]], max_tokens: List[int], seeds: Optional[List[Optional[int]]] = None,
               acceptances: Optional[List[Optional[Acceptance]]] = None) -> List[int]:  # fmt: skip
        """Prefill sequences (token ids) together and add them to the batch; returns their uids.
        Their first responses come with `first_responses` or the next `step`. A sequence's
        `acceptance` (default: the decoder's) may differ from the others': each request has its
        own sampling settings."""
        for name, values in (("max_tokens", max_tokens), ("seeds", seeds), ("acceptances", acceptances)):
            if values is not None and len(values) != len(prompts):
                raise DFlashError(f"{len(values)} {name} for {len(prompts)} prompts")
        model, config, batch = self.model, self.model.draft.config, self.batch
        seeds = seeds or [None] * len(prompts)
        acceptances = [acceptance or self.acceptance for acceptance in acceptances or [None] * len(prompts)]
        states = [decode.new_state(n, seed=seed, stats=GenerationStats(prompt_tokens=len(prompt)), acceptance=rule)
                  for prompt, n, seed, rule in zip(prompts, max_tokens, seeds, acceptances)]  # fmt: skip
        responders = [Responder(self.tokenizer, self.stop_tokens, n, state.stats)
                      for state, n in zip(states, max_tokens)]  # fmt: skip
        reused = [self.prefix_cache.fetch(prompt) if self.prefix_cache else None for prompt in prompts]
        fresh = [i for i, found in enumerate(reused) if found is None]
        # A sequence with a cached prefix is prefilled alone, from its own caches.
        groups = [[i] for i, found in enumerate(reused) if found is not None]
        groups += [[fresh[j] for j in group] for group in length_groups([len(prompts[i]) for i in fresh])]

        def empty_draft_cache(rows: int) -> RaggedKVCache:
            return RaggedKVCache.empty(rows, config.num_key_value_heads, config.head_dim, DTYPES[model.dtype])

        prefilled = []  # the batch takes no row before every group is prefilled
        for group in groups:
            found = reused[group[0]]
            if found is None:
                # Recurrent states (ArraysCache) batch as they are: one row of fixed-size arrays per sequence.
                target_cache = [cache if isinstance(cache, ArraysCache) else RaggedKVCache(len(group))
                                for cache in model.adapter.make_cache()]  # fmt: skip
                draft_cache = [empty_draft_cache(len(group)) for _ in model.draft.layers]
            else:
                target_cache = [cache if isinstance(cache, ArraysCache) else RaggedKVCache.from_cache(cache)
                                for cache in found.target_cache]  # fmt: skip
                draft_cache = [RaggedKVCache.from_cache(cache) if cache.offset else empty_draft_cache(1)
                               for cache in found.draft_cache]  # fmt: skip
                states[group[0]].context = found.context
                states[group[0]].stats.cached_tokens = found.length
            skipped = found.length if found is not None else 0
            decode.prefill_together(model, [states[i] for i in group], [prompts[i][skipped:] for i in group],
                                    target_cache)  # fmt: skip
            prefilled.append((group, target_cache, draft_cache))
        uids = list(range(self.next_uid, self.next_uid + len(prompts)))
        self.next_uid += len(prompts)
        for group, target_cache, draft_cache in prefilled:
            if self.rows:
                for batched, new in zip(batch.target_cache + batch.draft_cache, target_cache + draft_cache):
                    batched.extend(new)
            else:
                batch.target_cache, batch.draft_cache = target_cache, draft_cache
            self.rows += [Row(uids[i], prompts[i], states[i], responders[i]) for i in group]
        return uids

    def first_responses(self) -> List[Tuple[int, GenerationResponse]]:
        """The first response (the token after the prompt) of every row inserted since the last
        call, without waiting for a step. The rows that finish leave."""
        responses = [(row.uid, row.respond(list(row.state.tokens))) for row in self.rows if not row.respond.started]
        self.remove({uid for uid, response in responses if response.finish_reason is not None})
        return responses

    def step(self) -> List[Tuple[int, GenerationResponse]]:
        """Responses of one step: the first responses of rows inserted since the last step, then
        every row's from drafting and verifying one block. The rows that finish leave."""
        responses = self.first_responses()
        if self.rows:
            committed = decode.step(self.model, self.batch, [row.state for row in self.rows])
            responses += [(row.uid, row.respond(tokens)) for row, tokens in zip(self.rows, committed)]
            self.remove({uid for uid, response in responses if response.finish_reason is not None})
        return responses

    def remove(self, uids: set) -> None:
        """Drop the rows `uids` from the batch and its caches, leaving their caches in the prefix
        cache if there is one."""
        if self.prefix_cache is not None:
            for i, row in enumerate(self.rows):
                if row.uid in uids:
                    self.keep(i)
        kept = [i for i, row in enumerate(self.rows) if row.uid not in uids]
        if len(kept) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in kept]
        if not kept:
            self.batch.target_cache = self.batch.draft_cache = None
            return
        for cache in self.batch.target_cache + self.batch.draft_cache:
            cache.filter(kept)


    def keep(self, i: int) -> None:
        """Store row i's caches, which hold every position it committed but the last."""
        row, batch = self.rows[i], self.batch
        self.prefix_cache.store(row.prompt + row.state.tokens[:-1], [cache.extract(i) for cache in batch.target_cache],
                                [cache.extract(i) for cache in batch.draft_cache], row.state.context)  # fmt: skip


def batch_generate(
    model: DFlashModel,
    tokenizer,
    prompts: Sequence,
    max_tokens: int = 256,
    *,
    block_size: Union[int, str, None] = None,
    chat: bool = False,
    thinking: Optional[bool] = None,
    acceptance: Optional[Acceptance] = None,
    seeds: Optional[Sequence[Optional[int]]] = None,
    draft_window: Optional[int] = None,
    prefix_cache: Optional[PrefixCache] = None,
) -> List[GenerationResult]:
    """Generate a response to every prompt (text, conversation or token ids) in one batch: one
    result per prompt, in order, each what `dflash.generate` gives that prompt alone. The block
    size (and "auto"'s choice) is the batch's, one for all rows at every step; `draft_window`
    bounds the drafter's context and `prefix_cache` is shared as for one sequence."""
    decode.check_max_tokens(max_tokens)
    if not prompts:
        raise DFlashError("no prompts to generate from")
    decoder = BatchDecoder(model, tokenizer, block_size=block_size, acceptance=acceptance, draft_window=draft_window,
                           prefix_cache=prefix_cache)  # fmt: skip
    prompt_ids = [encode_prompt(model.adapter, tokenizer, prompt, chat, thinking) for prompt in prompts]
    mx.reset_peak_memory()
    uids = decoder.insert(prompt_ids, [within_window(model.adapter, ids, max_tokens) for ids in prompt_ids], seeds)
    responses = {uid: [] for uid in uids}
    while decoder.rows:
        for uid, response in decoder.step():
            responses[uid].append(response)
    return [collect(responses[uid]) for uid in uids]
