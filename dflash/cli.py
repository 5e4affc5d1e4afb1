"""`uv run dflash-mlx`: generate with a target and its DFlash drafter.

With no model arguments it runs the offline default pair shipped in dflash/checkpoints.
"""

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from adapters.router import DEFAULT_THRESHOLD, ROUTERS

from . import blas
from adapters.errors import DFlashError
from .sampling import ACCEPTANCE_RULES, SamplingSettings, make_acceptance

CHECKPOINTS = Path(__file__).parent / "checkpoints"
DEFAULT_TARGET = CHECKPOINTS / "expert"
DEFAULT_DRAFT = CHECKPOINTS / "expert-dflash"
DEFAULT_FAST = CHECKPOINTS / "fast"
DEFAULT_ROUTER_PROBE = CHECKPOINTS / "router-probe.safetensors"
# A held-out prompt (train/data/heldout_prompts.jsonl): the shipped pair never trained on it.
DEFAULT_PROMPT = "Write the function `ismount` from the `ntpath` module."

# Published pairs: (target, drafter) Hugging Face repo ids.
PRESETS = {
    "qwen3-4b": ("Qwen/Qwen3-4B", "z-lab/Qwen3-4B-DFlash-b16"),
    "qwen3-8b": ("Qwen/Qwen3-8B", "z-lab/Qwen3-8B-DFlash-b16"),
    "llama3.1-8b": ("meta-llama/Llama-3.1-8B-Instruct", "z-lab/LLaMA3.1-8B-Instruct-DFlash-UltraChat"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dflash-mlx", description=__doc__.strip().splitlines()[0])
    models = parser.add_argument_group("models")
    models.add_argument("--target-model", help="mlx-lm target: local directory or Hugging Face repo id")
    models.add_argument("--draft-model", help="DFlash drafter: local directory or Hugging Face repo id")
    models.add_argument("--preset", choices=sorted(PRESETS), help="a published target/drafter pair (needs the hub)")
    models.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="compute dtype; auto: float32 on the CPU backend (the BLAS path), the checkpoint's on Metal")
    routing = parser.add_argument_group("routing")
    routing.add_argument("--route", choices=["auto", "fast", "expert"], default="expert",
                         help="expert: the target with its drafter (default); fast: the fast model alone; "
                         "auto: the router picks one per prompt")
    routing.add_argument("--fast-model", default=str(DEFAULT_FAST),
                         help="mlx-lm model for the fast route, sharing the target's tokenizer "
                         "(default: the shipped one)")
    routing.add_argument("--router", choices=ROUTERS, default="probe",
                         help="what decides under the guardrails with --route auto: probe (trained on the fast model's "
                         "hidden states, default), judge (the fast model, instruction-tuned, classifies the prompt) or "
                         "guardrails alone (no rule fires: fast)")
    routing.add_argument("--router-probe", default=str(DEFAULT_ROUTER_PROBE),
                         help="probe file from dflash-train-router (default: the shipped one, trained on the "
                         "shipped fast model)")
    routing.add_argument("--route-threshold", type=float, default=DEFAULT_THRESHOLD,
                         help=f"the probe or judge picks expert when P(expert) >= this (default {DEFAULT_THRESHOLD}: "
                         "when in doubt, expert)")
    gen = parser.add_argument_group("generation")
    gen.add_argument("--prompt", default=DEFAULT_PROMPT)
    gen.add_argument("--max-new-tokens", type=int, default=256)
    gen.add_argument("--block-size", type=int, help="draft block size (default: the drafter's)")
    gen.add_argument("--chat", action=argparse.BooleanOptionalAction, default=True,
                     help="apply the target's chat template (default: on)")
    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--temperature", type=float, default=0.0,
                          help="0 (default): greedy, token for token what plain greedy decoding gives")
    sampling.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling, in (0, 1] (default 1: off)")
    sampling.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (default 0: off)")
    sampling.add_argument("--min-p", type=float, default=0.0,
                          help="drop tokens below min-p times the top token's probability, in [0, 1) (default 0: off)")
    sampling.add_argument("--seed", type=int, help="seed of the random draws: the same seed gives the same text")
    sampling.add_argument("--acceptance", choices=sorted(ACCEPTANCE_RULES), default="speculative",
                          help="how proposals are accepted at temperature > 0, both lossless: speculative sampling "
                          "(default; accepts with probability min(1, p/q)) or match (accepts a proposal equal to the "
                          "target's own draw)")
    out = parser.add_argument_group("output")
    out.add_argument("--stream", action="store_true", help="print text as it is verified")
    out.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    out.add_argument("--baseline", action="store_true",
                     help="also run plain mlx-lm decoding (greedy, or sampling with the same settings); report the "
                     "speedup and, when greedy, whether the tokens are identical")
    return parser


