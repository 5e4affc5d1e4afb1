"""The DFlash decode loop: draft a block, verify it in one target pass, accept, roll back.

`speculative_generate_step` is the loop itself and yields the tokens committed at each step;
`stream_generate` and `generate` add detokenisation, stop tokens and statistics around it,
the way mlx-lm's generate.py does for plain decoding.
"""

import time
from dataclasses import dataclass, field
from typing import Generator, List, Optional, Union

import mlx.core as mx

from .acceptance import GreedyAcceptance
from adapters.errors import DFlashError
from .loading import DFlashModel
from .sampling import AcceptanceStats

# As mlx-lm's generate_step: the prompt but its last token is processed in chunks of this
# size, the last token alone, so the target computes the prompt the way plain decoding does.
PREFILL_STEP_SIZE = 2048


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    generated_tokens: int = 0
    acceptance_lengths: List[int] = field(default_factory=list)  # tokens committed per draft step
    prompt_time: float = 0.0
    generation_time: float = 0.0
    draft_time: float = 0.0
    verify_time: float = 0.0
    peak_memory_gb: float = 0.0
    acceptance_stats: Optional[AcceptanceStats] = None  # sampling rules only (temperature > 0)

    @property
    def mean_acceptance(self) -> float:
        """tau: mean tokens committed per draft-and-verify step."""
        lengths = self.acceptance_lengths
        return sum(lengths) / len(lengths) if lengths else 0.0

    @property
    def prompt_tps(self) -> float:
        return self.prompt_tokens / self.prompt_time if self.prompt_time else 0.0

    @property
    def generation_tps(self) -> float:
        return self.generated_tokens / self.generation_time if self.generation_time else 0.0


@dataclass
class GenerationResponse:
    """One step of `stream_generate`: the text and tokens it committed, and the running stats."""

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


