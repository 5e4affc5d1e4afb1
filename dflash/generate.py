"""Generation drivers, the way mlx-lm's generate.py is for plain decoding.

`speculative_generate_step` drives one sequence, a batch of one (dflash/decode.py), and yields the
tokens each step commits; `plain_generate_step` does the same for plain mlx-lm decoding of the
target alone, one token a step. `stream_generate` / `generate` put the same detokenisation, stop
tokens and statistics around either, as the model they are given says.
"""

import time
from contextlib import closing
from dataclasses import dataclass
from typing import Generator, Iterator, List, Optional, Union

import mlx.core as mx
from mlx_lm.generate import generate_step

from adapters import DecoderAdapter
from adapters.errors import DFlashError

from . import decode
from .acceptance import Acceptance, make_acceptance
from .loading import DFlashModel
from .prefix_cache import PrefixCache, check_drafter_window
from .sampling import SamplingSettings
from .stats import GenerationStats


@dataclass
class GenerationResponse:
    """One step of a stream: the text and tokens it committed, and the running stats."""

    text: str
    tokens: List[int]
    stats: GenerationStats
    finish_reason: Optional[str] = None  # "stop" (a stop token) or "length" (max_tokens)


@dataclass
class GenerationResult:
    tokens: List[int]
    text: str
    stats: GenerationStats
    finish_reason: str


def check_text(text: str, what: str) -> None:
    """Text a tokenizer can take: no lone surrogates (as undecodable bytes in argv, or an escaped
    half of a UTF-16 pair in JSON, give)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DFlashError(f"{what} is not valid Unicode text: a lone surrogate at character {e.start}") from None


def check_prompt_form(prompt) -> None:
    """A prompt is text, a non-empty list of token ids, or a conversation of messages (dicts of
    text), checked for what needs no model; `encode_prompt` checks the rest."""
    if isinstance(prompt, str):
        return check_text(prompt, "the prompt")
    if not isinstance(prompt, list):
        raise DFlashError(f"the prompt must be text, token ids or messages, got {type(prompt).__name__}")
    if not prompt:
        raise DFlashError("the prompt is empty")
    if all(isinstance(message, dict) for message in prompt):
        for i, message in enumerate(prompt):
            for key, value in message.items():
                if not isinstance(value, str):
                    raise DFlashError(f"message {i}'s {key} must be text, got {type(value).__name__}")
                check_text(value, f"message {i}'s {key}")
        return
    if not all(isinstance(token, int) and not isinstance(token, bool) for token in prompt):
        raise DFlashError("the prompt's token ids must be whole numbers")


def encode_prompt(
    adapter: DecoderAdapter, tokenizer, prompt: Union[str, List[int], List[dict]], chat: bool = False,
    thinking: Optional[bool] = None,
) -> List[int]:
    """Token ids of `prompt` (text, a conversation of {"role", "content"} messages, or token ids) for
    the target behind `adapter`, checked against its vocabulary and context window. Text is put
    through the chat template when `chat`, a conversation always; `thinking` switches the
    template's thinking mode (None: the family's default)."""
    check_prompt_form(prompt)
    conversation = isinstance(prompt, list) and isinstance(prompt[0], dict)
    if isinstance(prompt, str) or conversation:
        if isinstance(prompt, str) and not prompt.strip():
            raise DFlashError("the prompt is empty")
        chat = chat or conversation
        text = adapter.apply_chat_template(tokenizer, prompt, thinking) if chat else prompt
        # A chat template writes its own BOS; otherwise let the tokenizer add it.
        prompt = tokenizer.encode(text, add_special_tokens=not chat)
    if len(prompt) == 0:
        raise DFlashError("the prompt is empty")
    vocab = adapter.vocab_size
    outside = next((token for token in prompt if not 0 <= token < vocab), None)
    if outside is not None:
        raise DFlashError(f"token id {outside} is not in the target's vocabulary (0 to {vocab - 1})")
    window = adapter.context_window
    if window and len(prompt) >= window:
        raise DFlashError(f"the prompt has {len(prompt)} tokens; the target's context window is {window}, "
                          f"with room for a prompt of at most {window - 1}")  # fmt: skip
    return list(prompt)


def within_window(adapter: DecoderAdapter, prompt_ids: List[int], max_tokens: int) -> int:
    """`max_tokens`, or fewer where the prompt and the answer would outgrow the target's context window."""
    window = adapter.context_window
    return min(max_tokens, window - len(prompt_ids)) if window else max_tokens


