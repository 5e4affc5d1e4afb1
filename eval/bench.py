"""The speed and exactness benchmark: plain mlx-lm decoding, DFlash, and mlx-lm's own
draft-model speculative decoding, run on the same target in the same process.

DFlash runs as today (the drafter's block, speculative sampling at temperature > 0, the whole
context for the drafter) and as any `Variant`s asked for beside it: other block sizes or "auto",
other acceptance rules, a bounded drafter context.
`run_benchmark` times every method on every prompt (warmup first, methods interleaved per
repeat) and `analyse` turns the runs into the figures of report.json.
"""

import statistics
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Callable, Dict, List, Optional, Union

import mlx.core as mx
from mlx_lm.generate import speculative_generate_step
from tqdm import tqdm

from dflash.acceptance import make_acceptance
from dflash.generate import collect, encode_prompt, generate, stream_steps
from dflash.loading import DFlashModel
from dflash.model import DFlashDraftModel
from dflash.sampling import SamplingSettings
from dflash.stats import GenerationStats, mean_acceptance

from .exactness import divergence_record
from .loops import loop_figures
from .suites import Prompt

PLAIN, DFLASH, MLX_SPECULATIVE = "plain", "dflash", "mlx_speculative"
METHOD_NAMES = {PLAIN: "plain mlx-lm", DFLASH: "DFlash", MLX_SPECULATIVE: "mlx-lm speculative"}
TODAYS_RULE = "speculative"


def method_name(name: str) -> str:
    return METHOD_NAMES.get(name) or name.replace(DFLASH, METHOD_NAMES[DFLASH], 1)


@dataclass(frozen=True)
class Variant:
    """A way to run DFlash: None and TODAYS_RULE are today's behaviour."""

    block_size: Union[int, str, None] = None  # None: the drafter's
    acceptance: str = TODAYS_RULE  # the rule at temperature > 0
    draft_window: Optional[int] = None  # None: the drafter sees the whole context
    draft_model: Optional[str] = None  # None: the bench's drafter; else the path of another one
    selector: bool = True  # False: a DFlash 2 drafter proposes its own argmax, not its selector's path

    @property
    def name(self) -> str:
        """DFLASH for today's behaviour, else e.g. "dflash b=4 argmax", "dflash window=64",
        "dflash draft=PATH" or "dflash no-selector"."""
        parts = [f"b={self.block_size}"] if self.block_size is not None else []
        parts += [self.acceptance] if self.acceptance != TODAYS_RULE else []
        parts += [f"window={self.draft_window}"] if self.draft_window is not None else []
        parts += [f"draft={self.draft_model}"] if self.draft_model is not None else []
        parts += [] if self.selector else ["no-selector"]
        return " ".join([DFLASH] + parts)


def dflash_variants(block_sizes: list, rules: List[str], drafter_block: int, greedy: bool,
                    draft_windows: List[int] = ()) -> List[Variant]:  # fmt: skip
    """Today's DFlash first, then the drafter's block size and every other with every rule (rules
    only when sampling), then today's DFlash with each drafter context window."""
    sizes = [None] + [None if size == drafter_block else size for size in block_sizes]
    variants = [Variant()]
    for size in sizes:
        for rule in [TODAYS_RULE] if greedy else rules:
            if Variant(size, rule) not in variants:
                variants.append(Variant(size, rule))
    variants += [Variant(draft_window=window) for window in dict.fromkeys(draft_windows)]
    return variants


@dataclass
class Run:
    """One generation by one method. Times exclude the prompt (from the first token on)."""

    tokens: List[int]
    generation_time: float
    acceptance_lengths: List[int] = field(default_factory=list)  # tokens committed per verify step
    draft_time: Optional[float] = None  # DFlash only: mlx-lm does not split its steps
    verify_time: Optional[float] = None
    peak_memory_gb: float = 0.0
    block_sizes: List[int] = field(default_factory=list)  # DFlash: the block size of each step


def run_plain(model: DFlashModel, tokenizer, prompt_ids: List[int], max_tokens: int, sampling: SamplingSettings,
              seed: int) -> Run:  # fmt: skip
    result = generate(model.adapter, tokenizer, prompt_ids, max_tokens, sampling=sampling, seed=seed)
    return Run(result.tokens, result.stats.generation_time, peak_memory_gb=result.stats.peak_memory_gb)


def run_dflash(model: DFlashModel, tokenizer, prompt_ids: List[int], max_tokens: int, variant: Variant,
               sampling: SamplingSettings, seed: int) -> Run:  # fmt: skip
    result = generate(model, tokenizer, prompt_ids, max_tokens, block_size=variant.block_size,
                      acceptance=make_acceptance(sampling, variant.acceptance), seed=seed,
                      draft_window=variant.draft_window)  # fmt: skip
    stats = result.stats
    return Run(
        result.tokens,
        stats.generation_time,
        list(stats.acceptance_lengths),
        stats.draft_time,
        stats.verify_time,
        stats.peak_memory_gb,
        list(stats.block_sizes),
    )


