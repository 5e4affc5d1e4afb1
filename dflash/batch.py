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

Each sequence keeps its own `DecodeState` (random key, statistics, committed tokens) and its own
`Responder` (stop tokens, detokenising), so its output is what it gets alone: token for token when
greedy, in distribution when sampling. Sequences join between steps (`BatchDecoder.insert`), those
arriving together prefilled in right-padded batches of similar lengths, and leave when they
finish (`BatchDecoder.step`).
"""

import time
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import mlx.core as mx
from mlx_lm.generate import generation_stream
from mlx_lm.models.cache import ArraysCache

from adapters.errors import DFlashError
from adapters.loading import DTYPES
from adapters.ragged import RaggedKVCache

from . import decode
from .acceptance import Acceptance, GreedyAcceptance
from .block_size import AUTO, AutoBlockSize
from .generate import GenerationResponse, GenerationResult, Responder, collect, encode_prompt, within_window
from .loading import DFlashModel
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
    state: decode.DecodeState
    respond: Responder
    acceptance: Acceptance
    context: mx.array  # [1, n, n_taps * D] tapped target states the drafter has not seen


class BatchDecoder:
    """Speculative decoding of many sequences at once with one model and one acceptance rule."""

    def __init__(self, model: DFlashModel, tokenizer, *, block_size: Union[int, str, None] = None,
                 acceptance: Optional[Acceptance] = None):  # fmt: skip
        decode.check_block_size(model, block_size)
        self.model, self.tokenizer = model, tokenizer
        auto = block_size == AUTO
        self.block_size = model.block_size if auto else block_size or model.block_size
        # "auto": one block size for all rows, chosen from their pooled acceptance and the step time per row.
        self.block_sizer = AutoBlockSize(model.block_size) if auto else None
        self.acceptance = acceptance or GreedyAcceptance()
        self.stop_tokens = model.adapter.stop_tokens(tokenizer)
        self.rows: List[Row] = []
        self.target_cache: Optional[list] = None
        self.draft_cache: Optional[list] = None
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
        model, config = self.model, self.model.draft.config
        seeds = seeds or [None] * len(prompts)
        acceptances = [acceptance or self.acceptance for acceptance in acceptances or [None] * len(prompts)]
        states = [decode.start(model, max_tokens=n, block_size=self.block_size, seed=seed,
                               stats=GenerationStats(prompt_tokens=len(prompt)))
                  for prompt, n, seed in zip(prompts, max_tokens, seeds)]  # fmt: skip
        responders = [Responder(self.tokenizer, self.stop_tokens, n, state.stats)
                      for state, n in zip(states, max_tokens)]  # fmt: skip
        prefilled = []  # the batch takes no row before every group is prefilled
        for group in length_groups([len(prompt) for prompt in prompts]):
            # Recurrent states (ArraysCache) batch as they are: one row of fixed-size arrays per sequence.
            target_cache = [cache if isinstance(cache, ArraysCache) else RaggedKVCache(len(group))
                            for cache in model.adapter.make_cache()]  # fmt: skip
            decode.prefill_together(model, [states[i] for i in group], [prompts[i] for i in group],
                                    [acceptances[i] for i in group], target_cache)  # fmt: skip
            draft_cache = [RaggedKVCache.empty(len(group), config.num_key_value_heads, config.head_dim,
                                               DTYPES[model.dtype]) for _ in model.draft.layers]  # fmt: skip
            prefilled.append((group, target_cache, draft_cache))
        uids = list(range(self.next_uid, self.next_uid + len(prompts)))
        self.next_uid += len(prompts)
        for group, target_cache, draft_cache in prefilled:
            if self.rows:
                for batch, new in zip(self.target_cache + self.draft_cache, target_cache + draft_cache):
                    batch.extend(new)
            else:
                self.target_cache, self.draft_cache = target_cache, draft_cache
            for i in group:
                states[i].target_cache = states[i].draft_cache = None  # the batch holds them now
                self.rows.append(Row(uids[i], states[i], responders[i], acceptances[i], states[i].context))
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
            committed = self.speculate()
            responses += [(row.uid, row.respond(tokens)) for row, tokens in zip(self.rows, committed)]
            self.remove({uid for uid, response in responses if response.finish_reason is not None})
        return responses

    def speculate(self) -> List[List[int]]:
        """Draft and verify one block per row, commit each row's accepted tokens; returns them."""
        model, rows = self.model, self.rows
        adapter, config = model.adapter, model.draft.config
        remaining = [row.state.max_tokens - len(row.state.tokens) for row in rows]
        # A block of b positions commits at most b tokens: draft no further than the longest need.
        b = max(2, min(self.block_sizer.choose() if self.block_sizer else self.block_size, max(remaining)))
        lasts = [row.state.tokens[-1] for row in rows]

        with mx.stream(generation_stream):
            step_start = tic = time.perf_counter()
            # Each row's unseen context features, right-padded to the longest: the drafter's cache
            # takes them all, the padding is masked out, then forgotten.
            lengths = [row.context.shape[1] for row in rows]
            width = max(lengths)
            context = mx.concatenate([mx.pad(row.context, [(0, 0), (0, width - n), (0, 0)])
                                      for row, n in zip(rows, lengths)])  # fmt: skip
            seen = self.draft_cache[0].offset  # each row's context features so far
            block_offset = seen + mx.array(lengths)
            position = mx.arange(max(self.draft_cache[0].lengths) + width)[None]
            sees = position < block_offset[:, None]
            mask = mx.concatenate([sees, mx.ones((len(rows), b), dtype=mx.bool_)], axis=1)[:, None, None, :]
            proposals, draft_logits = model.draft_block(lasts, b, context, self.draft_cache,
                                                        [row.acceptance for row in rows], [row.state for row in rows],
                                                        block_offset, mask)  # fmt: skip
            for layer_cache in self.draft_cache:
                layer_cache.forget([width - n for n in lengths])
            mx.eval(proposals)
            draft_time = time.perf_counter() - tic

            tic = time.perf_counter()
            blocks = mx.concatenate([mx.array(lasts)[:, None], proposals], axis=1)
            verified = adapter.verify(blocks, self.target_cache, config.target_layer_ids)
            target_logits = adapter.lm_head(verified.hidden)
            accepted = [row.acceptance.accept(proposals[i], draft_logits[i], target_logits[i], row.state)
                        for i, row in enumerate(rows)]  # fmt: skip
            for row, tokens in zip(rows, accepted):
                row.state.stats.acceptance_lengths.append(len(tokens))
                row.state.stats.block_sizes.append(b)
            if self.block_sizer:
                seconds_per_row = (time.perf_counter() - step_start) / len(rows)
                for tokens in accepted:
                    self.block_sizer.record(b, accepted=len(tokens) - 1, seconds=seconds_per_row)
            # A block may commit more than is left.
            committed = [tokens[:left] for tokens, left in zip(accepted, remaining)]
            # Each row keeps the positions of [last, its accepted proposals].
            verified.commit([len(tokens) for tokens in committed])
            for i, (row, tokens) in enumerate(zip(rows, committed)):
                row.context = verified.taps[i : i + 1, : len(tokens)]
                row.state.tokens.extend(tokens)
            verify_time = time.perf_counter() - tic
        for row in rows:  # every row waited for the whole passes
            row.state.stats.draft_time += draft_time
            row.state.stats.verify_time += verify_time
        return committed

    def remove(self, uids: set) -> None:
        """Drop the rows `uids` from the batch and its caches."""
        kept = [i for i, row in enumerate(self.rows) if row.uid not in uids]
        if len(kept) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in kept]
        if not kept:
            self.target_cache = self.draft_cache = None
            return
        for cache in self.target_cache + self.draft_cache:
            cache.filter(kept)


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
) -> List[GenerationResult]:
    """Generate a response to every prompt (text, conversation or token ids) in one batch: one
    result per prompt, in order, each what `dflash.generate` gives that prompt alone."""
    decode.check_max_tokens(max_tokens)
    if not prompts:
        raise DFlashError("no prompts to generate from")
    decoder = BatchDecoder(model, tokenizer, block_size=block_size, acceptance=acceptance)
    prompt_ids = [encode_prompt(model.adapter, tokenizer, prompt, chat, thinking) for prompt in prompts]
    mx.reset_peak_memory()
    uids = decoder.insert(prompt_ids, [within_window(model.adapter, ids, max_tokens) for ids in prompt_ids], seeds)
    responses = {uid: [] for uid in uids}
    while decoder.rows:
        for uid, response in decoder.step():
            responses[uid].append(response)
    return [collect(responses[uid]) for uid in uids]