def encode_prompt(adapter, tokenizer, prompt: Union[str, List[int]], chat: bool = False) -> List[int]:
    """Token ids of `prompt` for the target behind `adapter`, checked against its context window."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise DFlashError("the prompt is empty")
        text = adapter.apply_chat_template(tokenizer, prompt) if chat else prompt
        # A chat template writes its own BOS; otherwise let the tokenizer add it.
        prompt = tokenizer.encode(text, add_special_tokens=not chat)
    if len(prompt) == 0:
        raise DFlashError("the prompt is empty")
    window = adapter.context_window
    if window and len(prompt) > window:
        raise DFlashError(f"the prompt has {len(prompt)} tokens; the target's context window is {window}")
    return list(prompt)


def prefill(model: DFlashModel, prompt: mx.array, cache: list):
    """Run the prompt through the target. Returns the logits at its last position and the
    tapped hidden states of every prompt position [1, P, n_taps * D]."""
    adapter, layer_ids = model.adapter, model.draft.config.target_layer_ids
    taps = []
    for start in range(0, prompt.size - 1, PREFILL_STEP_SIZE):
        end = min(start + PREFILL_STEP_SIZE, prompt.size - 1)
        chunk = adapter.verify(prompt[None, start:end], cache, layer_ids)
        mx.eval(chunk.taps, [c.state for c in cache])
        taps.append(chunk.taps)
    last = adapter.verify(prompt[None, -1:], cache, layer_ids)
    taps.append(last.taps)
    return adapter.lm_head(last.hidden)[0, -1], mx.concatenate(taps, axis=1)


def speculative_generate_step(
    prompt: mx.array,
    model: DFlashModel,
    *,
    max_tokens: int = 256,
    block_size: Optional[int] = None,
    acceptance=None,
    stats: Optional[GenerationStats] = None,
    prompt_cache: Optional[list] = None,
) -> Generator[List[int], None, None]:
    """Yield the tokens committed by each step: first the target's token after the prompt,
    then, per draft-and-verify step, the accepted proposals plus one target token.
    Never yields more than `max_tokens` tokens in all; stop tokens are the caller's business.
    `prompt_cache`, if given, is an empty target cache (from `adapter.make_cache()`) that the
    loop fills, as in mlx-lm: afterwards it holds every committed token but the last."""
    adapter, draft = model.adapter, model.draft
    block_size = block_size or draft.config.block_size
    acceptance = acceptance or GreedyAcceptance()
    stats = stats if stats is not None else GenerationStats()
    layer_ids, mask_id = draft.config.target_layer_ids, draft.config.mask_token_id
    target_cache = prompt_cache if prompt_cache is not None else adapter.make_cache()
    draft_cache = draft.make_cache()

    tic = time.perf_counter()
    logits, context = prefill(model, prompt, target_cache)
    last = acceptance.first_token(logits)
    stats.prompt_time = time.perf_counter() - tic
    yield [last]

    generated = 1
    while generated < max_tokens:
        # A block of b positions commits at most b tokens: draft no further than max_tokens.
        b = max(2, min(block_size, max_tokens - generated))

        tic = time.perf_counter()
        block = adapter.embed(mx.array([[last] + [mask_id] * (b - 1)]))
        draft_hidden = draft(block, context, draft_cache)
        draft_logits = adapter.lm_head(draft_hidden[0, 1:])
        proposals = acceptance.propose(draft_logits)
        mx.eval(proposals)
        stats.draft_time += time.perf_counter() - tic

        tic = time.perf_counter()
        verify_tokens = mx.concatenate([mx.array([last]), proposals])
        verified = adapter.verify(verify_tokens[None], target_cache, layer_ids)
        committed = acceptance.accept(proposals, draft_logits, adapter.lm_head(verified.hidden)[0])
        stats.acceptance_lengths.append(len(committed))
        # A block of 2 drafted with one token left may commit 2: keep one.
        committed = committed[: max_tokens - generated]
        # The cache holds [last, proposals]; keep the positions of [last, accepted proposals].
        verified.commit(len(committed))
        # The next draft is conditioned on the target states of those kept positions.
        context = verified.taps[:, : len(committed)]
        stats.verify_time += time.perf_counter() - tic

        generated += len(committed)
        last = committed[-1]
        yield committed


def stream_generate(
    model: DFlashModel,
    tokenizer,
    prompt: Union[str, List[int]],
    max_tokens: int = 256,
    *,
    block_size: Optional[int] = None,
    chat: bool = False,
    acceptance=None,
) -> Generator[GenerationResponse, None, None]:
    """Yield a GenerationResponse for every verified step, with the text it committed."""
    if max_tokens < 1:
        raise DFlashError(f"max tokens must be at least 1, got {max_tokens}")
    if block_size is not None and not 2 <= block_size <= model.block_size:
        raise DFlashError(f"block size must be between 2 and the drafter's {model.block_size}, got {block_size}")
    prompt_ids = encode_prompt(model.adapter, tokenizer, prompt, chat)
    stop_tokens = model.adapter.stop_tokens(tokenizer)
    detokenizer = tokenizer.detokenizer
    detokenizer.reset()
    stats = GenerationStats(prompt_tokens=len(prompt_ids))
    mx.reset_peak_memory()

    steps = speculative_generate_step(
        mx.array(prompt_ids), model, max_tokens=max_tokens, block_size=block_size, acceptance=acceptance, stats=stats
    )
    tic = None
    for committed in steps:
        if tic is None:  # generation time starts once the prompt is processed
            tic = time.perf_counter()
        finish_reason = None
        for i, token in enumerate(committed):
            if token in stop_tokens:
                committed, finish_reason = committed[:i], "stop"
                break
        for token in committed:
            detokenizer.add_token(token)
        stats.generated_tokens += len(committed)
        if finish_reason is None and stats.generated_tokens >= max_tokens:
            finish_reason = "length"
        if finish_reason is not None:
            detokenizer.finalize()
        stats.generation_time = time.perf_counter() - tic
        stats.peak_memory_gb = mx.get_peak_memory() / 1e9
        stats.acceptance_stats = getattr(acceptance, "stats", None)
        yield GenerationResponse(detokenizer.last_segment, committed, stats, finish_reason)
        if finish_reason is not None:
            break


def generate(model: DFlashModel, tokenizer, prompt, max_tokens: int = 256, **kwargs) -> GenerationResult:
    """Generate a whole response. Returns tokens, text, statistics and why it stopped."""
    tokens, text, response = [], "", None
    for response in stream_generate(model, tokenizer, prompt, max_tokens, **kwargs):
        tokens.extend(response.tokens)
        text += response.text
    return GenerationResult(tokens, text, response.stats, response.finish_reason)


def baseline_generate(
    adapter, tokenizer, prompt_ids: List[int], max_tokens: int = 256, sampler=None, seed: Optional[int] = None
):
    """Plain mlx-lm decoding of the target behind `adapter`, with the same stop tokens: greedy, or with
    `sampler` (`SamplingSettings.mlx_sampler`), which draws from mlx's global generator, seeded
    with `seed` if given. Returns (tokens, generation tokens/s), tokens/s timed from the first
    token on as above."""
    from mlx_lm.generate import generate_step

    if seed is not None:
        mx.random.seed(seed)
    stop_tokens = adapter.stop_tokens(tokenizer)
    tokens, tic = [], None
    for token, _ in generate_step(mx.array(prompt_ids), adapter.model, max_tokens=max_tokens, sampler=sampler):
        if tic is None:
            tic = time.perf_counter()
        if token in stop_tokens:
            break
        tokens.append(token)
    elapsed = time.perf_counter() - tic
    return tokens, (len(tokens) / elapsed if elapsed else 0.0)