def run_mlx_speculative(
    model: DFlashModel, tokenizer, draft_model, prompt_ids: List[int], max_tokens: int, num_draft_tokens: int
) -> Run:
    """mlx-lm's draft-model speculative decoding, cut at stop tokens and timed as the other methods."""
    stats = GenerationStats(prompt_tokens=len(prompt_ids))

    def steps():
        """Its tokens grouped by verify step: the accepted draft tokens, then one of the target's."""
        step = []
        tokens = speculative_generate_step(mx.array(prompt_ids), model.target, draft_model,
                                           num_draft_tokens=num_draft_tokens, max_tokens=max_tokens)  # fmt: skip
        for token, _, from_draft in tokens:
            step.append(token)
            if not from_draft:
                stats.acceptance_lengths.append(len(step))
                yield step
                step = []
        if step:  # max_tokens ended the generation inside a step
            stats.acceptance_lengths.append(len(step))
            yield step

    result = collect(stream_steps(steps(), tokenizer, model.adapter.stop_tokens(tokenizer), max_tokens, stats))
    return Run(result.tokens, stats.generation_time, stats.acceptance_lengths, peak_memory_gb=stats.peak_memory_gb)


def run_benchmark(
    model: DFlashModel,
    tokenizer,
    prompts: List[Prompt],
    *,
    max_tokens: int,
    repeats: int,
    warmup: int,
    chat: bool,
    variants: List[Variant] = (Variant(),),
    compared_drafters: Optional[Dict[str, DFlashDraftModel]] = None,
    sampling: SamplingSettings = SamplingSettings(),
    mlx_draft_model=None,
    num_draft_tokens: int = 3,
) -> dict:
    """Every method on every prompt, `repeats` times, each sampled run of a prompt and repeat from
    the same seed; a variant with a `draft_model` runs `model`'s target with that drafter, from
    `compared_drafters`. Returns the prompts' token ids and runs[method][repeat][prompt index]."""
    methods: Dict[str, Callable[..., Run]] = {
        PLAIN: partial(run_plain, model, tokenizer, max_tokens=max_tokens, sampling=sampling),
    }
    for variant in variants:
        drafted = model if variant.draft_model is None else replace(model, draft=compared_drafters[variant.draft_model])
        drafted = drafted if variant.selector else replace(drafted, selector=False)
        methods[variant.name] = partial(run_dflash, drafted, tokenizer, max_tokens=max_tokens, variant=variant,
                                        sampling=sampling)  # fmt: skip
    if mlx_draft_model is not None:
        mlx_speculative = partial(run_mlx_speculative, model, tokenizer, mlx_draft_model, max_tokens=max_tokens,
                                  num_draft_tokens=num_draft_tokens)  # fmt: skip
        methods[MLX_SPECULATIVE] = lambda ids, seed: mlx_speculative(ids)  # greedy only: no seed
    prompt_ids = [encode_prompt(model.adapter, tokenizer, prompt.prompt, chat) for prompt in prompts]
    names = list(methods)

    for _ in range(warmup):
        for name in names:
            methods[name](prompt_ids[0], seed=0)

    runs = {name: [[None] * len(prompts) for _ in range(repeats)] for name in names}
    with tqdm(total=repeats * len(prompts) * len(names), desc="bench", unit="run") as progress:
        for repeat in range(repeats):
            # Methods run back to back on each prompt, in a rotated order on each repeat, so
            # that thermal or load drift hits every method alike.
            order = names[repeat % len(names) :] + names[: repeat % len(names)]
            for index, ids in enumerate(prompt_ids):
                for name in order:
                    runs[name][repeat][index] = methods[name](ids, seed=repeat * len(prompt_ids) + index)
                    progress.update()
    return {"prompt_ids": prompt_ids, "runs": runs}


def analyse(model: DFlashModel, tokenizer, prompts: List[Prompt], benchmark: dict, tie_gap: float,
            greedy: bool = True) -> dict:  # fmt: skip
    """The figures of report.json: per method over all prompts, per suite/category group and
    per prompt, with the exactness of every method against plain decoding when greedy (sampled
    runs agree in distribution only: tests/test_sampling.py)."""
    prompt_ids, runs = benchmark["prompt_ids"], benchmark["runs"]
    stop_tokens = model.adapter.stop_tokens(tokenizer)
    # Greedy decoding is deterministic: the first repeat's tokens stand for all of them.
    divergences = {} if not greedy else {
        name: [
            divergence_record(
                model.target, tokenizer, ids, runs[PLAIN][0][i].tokens, runs[name][0][i].tokens, stop_tokens, tie_gap
            )
            for i, ids in enumerate(prompt_ids)
        ]
        for name in runs
        if name != PLAIN
    }

    def figures(indices: List[int]) -> dict:
        return {name: method_figures(runs, name, indices, divergences.get(name)) for name in runs}

    groups = {}
    for index, prompt in enumerate(prompts):
        groups.setdefault(prompt.suite, []).append(index)
        if prompt.category:
            groups.setdefault(prompt.group, []).append(index)

    per_prompt = []
    for index, prompt in enumerate(prompts):
        record = {
            "id": prompt.id,
            "suite": prompt.suite,
            "category": prompt.category,
            "prompt_tokens": len(prompt_ids[index]),
            "text": tokenizer.decode(runs[PLAIN][0][index].tokens),
            "methods": figures([index]),
        }
        for name, records in divergences.items():
            record["methods"][name]["divergence"] = records[index]
        per_prompt.append(record)

    methods = figures(list(range(len(prompts))))
    for name in methods:
        if name.startswith(DFLASH):
            methods[name]["gains"] = gains(methods, name)
    return {
        "methods": methods,
        "groups": {group: {"prompts": len(indices), "methods": figures(indices)} for group, indices in groups.items()},
        "prompts": per_prompt,
    }