def speculative_generate_step(
    prompt: mx.array,
    model: DFlashModel,
    *,
    max_tokens: int = 256,
    block_size: Optional[int] = None,
    acceptance: Optional[Acceptance] = None,
    seed: Optional[int] = None,
    stats: Optional[GenerationStats] = None,
    draft_window: Optional[int] = None,
    prefix_cache: Optional[PrefixCache] = None,
) -> Generator[List[int], None, None]:
    """Yield the tokens committed by each step: first the target's token after the prompt,
    then, per draft-and-verify step, the accepted proposals plus one target token.
    Never yields more than `max_tokens` tokens in all; stop tokens are the caller's business.
    With `prefix_cache`, the request starts from the caches of its prompt's longest cached prefix
    and leaves its own there when it ends or is closed (dflash/prefix_cache.py)."""
    check_drafter_window(prefix_cache, draft_window)
    prompt_ids = prompt.tolist()
    reused = prefix_cache.fetch(prompt_ids) if prefix_cache is not None else None
    skipped = reused.length if reused is not None else 0
    if stats is not None:
        stats.cached_tokens = skipped
    single = decode.start(model, max_tokens=max_tokens, block_size=block_size, seed=seed, stats=stats,
                          draft_window=draft_window, acceptance=acceptance, reused=reused)  # fmt: skip
    try:
        yield decode.prefill(model, single, prompt[skipped:])
        while not single.finished:
            yield single.step(model)
    except GeneratorExit:  # the caller has what it wanted (a stop token, say): the caches are whole
        pass
    if prefix_cache is not None:  # the caches hold every committed position but the last
        prefix_cache.store(prompt_ids + single.tokens[:-1], single.target_cache, single.draft_cache, single.context)


def plain_generate_step(
    prompt: mx.array,
    adapter: DecoderAdapter,
    *,
    max_tokens: int = 256,
    sampling: Optional[SamplingSettings] = None,
    seed: Optional[int] = None,
) -> Generator[List[int], None, None]:
    """Plain decoding of the target with mlx-lm's `generate_step`, one token a step: greedy, or
    sampled from the distribution mlx-lm's sampler draws from (`SamplingSettings.sampling_logits`)
    with the request's own random stream, started from `seed`, so that interleaved requests do not
    draw from each other's stream."""
    sampler = None
    decode.check_seed(seed)
    if sampling is not None and not sampling.greedy:
        key = mx.random.key(seed if seed is not None else mx.random.randint(0, 2**31 - 1).item())

        def sampler(logprobs: mx.array) -> mx.array:
            nonlocal key
            key, draw = mx.random.split(key)
            return mx.random.categorical(sampling.sampling_logits(logprobs), key=draw)

    for token, _ in generate_step(prompt, adapter.model, max_tokens=max_tokens, sampler=sampler):
        yield [token]


class Responder:
    """Turns one request's committed tokens, step by step, into GenerationResponses: cut at the first
    stop token, detokenised, finished at a stop token or after `max_tokens`, with `stats` kept up to
    date. The prompt time runs from its creation to the first step, the generation time from there."""

    def __init__(self, tokenizer, stop_tokens: set, max_tokens: int, stats: GenerationStats):
        self.detokenizer = tokenizer.detokenizer
        self.stop_tokens, self.max_tokens, self.stats = stop_tokens, max_tokens, stats
        self.tic, self.started = time.perf_counter(), False

    def __call__(self, committed: List[int]) -> GenerationResponse:
        stats = self.stats
        if not self.started:  # the prompt is processed
            stats.prompt_time = time.perf_counter() - self.tic
            self.tic, self.started = time.perf_counter(), True
        finish_reason = None
        stops = [i for i, token in enumerate(committed) if token in self.stop_tokens]
        if stops:
            committed, finish_reason = committed[: stops[0]], "stop"
        for token in committed:
            self.detokenizer.add_token(token)
        stats.generated_tokens += len(committed)
        if finish_reason is None and stats.generated_tokens >= self.max_tokens:
            finish_reason = "length"
        if finish_reason is not None:
            self.detokenizer.finalize()
        stats.generation_time = time.perf_counter() - self.tic
        stats.peak_memory_gb = mx.get_peak_memory() / 1e9
        return GenerationResponse(self.detokenizer.last_segment, committed, stats, finish_reason)


