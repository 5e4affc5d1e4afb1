"""One request's speculative decoding, step by step: `start` a `DecodeState`, `prefill` the
prompt, then `step` until `state.finished`.

A step drafts a block in one drafter pass, verifies it in one target pass, lets the acceptance
rule pick the committed tokens, and commits them: the target keeps the positions of
[last committed token, accepted proposals] and forgets the rest, and the drafter is conditioned
next on the tapped target states of those kept positions. Everything a request carries between
steps lives in its DecodeState, so requests can be interleaved; the model and the acceptance
rule are shared and hold none of it.
"""

import time
from dataclasses import dataclass, field
from typing import List, Optional, Union

import mlx.core as mx
from mlx_lm.generate import generation_stream

from adapters.errors import DFlashError

from .acceptance import Acceptance
from .block_size import AUTO, AutoBlockSize
from .loading import DFlashModel
from .stats import GenerationStats

# As mlx-lm's generate_step: the prompt but its last token is processed in chunks of this
# size, the last token alone, so the target computes the prompt the way plain decoding does.
PREFILL_STEP_SIZE = 2048


@dataclass
class DecodeState:
    target_cache: list
    draft_cache: list
    block_size: int  # with block_sizer: the largest it may choose
    max_tokens: int
    key: mx.array  # the request's random stream (sampling rules only)
    stats: GenerationStats
    context: Optional[mx.array] = None  # tapped target states of committed positions the drafter has not seen
    tokens: List[int] = field(default_factory=list)  # committed so far; the last one is not in the target cache
    block_sizer: Optional[AutoBlockSize] = None  # block size "auto": chooses each step's block

    @property
    def finished(self) -> bool:
        return len(self.tokens) >= self.max_tokens

    def next_key(self) -> mx.array:
        self.key, key = mx.random.split(self.key)
        return key


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


def check_block_size(model: DFlashModel, block_size: Union[int, str, None]) -> None:
    """A block size is "auto", None (the drafter's) or between 2 and the drafter's."""
    if block_size not in (AUTO, None) and not (whole_number(block_size) and 2 <= block_size <= model.block_size):
        raise DFlashError(f"block size must be between 2 and the drafter's {model.block_size}, got {block_size}")


def start(
    model: DFlashModel,
    *,
    max_tokens: int,
    block_size: Union[int, str, None] = None,
    seed: Optional[int] = None,
    stats: Optional[GenerationStats] = None,
    target_cache: Optional[list] = None,
    draft_window: Optional[int] = None,
) -> DecodeState:
    """A fresh state. With no seed the random stream starts from mlx's global generator.
    `target_cache`, if given, is an empty cache from `adapter.make_cache()` that the request fills,
    as mlx-lm's prompt_cache: afterwards it holds every committed token but the last.
    `block_size` "auto" chooses every step's block (dflash/block_size.py). `draft_window` bounds
    the drafter's context to the last that many committed positions (DFlashDraftModel.make_cache)."""
    check_max_tokens(max_tokens)
    check_block_size(model, block_size)
    auto = block_size == AUTO
    check_draft_window(draft_window)
    check_seed(seed)
    if seed is None:
        seed = mx.random.randint(0, 2**31 - 1).item()
    return DecodeState(
        target_cache=target_cache if target_cache is not None else model.adapter.make_cache(),
        draft_cache=model.draft.make_cache(draft_window),
        block_size=model.block_size if auto else block_size or model.block_size,
        max_tokens=max_tokens,
        key=mx.random.key(seed),
        stats=stats if stats is not None else GenerationStats(),
        block_sizer=AutoBlockSize(model.block_size) if auto else None,
    )


def prefill(model: DFlashModel, state: DecodeState, prompt: mx.array, acceptance: Acceptance) -> List[int]:
    """Run the prompt through the target; returns [the first generated token]."""
    prefill_together(model, [state], [prompt.tolist()], [acceptance], state.target_cache)
    return state.tokens[:1]


def prefill_together(model: DFlashModel, states: List[DecodeState], prompts: List[List[int]],
                     acceptances: List[Acceptance], caches: list) -> None:  # fmt: skip
    """Run several prompts through the target as one batch, `caches` holding a row for each, and
    commit each state's first token. As mlx-lm's BatchGenerator does, prompts of different lengths
    are right-padded to the longest, the caches told so (`prepare`/`finalize`) so that the
    padding is masked and then dropped."""
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
        for i, (state, acceptance, n) in enumerate(zip(states, acceptances, lengths)):
            state.context = mx.concatenate([taps[i : i + 1, :n], taps[i : i + 1, -1:]], axis=1)
            state.tokens.append(acceptance.first_token(logits[i, -1], state))


def step(model: DFlashModel, state: DecodeState, acceptance: Acceptance) -> List[int]:
    """One draft-verify-accept-commit step; returns the committed tokens (at least one)."""
    adapter, config = model.adapter, model.draft.config
    remaining = state.max_tokens - len(state.tokens)
    # A block of b positions commits at most b tokens: draft no further than max_tokens.
    b = max(2, min(state.block_sizer.choose() if state.block_sizer else state.block_size, remaining))
    last = state.tokens[-1]

    with mx.stream(generation_stream):
        step_start = tic = time.perf_counter()
        proposals, draft_logits = model.draft_block([last], b, state.context, state.draft_cache, [acceptance], [state])
        proposals, draft_logits = proposals[0], draft_logits[0]
        mx.eval(proposals)
        state.stats.draft_time += time.perf_counter() - tic

        tic = time.perf_counter()
        verified = adapter.verify(mx.concatenate([mx.array([last]), proposals])[None], state.target_cache,
                                  config.target_layer_ids)  # fmt: skip
        committed = acceptance.accept(proposals, draft_logits, adapter.lm_head(verified.hidden)[0], state)
        state.stats.acceptance_lengths.append(len(committed))
        state.stats.block_sizes.append(b)
        if state.block_sizer:
            state.block_sizer.record(b, accepted=len(committed) - 1, seconds=time.perf_counter() - step_start)
        # A block of 2 drafted with one token left may commit 2: keep one.
        committed = committed[:remaining]
        # The pass ran [last, proposals]; keep the positions of [last, accepted proposals].
        verified.commit(len(committed))
        state.context = verified.taps[:, : len(committed)]
        state.stats.verify_time += time.perf_counter() - tic
    state.tokens.extend(committed)
    return committed