def gains(methods: dict, name: str) -> dict:
    """A DFlash variant's tokens/s over every other variant's, repeat by repeat."""
    speeds = methods[name]["tokens_per_second"]["repeats"]
    return {
        other: spread([ratio(a, b) for a, b in zip(speeds, methods[other]["tokens_per_second"]["repeats"])])
        for other in methods
        if other.startswith(DFLASH) and other != name
    }


def method_figures(runs: dict, name: str, indices: List[int], divergences: Optional[list]) -> dict:
    """Speed, acceptance, exactness and loops of one method over the prompts `indices`. Speeds are
    suite-level (all tokens over all time) per repeat, then median/min/max over repeats."""
    repeats = range(len(runs[name]))
    tokens = [sum(len(runs[name][r][i].tokens) for i in indices) for r in repeats]
    times = [sum(runs[name][r][i].generation_time for i in indices) for r in repeats]
    plain_tokens = [sum(len(runs[PLAIN][r][i].tokens) for i in indices) for r in repeats]
    plain_times = [sum(runs[PLAIN][r][i].generation_time for i in indices) for r in repeats]
    tokens_per_second = [ratio(n, t) for n, t in zip(tokens, times)]
    plain_tokens_per_second = [ratio(n, t) for n, t in zip(plain_tokens, plain_times)]
    figures = {
        "generated_tokens": tokens[0],
        "tokens_per_second": spread(tokens_per_second),
        "peak_memory_gb": max(runs[name][r][i].peak_memory_gb for r in repeats for i in indices),
        # The first repeat's tokens, as for tau: sampled repeats differ, but any one of them shows
        # how often the method's output loops.
        "loops": loop_figures([runs[name][0][i].tokens for i in indices]),
    }
    if name == PLAIN:
        return figures

    figures["speedup"] = spread([ratio(a, b) for a, b in zip(tokens_per_second, plain_tokens_per_second)])
    lengths = [length for i in indices for length in runs[name][0][i].acceptance_lengths]
    tau = mean_acceptance(lengths)
    figures["steps"] = len(lengths)
    figures["mean_acceptance"] = tau
    figures["acceptance_histogram"] = {str(k): v for k, v in sorted(Counter(lengths).items())}
    figures["exact_match_rate"] = sum(divergences[i] is None for i in indices) / len(indices) if divergences else None
    sizes = [size for i in indices for size in runs[name][0][i].block_sizes]
    if sizes:
        figures["block_size_histogram"] = {str(k): v for k, v in sorted(Counter(sizes).items())}

    if lengths and runs[name][0][indices[0]].draft_time is not None:
        figures.update(step_costs(runs[name], indices, plain_tokens, plain_times, tau))
    return figures


def step_costs(method_runs: list, indices: List[int], plain_tokens: list, plain_times: list, tau: float) -> dict:
    """DFlash's mean draft, verify and other (detokenising, stop checks) time per step against plain
    decoding's time per token, medians over repeats, and the speedup that tau and the draft
    and verify costs imply if the rest of the loop cost nothing."""
    draft, verify, other, plain_token = [], [], [], []
    for repeat, runs in enumerate(method_runs):
        steps = sum(len(runs[i].acceptance_lengths) for i in indices)
        draft_time = sum(runs[i].draft_time for i in indices)
        verify_time = sum(runs[i].verify_time for i in indices)
        generation_time = sum(runs[i].generation_time for i in indices)
        draft.append(draft_time / steps)
        verify.append(verify_time / steps)
        other.append((generation_time - draft_time - verify_time) / steps)
        plain_token.append(ratio(plain_times[repeat], plain_tokens[repeat]))
    draft, verify, other, plain_token = (median_of(values) for values in (draft, verify, other, plain_token))
    return {
        "draft_ms_per_step": draft * 1000,
        "verify_ms_per_step": verify * 1000,
        "other_ms_per_step": other * 1000,
        "plain_ms_per_token": plain_token * 1000 if plain_token else None,
        "ideal_speedup": tau * plain_token / (draft + verify) if plain_token else None,
    }


def ratio(numerator: float, denominator: float) -> Optional[float]:
    return numerator / denominator if denominator else None


def median_of(values) -> Optional[float]:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def spread(values: List[Optional[float]]) -> dict:
    """Median, min and max over repeats, and the per-repeat values."""
    known = [v for v in values if v is not None]
    return {
        "median": statistics.median(known) if known else None,
        "min": min(known) if known else None,
        "max": max(known) if known else None,
        "repeats": values,
    }