def stream_steps(
    steps: Generator[List[int], None, None], tokenizer, stop_tokens: set, max_tokens: int, stats: GenerationStats
) -> Generator[GenerationResponse, None, None]:
    """A response for each step's committed tokens (see `Responder`), until the request finishes;
    then `steps` is closed."""
    mx.reset_peak_memory()
    respond = Responder(tokenizer, stop_tokens, max_tokens, stats)
    with closing(steps):
        for committed in steps:
            response = respond(committed)
            yield response
            if response.finish_reason is not None:
                break


def stream_generate(
    model: Union[DFlashModel, DecoderAdapter],
    tokenizer,
    prompt: Union[str, List[int], List[dict]],
    max_tokens: int = 256,
    *,
    sampling: Optional[SamplingSettings] = None,
    acceptance: Optional[Acceptance] = None,
    seed: Optional[int] = None,
    block_size: Union[int, str, None] = None,
    draft_window: Optional[int] = None,
    prefix_cache: Optional[PrefixCache] = None,
    chat: bool = False,
    thinking: Optional[bool] = None,
) -> Generator[GenerationResponse, None, None]:
    """Yield a GenerationResponse for every step, with the text it committed. As mlx-lm's
    `stream_generate` with or without a draft model, the model says how: a DFlashModel decodes
    speculatively (a block a step), a DecoderAdapter by plain mlx-lm decoding of its model (a token
    a step: the baseline, and the router's fast route). Greedy unless `sampling` says otherwise;
    a DFlashModel accepts with `acceptance`, else with its drafter's rule for `sampling`.
    `block_size` ("auto": chosen every step), `draft_window` (the drafter sees only the last
    that many committed positions) and `prefix_cache` (a PrefixCache shared by requests: this one
    starts from its longest cached prefix and leaves its caches there) are for a DFlashModel only."""
    decode.check_max_tokens(max_tokens)
    speculative = isinstance(model, DFlashModel)
    adapter = model.adapter if speculative else model
    if not speculative and (acceptance, block_size, draft_window, prefix_cache) != (None, None, None, None):
        raise DFlashError("plain decoding has no drafter: an acceptance rule, block size, draft window or prefix "
                          "cache needs one")  # fmt: skip
    prompt_ids = encode_prompt(adapter, tokenizer, prompt, chat, thinking)
    max_tokens = within_window(adapter, prompt_ids, max_tokens)
    stats = GenerationStats(prompt_tokens=len(prompt_ids))
    if speculative:
        if acceptance is None:
            acceptance = make_acceptance(sampling or SamplingSettings(), model.acceptance_rule)
        steps = speculative_generate_step(mx.array(prompt_ids), model, max_tokens=max_tokens, block_size=block_size,
                                          acceptance=acceptance, seed=seed, stats=stats,
                                          draft_window=draft_window, prefix_cache=prefix_cache)  # fmt: skip
    else:
        steps = plain_generate_step(mx.array(prompt_ids), adapter, max_tokens=max_tokens, sampling=sampling, seed=seed)
    yield from stream_steps(steps, tokenizer, adapter.stop_tokens(tokenizer), max_tokens, stats)


def collect(responses: Iterator[GenerationResponse]) -> GenerationResult:
    tokens, text, response = [], "", None
    for response in responses:
        tokens.extend(response.tokens)
        text += response.text
    return GenerationResult(tokens, text, response.stats, response.finish_reason)


def generate(model: Union[DFlashModel, DecoderAdapter], tokenizer, prompt, max_tokens: int = 256,
             **kwargs) -> GenerationResult:  # fmt: skip
    """Generate a whole response (see `stream_generate`). Returns tokens, text, statistics and why it stopped."""
    return collect(stream_generate(model, tokenizer, prompt, max_tokens, **kwargs))
