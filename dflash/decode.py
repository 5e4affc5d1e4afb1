"""Speculative decoding, one step over rows: a row is one request's `DecodeState`, a `Batch` owns
what its rows share (the target's and the drafter's caches, a row each, and the block size), and
`step` drafts, verifies, accepts and commits one block for every row of a batch at once. One
sequence is a batch of one (`start`, `prefill`, then `Single.step` until `finished`), with plain
mlx-lm caches and no padding masks; dflash/batch.py keeps sequences that come and go in a batch
of RaggedKVCaches.

A step drafts a block for every row in one drafter pass, verifies all the blocks in one target
pass, lets each row's acceptance rule pick its committed tokens, and commits them: the target
keeps each row's positions of [last committed token, accepted proposals] and forgets the rest,
and the drafter is conditioned next on the tapped target states of those kept positions. The
model and the rules are shared and hold no request's state.
"""

import time
from dataclasses import dataclass, field
from typing import List, Optional, Union

import mlx.core as mx
from mlx_lm.generate import generation_stream

from adapters.errors import DFlashError

from .acceptance import Acceptance, GreedyAcceptance
from .block_size import AUTO, AutoBlockSize
from .loading import DFlashModel
from .prefix_cache import Reused
from .stats import GenerationStats

# As mlx-lm's generate_step: the prompt but its last token is processed in chunks of this
# size, the last token alone, so the target computes the prompt the way plain decoding does.
PREFILL_STEP_SIZE = 2048


@dataclass
class DecodeState:
    """One request's own state, a row of a batch; the caches are the batch's."""

    max_tokens: int
    key: mx.array  # the request's random stream (sampling rules only)
    stats: GenerationStats
    acceptance: Acceptance = field(default_factory=GreedyAcceptance)
    context: Optional[mx.array] = None  # [1, n, n_taps * D] tapped target states the drafter has not seen
    tokens: List[int] = field(default_factory=list)  # committed so far; the last one is not in the target cache

    @property
    def finished(self) -> bool:
        return len(self.tokens) >= self.max_tokens

    def next_key(self) -> mx.array:
        self.key, key = mx.random.split(self.key)
        return key


@dataclass
class Batch:
    """What the rows decoded together share. Its caches hold a row for each DecodeState, in the
    order `step` is given them: plain mlx-lm caches for one sequence, RaggedKVCaches (and a row of
    recurrent state each) for a batch. The block size is the batch's: a step drafts one block
    size for all its rows, so "auto" chooses it from the rows' pooled acceptance and the step's
    time per row (for one sequence, that request's own)."""

    block_size: int  # with block_sizer: the largest it may choose
    block_sizer: Optional[AutoBlockSize] = None  # block size "auto": chooses each step's block
    draft_window: Optional[int] = None  # the drafter sees this many last context positions, and those of the step
    ragged: bool = False  # RaggedKVCaches with padding masks (dflash/batch.py), else one row in plain mlx-lm caches
    target_cache: Optional[list] = None
    draft_cache: Optional[list] = None


# mx.random.key takes a 64-bit unsigned seed.
SEED_RANGE = range(2**64)


