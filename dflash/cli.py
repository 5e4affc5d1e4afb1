"""`uv run dflash-mlx`: generate with a target and its DFlash drafter.

With no model arguments it runs the offline default: SmolLM2-135M-Instruct (dflash/presets.py) and
the drafter shipped for it in dflash/checkpoints.
"""

import argparse
import json
import sys
from dataclasses import asdict

from adapters.routing import FAST

from . import blas
from .acceptance import ACCEPTANCE_RULES
from .commands import BLOCK_SIZE_DEFAULT, add_model_options, block_size_option, engine_from, run_command
from .engine import ROUTE_CHOICES, Request
from .generate import GenerationResponse, collect
from .presets import DEFAULT_PROMPT
from .sampling import SamplingSettings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dflash-mlx", description=__doc__.strip().splitlines()[0])
    add_model_options(parser)
    gen = parser.add_argument_group("generation")
    gen.add_argument("--prompt", default=DEFAULT_PROMPT)
    gen.add_argument("--max-new-tokens", type=int, default=256)
    gen.add_argument("--block-size", type=block_size_option,
                     help="draft block size, or auto: chosen every step to maximise the expected tokens per second "
                     f"from the request's measured step costs and acceptance ({BLOCK_SIZE_DEFAULT})")
    gen.add_argument("--draft-window", type=int, metavar="N",
                     help="the drafter sees only the last N committed positions: its cost per step stops growing "
                     "with the context (default: all of them)")
    gen.add_argument("--chat", action=argparse.BooleanOptionalAction, default=True,
                     help="apply the target's chat template (default: on)")
    gen.add_argument("--thinking", action=argparse.BooleanOptionalAction, default=None,
                     help="the chat template's thinking mode (default: the family's, as its drafters were trained: "
                     "off for Qwen3, on for Qwen3.5/3.6)")
    gen.add_argument("--route", choices=ROUTE_CHOICES, default="expert",
                     help="expert: the target with its drafter (default); fast: the fast model alone; "
                     "auto: the router picks one per prompt")
    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--temperature", type=float, default=0.0,
                          help="0 (default): greedy, token for token what plain greedy decoding gives")
    sampling.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling, in (0, 1] (default 1: off)")
    sampling.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (default 0: off)")
    sampling.add_argument("--min-p", type=float, default=0.0,
                          help="drop tokens below min-p times the top token's probability, in [0, 1) (default 0: off)")
    sampling.add_argument("--seed", type=int, help="seed of the random draws: the same seed gives the same text")
    sampling.add_argument("--acceptance", choices=sorted(ACCEPTANCE_RULES), default=None,
                          help="how proposals are accepted at temperature > 0, all lossless: speculative sampling "
                          "(accepts with probability min(1, p/q)), match (accepts a proposal equal to the "
                          "target's own draw) or argmax (proposes the drafter's argmax, or a DFlash 2 drafter's "
                          "selector path, and accepts it with probability p); default: argmax for a DFlash 2 "
                          "drafter, speculative otherwise")
    out = parser.add_argument_group("output")
    out.add_argument("--stream", action="store_true", help="print text as it is verified")
    out.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    out.add_argument("--baseline", action="store_true",
                     help="also run plain mlx-lm decoding (greedy, or sampling with the same settings); report the "
                     "speedup and, when greedy, whether the tokens are identical")
    return parser


def run(args) -> dict:
    """Route the prompt, generate (printing as asked), and return the report."""
    settings = SamplingSettings(args.temperature, args.top_p, args.top_k, args.min_p)
    request = Request(args.prompt, args.max_new_tokens, settings, args.acceptance, args.seed, args.block_size,
                      args.draft_window, args.chat, args.thinking, args.route)  # fmt: skip
    engine = engine_from(args)
    decision = engine.route(request)
    prepared = engine.prepare(request, decision.route)
    baseline = args.baseline and decision.route != FAST
    if baseline:
        engine.warm_up(request)
    responses = engine.run(prepared)
    result = collect(printed(responses) if args.stream and not args.json else responses)
    if not args.stream and not args.json:
        print(result.text)
    if prepared.stops_at_window and result.finish_reason == "length":
        window = len(prepared.prompt_ids) + prepared.max_tokens
        print(f"dflash-mlx: stopped at the context window of {window} tokens, after {result.stats.generated_tokens} "
              f"of the {request.max_tokens} new tokens asked for", file=sys.stderr)  # fmt: skip

    stats = result.stats
    report = {"route": decision.route, "route_reason": decision.reason, "router_latency_s": decision.latency_s}
    if decision.route == FAST:
        report.update(fast_model=engine.fast_path, dtype=engine.fast.dtype)
    else:
        model, _ = engine.expert
        report.update(target_model=engine.target_path, draft_model=engine.draft_path, dtype=model.dtype,
                      block_size=prepared.block_size,
                      draft_window=args.draft_window)  # fmt: skip
    report.update(
        blas=blas.loaded or "reference",
        text=result.text,
        tokens=result.tokens,
        prompt_tokens=stats.prompt_tokens,
        generated_tokens=stats.generated_tokens,
        tokens_per_second=stats.generation_tps,
        prompt_tokens_per_second=stats.prompt_tps,
        peak_memory_gb=stats.peak_memory_gb,
        sampling={**asdict(settings), "seed": args.seed},
    )
    if decision.route == FAST:
        return report
    rule = args.acceptance or model.acceptance_rule
    report["sampling"]["acceptance"] = "greedy" if settings.greedy else rule
    report.update(acceptance_lengths=stats.acceptance_lengths, block_sizes=stats.block_sizes,
                  mean_acceptance=stats.mean_acceptance,
                  draft_time=stats.draft_time, verify_time=stats.verify_time)  # fmt: skip
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
    if baseline:
        plain = engine.baseline(request)
        report.update(
            baseline_tokens=plain.tokens,
            baseline_tokens_per_second=plain.stats.generation_tps,
            speedup=stats.generation_tps / plain.stats.generation_tps if plain.stats.generation_tps else 0.0,
            # Sampled runs agree in distribution (tests/test_sampling.py), not token for token.
            exact=plain.tokens == result.tokens if settings.greedy else None,
        )
    return report


def printed(responses):
    """Pass the responses on, printing their text as it comes."""
    response: GenerationResponse
    for response in responses:
        print(response.text, end="", flush=True)
        yield response
    print()


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


def generate_and_report(args) -> int:
    report = run(args)
    if args.json:
        print(json.dumps(report))
    else:
        print(summary_line(report), file=sys.stderr)
    return 0


def main(argv=None) -> int:
    return run_command("dflash-mlx", lambda: generate_and_report(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