def resolve_models(args) -> tuple:
    if args.preset and (args.target_model or args.draft_model):
        raise DFlashError("give either --preset or --target-model/--draft-model, not both")
    if args.preset:
        return PRESETS[args.preset]
    if bool(args.target_model) != bool(args.draft_model):
        raise DFlashError("give both --target-model and --draft-model (or neither, for the shipped offline pair)")
    if args.target_model:
        return args.target_model, args.draft_model
    if not (DEFAULT_TARGET.is_dir() and DEFAULT_DRAFT.is_dir()):
        raise DFlashError(
            f"the offline default pair is not in {CHECKPOINTS} (it is built by train/, see the README); "
            "pass --target-model and --draft-model, or --preset"
        )
    return str(DEFAULT_TARGET), str(DEFAULT_DRAFT)


def run(args) -> dict:
    """Route the prompt, load only the models its route needs, generate; returns the report."""
    from adapters.router import FAST, check_prompt, check_threshold, load_fast_model, make_router

    if args.max_new_tokens < 1:
        raise DFlashError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    check_prompt(args.prompt)
    check_threshold(args.route_threshold)
    settings = SamplingSettings(args.temperature, args.top_p, args.top_k, args.min_p)
    fast, route, reason, router_latency = None, args.route, "chosen with --route", 0.0
    if args.route == "auto":
        if args.router != "guardrails":  # the guardrails alone need no model
            fast = load_fast_model(args.fast_model, args.dtype)
        decision = make_router(args.router, fast, args.router_probe, args.route_threshold).route(args.prompt)
        route, reason, router_latency = decision.route, decision.reason, decision.latency_s
    if route == FAST:
        report = run_fast(args, fast or load_fast_model(args.fast_model, args.dtype), settings)
    else:
        report = run_expert(args, settings)
    return {"route": route, "route_reason": reason, "router_latency_s": router_latency, **report}


def run_fast(args, fast, settings: SamplingSettings) -> dict:
    """Plain mlx-lm decoding of the fast model alone: greedy, or sampling with `settings`."""
    import mlx.core as mx
    from mlx_lm import stream_generate as mlx_stream_generate

    from .generate import encode_prompt

    prompt_ids = encode_prompt(fast.adapter, fast.tokenizer, args.prompt, chat=args.chat)
    sampler = None if settings.greedy else settings.mlx_sampler(fast.adapter.vocab_size)
    if args.seed is not None:  # mlx-lm's sampler draws from mlx's global generator
        mx.random.seed(args.seed)
    tokens, text = [], ""
    responses = mlx_stream_generate(fast.model, fast.tokenizer, prompt_ids, args.max_new_tokens, sampler=sampler)
    for response in responses:
        if response.finish_reason != "stop":  # a stop token ends the text without being part of it
            tokens.append(response.token)
        text += response.text
        if args.stream and not args.json:
            print(response.text, end="", flush=True)
    if args.stream and not args.json:
        print()
    elif not args.json:
        print(text)
    return {
        "fast_model": fast.path,
        "dtype": fast.dtype,
        "blas": blas.loaded or "reference",
        "text": text,
        "tokens": tokens,
        "prompt_tokens": response.prompt_tokens,
        "generated_tokens": len(tokens),
        "tokens_per_second": response.generation_tps,
        "prompt_tokens_per_second": response.prompt_tps,
        "peak_memory_gb": response.peak_memory,
        "sampling": {**dataclasses.asdict(settings), "seed": args.seed},
    }