def whole_number(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_max_tokens(max_tokens: int) -> None:
    if not (whole_number(max_tokens) and max_tokens >= 1):
        raise DFlashError(f"max tokens must be at least 1, got {max_tokens!r}")


def check_seed(seed: Optional[int]) -> None:
    """None (a seed drawn from mlx's global generator) or a whole number in SEED_RANGE."""
    if seed is not None and not (whole_number(seed) and seed in SEED_RANGE):
        raise DFlashError(f"seed must be a whole number from 0 to 2**64 - 1, got {seed!r}")


def check_draft_window(draft_window: Optional[int]) -> None:
    if draft_window is not None and not (whole_number(draft_window) and draft_window >= 1):
        raise DFlashError(f"the drafter's context window must be at least 1 position, got {draft_window!r}")


def resolve_block_size(model: DFlashModel, block_size: Union[int, str, None]) -> Union[int, str]:
    """The block size a request decodes with: "auto", one between 2 and the drafter's, or for
    None the drafter's own."""
    if block_size is None:
        return model.block_size
    if block_size != AUTO and not (whole_number(block_size) and 2 <= block_size <= model.block_size):
        raise DFlashError(f"block size must be between 2 and the drafter's {model.block_size}, got {block_size}")
    return block_size


def new_state(max_tokens: int, *, seed: Optional[int] = None, stats: Optional[GenerationStats] = None,
              acceptance: Optional[Acceptance] = None) -> DecodeState:  # fmt: skip
    """A fresh row. With no seed the random stream starts from mlx's global generator."""
    check_max_tokens(max_tokens)
    check_seed(seed)
    if seed is None:
        seed = mx.random.randint(0, 2**31 - 1).item()
    return DecodeState(max_tokens, mx.random.key(seed), stats if stats is not None else GenerationStats(),
                       acceptance or GreedyAcceptance())  # fmt: skip


def new_batch(model: DFlashModel, block_size: Union[int, str, None] = None, draft_window: Optional[int] = None,
              ragged: bool = False) -> Batch:  # fmt: skip
    """A batch with no caches yet. `block_size` "auto" chooses every step's block
    (dflash/block_size.py); `draft_window` bounds the drafter's context (DFlashDraftModel.make_cache)."""
    block_size = resolve_block_size(model, block_size)
    check_draft_window(draft_window)
    auto = block_size == AUTO
    return Batch(model.block_size if auto else block_size, AutoBlockSize(model.block_size) if auto else None,
                 draft_window, ragged)  # fmt: skip


@dataclass
class Single:
    """One sequence: a batch of one row."""

    batch: Batch
    state: DecodeState

    # What a caller of one sequence reads.
    tokens = property(lambda self: self.state.tokens)
    context = property(lambda self: self.state.context)
    finished = property(lambda self: self.state.finished)
    target_cache = property(lambda self: self.batch.target_cache)
    draft_cache = property(lambda self: self.batch.draft_cache)

    def step(self, model: DFlashModel) -> List[int]:
        """One draft-verify-accept-commit step; returns the committed tokens (at least one)."""
        return step(model, self.batch, [self.state])[0]


def start(
    model: DFlashModel,
    *,
    max_tokens: int,
    block_size: Union[int, str, None] = None,
    seed: Optional[int] = None,
    stats: Optional[GenerationStats] = None,
    draft_window: Optional[int] = None,
    acceptance: Optional[Acceptance] = None,
    reused: Optional[Reused] = None,
) -> Single:
    """A fresh sequence, with empty caches or, `reused`, those of a cached prefix of its prompt
    (dflash/prefix_cache.py). See `new_state` and `new_batch` for the rest."""
    state = new_state(max_tokens, seed=seed, stats=stats, acceptance=acceptance)
    batch = new_batch(model, block_size, draft_window)
    if reused is None:
        batch.target_cache, batch.draft_cache = model.adapter.make_cache(), model.draft.make_cache(draft_window)
    else:
        batch.target_cache, batch.draft_cache, state.context = reused.target_cache, reused.draft_cache, reused.context
    return Single(batch, state)


def prefill(model: DFlashModel, single: Single, prompt: mx.array) -> List[int]:
    """Run the prompt through the target; returns [the first generated token]."""
    prefill_together(model, [single.state], [prompt.tolist()], single.target_cache)
    return single.tokens[:1]


def prefill_together(model: DFlashModel, states: List[DecodeState], prompts: List[List[int]], caches: list) -> None:
    """Run several prompts through the target as one batch, `caches` holding a row for each, and
    commit each state's first token. A row's caches may hold a cached prefix already (its prompt
    is then what follows it, and its state's context the prefix's unseen part). As mlx-lm's
    BatchGenerator does, prompts of different lengths are right-padded to the longest, the caches
    told so (`prepare`/`finalize`) so that the padding is masked and then dropped."""
    adapter, layer_ids = model.adapter, model.draft.config.target_layer_ids
    heads = [prompt[:-1] for prompt in prompts]  # all but the last token, which goes with the others' last
    lengths = [len(head) for head in heads]
    longest = max(lengths)
    padding = [longest - n for n in lengths]
    padded = max(padding) > 0
    taps = []
    with mx.stream(generation_stream):
        if padded:
            for cache in caches:
                cache.prepare(lengths=lengths, right_padding=padding)
        for begin in range(0, longest, PREFILL_STEP_SIZE):
            width = min(PREFILL_STEP_SIZE, longest - begin)
            pieces = [head[begin : begin + width] for head in heads]
            passed = adapter.verify(mx.array([piece + [0] * (width - len(piece)) for piece in pieces]), caches,
                                    layer_ids)  # fmt: skip
            mx.eval(passed.taps, [cache.state for cache in caches])
            taps.append(passed.taps)
        if padded:
            for cache in caches:
                cache.finalize()
        last = adapter.verify(mx.array([prompt[-1:] for prompt in prompts]), caches, layer_ids)
        taps = mx.concatenate(taps + [last.taps], axis=1)  # [rows, longest + 1, n_taps * D]
        logits = adapter.lm_head(last.hidden)
        for i, (state, n) in enumerate(zip(states, lengths)):
            # A state resumed from a cached prefix has that prefix's unseen context first.
            earlier = [] if state.context is None else [state.context]
            state.context = mx.concatenate(earlier + [taps[i : i + 1, :n], taps[i : i + 1, -1:]], axis=1)
            state.tokens.append(state.acceptance.first_token(logits[i, -1], state))


def draft_inputs(batch: Batch, states: List[DecodeState], block_size: int, sizes: List[int]) -> tuple:
    """(context, block_offset, mask, padding) for the drafter's pass. One plain row: its context
    and no mask (its caches place the block). Ragged rows: each row's unseen context right-padded
    to the longest, which its cache takes whole and then forgets (`padding`), the block placed
    after each row's own context, and a mask of the positions each row sees: its own context,
    within the draft window where there is one, as a RotatingKVCache of the window keeps them
    (the window less one position, plus those the step hands it), and its block's first `sizes`
    positions."""
    if not batch.ragged:
        return states[0].context, None, None, None
    lengths = [state.context.shape[1] for state in states]
    width = max(lengths)
    context = mx.concatenate([mx.pad(state.context, [(0, 0), (0, width - n), (0, 0)])
                              for state, n in zip(states, lengths)])  # fmt: skip
    block_offset = batch.draft_cache[0].offset + mx.array(lengths)  # each row's context so far
    position = mx.arange(max(batch.draft_cache[0].lengths) + width)[None]
    sees = position < block_offset[:, None]
    if batch.draft_window is not None:
        sees = sees & (position >= (block_offset - batch.draft_window + 1 - mx.array(lengths))[:, None])
    in_block = mx.arange(block_size)[None] < mx.array(sizes)[:, None]
    mask = mx.concatenate([sees, in_block], axis=1)[:, None, None, :]
    return context, block_offset, mask, [width - n for n in lengths]


def step(model: DFlashModel, batch: Batch, states: List[DecodeState]) -> List[List[int]]:
    """One draft-verify-accept-commit step of every row; returns each row's committed tokens
    (at least one each)."""
    adapter, config = model.adapter, model.draft.config
    remaining = [state.max_tokens - len(state.tokens) for state in states]
    # A block of b positions commits at most b tokens: the batch drafts no further than its longest
    # need, and each row no further than its own, as it would alone (the block is bidirectional,
    # so a longer one would draft other logits, and a sampling rule draw other proposals).
    b = max(2, min(batch.block_sizer.choose() if batch.block_sizer else batch.block_size, max(remaining)))
    sizes = [max(2, min(b, left)) for left in remaining]
    lasts = [state.tokens[-1] for state in states]

    with mx.stream(generation_stream):
        step_start = tic = time.perf_counter()
        context, block_offset, mask, padding = draft_inputs(batch, states, b, sizes)
        rules = [state.acceptance for state in states]
        proposals, draft_logits = model.draft_block(lasts, b, context, batch.draft_cache, rules, states, block_offset,
                                                    mask, sizes)  # fmt: skip
        if padding is not None:
            for layer_cache in batch.draft_cache:
                layer_cache.forget(padding)
        mx.eval(proposals)
        draft_time = time.perf_counter() - tic

        tic = time.perf_counter()
        blocks = mx.concatenate([mx.array(lasts)[:, None], proposals], axis=1)
        verified = adapter.verify(blocks, batch.target_cache, config.target_layer_ids)
        target_logits = adapter.lm_head(verified.hidden)
        # A row's positions past its own block are verified with the others' and forgotten.
        accepted = [rule.accept(proposals[i, : n - 1], draft_logits[i, : n - 1], target_logits[i, :n], state)
                    for i, (rule, state, n) in enumerate(zip(rules, states, sizes))]  # fmt: skip
        for state, tokens, n in zip(states, accepted, sizes):
            state.stats.acceptance_lengths.append(len(tokens))
            state.stats.block_sizes.append(n)
        if batch.block_sizer:
            seconds_per_row = (time.perf_counter() - step_start) / len(states)
            for tokens, n in zip(accepted, sizes):
                batch.block_sizer.record(n, accepted=len(tokens) - 1, seconds=seconds_per_row)
        # A block may commit more than is left (one of 2 drafted with one token left commits 2).
        committed = [tokens[:left] for tokens, left in zip(accepted, remaining)]
        # The pass ran [last, proposals]; each row keeps the positions of [last, its accepted proposals].
        kept = [len(tokens) for tokens in committed]
        verified.commit(kept if batch.ragged else kept[0])
        for i, (state, tokens) in enumerate(zip(states, committed)):
            state.context = verified.taps[i : i + 1, : len(tokens)]
            state.tokens.extend(tokens)
        verify_time = time.perf_counter() - tic
    for state in states:  # every row waited for the whole passes
        state.stats.draft_time += draft_time
        state.stats.verify_time += verify_time
    return committed