def run_expert(args, settings: SamplingSettings) -> dict:
    from .generate import baseline_generate, encode_prompt, generate, stream_generate
    from .loading import load

    target, draft = resolve_models(args)
    model, tokenizer = load(target, draft, dtype=args.dtype)
    prompt_ids = encode_prompt(model.adapter, tokenizer, args.prompt, chat=args.chat)
    options = dict(block_size=args.block_size, acceptance=make_acceptance(settings, args.acceptance, args.seed))
    baseline_sampler = None if settings.greedy else settings.mlx_sampler(model.adapter.vocab_size)

    if args.baseline:  # warm both paths up so neither pays first-call costs in the timing
        generate(model, tokenizer, prompt_ids, 8, **options)
        baseline_generate(model.adapter, tokenizer, prompt_ids, 8, sampler=baseline_sampler)

    if args.stream and not args.json:
        tokens, text = [], ""
        for response in stream_generate(model, tokenizer, prompt_ids, args.max_new_tokens, **options):
            print(response.text, end="", flush=True)
            tokens += response.tokens
            text += response.text
        print()
        stats = response.stats
    else:
        result = generate(model, tokenizer, prompt_ids, args.max_new_tokens, **options)
        tokens, text, stats = result.tokens, result.text, result.stats

    report = {
        "target_model": target,
        "draft_model": draft,
        "dtype": model.dtype,
        "blas": blas.loaded or "reference",
        "block_size": args.block_size or model.block_size,
        "text": text,
        "tokens": tokens,
        "prompt_tokens": stats.prompt_tokens,
        "generated_tokens": stats.generated_tokens,
        "acceptance_lengths": stats.acceptance_lengths,
        "mean_acceptance": stats.mean_acceptance,
        "tokens_per_second": stats.generation_tps,
        "prompt_tokens_per_second": stats.prompt_tps,
        "draft_time": stats.draft_time,
        "verify_time": stats.verify_time,
        "peak_memory_gb": stats.peak_memory_gb,
        "sampling": {
            "temperature": settings.temperature, "top_p": settings.top_p, "top_k": settings.top_k,
            "min_p": settings.min_p, "seed": args.seed, "acceptance": "greedy" if settings.greedy else args.acceptance,
        },
    }
    sampled = stats.acceptance_stats
    if sampled is not None:
        report.update(
            acceptance_rate=sampled.acceptance_rate,
            expected_acceptance_rate=sampled.expected_speculative_rate,
            expected_match_acceptance_rate=sampled.expected_match_rate,
            tested_proposals=sampled.tested,
            expected_accepted=sampled.expected_speculative,
            expected_match_accepted=sampled.expected_match,
        )
    if args.baseline:
        baseline_tokens, baseline_tps = baseline_generate(
            model.adapter, tokenizer, prompt_ids, args.max_new_tokens, sampler=baseline_sampler, seed=args.seed
        )
        report.update(
            baseline_tokens=baseline_tokens,
            baseline_tokens_per_second=baseline_tps,
            speedup=stats.generation_tps / baseline_tps if baseline_tps else 0.0,
            # Sampled runs agree in distribution (tests/test_sampling.py), not token for token.
            exact=baseline_tokens == tokens if settings.greedy else None,
        )
    if not args.stream and not args.json:
        print(text)
    return report


def summary_line(report: dict) -> str:
    parts = [f"tau {report['mean_acceptance']:.2f}"] if "mean_acceptance" in report else []
    parts += [
        f"{report['generated_tokens']} tokens at {report['tokens_per_second']:.1f} tok/s",
        f"prompt {report['prompt_tokens']} tokens at {report['prompt_tokens_per_second']:.1f} tok/s",
    ]
    if "draft_time" in report:
        parts.append(f"draft {report['draft_time']:.2f} s, verify {report['verify_time']:.2f} s")
    parts += [f"peak {report['peak_memory_gb']:.3f} GB", report["dtype"]]
    line = f"route {report['route']} ({report['route_reason']}; router {report['router_latency_s'] * 1e3:.1f} ms)\n"
    line += " | ".join(parts)
    if "speedup" in report:
        identical = {True: "yes", False: "NO", None: "n/a (sampling)"}[report["exact"]]
        line += (
            f"\nplain mlx-lm {report['baseline_tokens_per_second']:.1f} tok/s | speedup {report['speedup']:.2f}x | "
            f"identical tokens: {identical}"
        )
    if "acceptance_rate" in report:
        line += (
            f"\nproposals accepted {report['acceptance_rate']:.1%} ({report['sampling']['acceptance']}) | expected: "
            f"speculative sampling {report['expected_acceptance_rate']:.1%}, token matching "
            f"{report['expected_match_acceptance_rate']:.1%}"
        )
    return line


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = run(args)
    except DFlashError as e:
        print(f"dflash-mlx: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report))
    else:
        print(summary_line(report), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
