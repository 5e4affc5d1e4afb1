"""`dflash-eval router`: how well the router routes, how fast it decides, and what each route costs
end to end.

    dflash-eval router --data eval/suites/routing_test.jsonl --json

DATA is any JSONL of {"prompt": ..., "label": "fast" | "expert", "category": optional}. The
report has the accuracy, the confusion matrix, the recall of expert prompts (the costly miss is an
expert prompt sent fast), the router's latency, what each stacked policy decides on its own,
per-category accuracy and the misrouted prompts. With the expert pair at hand (--e2e, on by default
when it is) it also times whole generations of the first --e2e-prompts simple (fast-labelled)
prompts in each mode: fast (the fast model alone), expert (target + DFlash drafter) and auto
(router, then the route it picks), models loaded beforehand.
"""

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Dict, List, Sequence

from adapters.errors import DFlashError
from adapters.loading import DTYPE_CHOICES
from adapters.routing import (
    DEFAULT_THRESHOLD,
    EXPERT,
    FAST,
    ROUTERS,
    LabeledPrompt,
    RouteDecision,
    Router,
    check_threshold,
    read_labeled_prompts,
)
from dflash.engine import Engine, Request
from dflash.generate import collect
from dflash.presets import DEFAULT_DRAFT, DEFAULT_FAST, DEFAULT_ROUTER_PROBE, DEFAULT_TARGET

DEFAULT_DATA = Path(__file__).resolve().parent / "suites" / "routing_test.jsonl"
THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def add_router(subcommands) -> None:
    parser = subcommands.add_parser(
        "router",
        help="routing accuracy, expert recall and latency of the router, and end-to-end time of each route",
        description=__doc__.strip().splitlines()[0],
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help='JSONL of {"prompt": ..., "label": "fast" | "expert"} (default: the shipped test split)',
    )
    parser.add_argument("--router", choices=ROUTERS, default="probe", help="what stacks under the guardrails")
    parser.add_argument("--fast-model", default=str(DEFAULT_FAST))
    parser.add_argument("--router-probe", default=str(DEFAULT_ROUTER_PROBE))
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help="P(expert) for the expert route")
    parser.add_argument("--target-model", default=str(DEFAULT_TARGET), help="expert target, for --e2e")
    parser.add_argument("--draft-model", default=str(DEFAULT_DRAFT), help="its DFlash drafter, for --e2e")
    parser.add_argument(
        "--e2e",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="time whole generations in each mode (default: when the expert pair exists)",
    )
    parser.add_argument("--e2e-prompts", type=int, default=3, help="simple prompts timed end to end (default 3)")
    parser.add_argument("--max-tokens", type=int, default=64, help="new tokens per end-to-end generation")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each end-to-end generation (median)")
    parser.add_argument(
        "--no-chat", dest="chat", action="store_false", help="feed prompts raw, without the chat template"
    )
    parser.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES)
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.set_defaults(run=router)


def rate(numerator: int, denominator: int):
    return numerator / denominator if denominator else None


def latency_ms(seconds: Sequence[float]) -> dict:
    ordered = sorted(s * 1e3 for s in seconds)
    return {
        "mean": statistics.fmean(ordered),
        "median": statistics.median(ordered),
        "p95": ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))],
        "max": ordered[-1],
    }


def routing_scores(examples: Sequence[LabeledPrompt], routes: Sequence[str]) -> dict:
    confusion = {label: {route: 0 for route in (FAST, EXPERT)} for label in (FAST, EXPERT)}
    for example, route in zip(examples, routes):
        confusion[example.label][route] += 1
    experts, fasts = sum(confusion[EXPERT].values()), sum(confusion[FAST].values())
    return {
        "accuracy": rate(confusion[FAST][FAST] + confusion[EXPERT][EXPERT], len(examples)),
        "expert_recall": rate(confusion[EXPERT][EXPERT], experts),
        "fast_recall": rate(confusion[FAST][FAST], fasts),
        "expert_precision": rate(confusion[EXPERT][EXPERT], confusion[FAST][EXPERT] + confusion[EXPERT][EXPERT]),
        "confusion": confusion,  # rows: label, columns: route
    }


def policy_scores(router: Router, examples: Sequence[LabeledPrompt]) -> Dict[str, dict]:
    """Each stacked policy on its own: how often it decides, how often it is right when it does,
    and the share of the expert prompts it sends to the expert."""
    scores = {}
    for policy in router.policies:
        decisions = [policy.decide(e.prompt) for e in examples]
        decided = [(e, d) for e, d in zip(examples, decisions) if d is not None]
        experts = sum(e.label == EXPERT for e in examples)
        scores[policy.name] = {
            "decided": len(decided),
            "accuracy_when_deciding": rate(sum(e.label == d.route for e, d in decided), len(decided)),
            "expert_recall": rate(sum(e.label == d.route == EXPERT for e, d in decided), experts),
        }
    return scores


def threshold_sweep(examples: Sequence[LabeledPrompt], decisions: Sequence[RouteDecision]) -> List[dict]:
    """The stacked router's scores had the scoring policy used each of THRESHOLDS instead: the
    guardrails' decisions stay, the scored prompts are re-decided from their P(expert)."""
    if all(d.expert_probability is None for d in decisions):
        return []
    sweep = []
    for threshold in THRESHOLDS:
        routes = [
            d.route if d.expert_probability is None else EXPERT if d.expert_probability >= threshold else FAST
            for d in decisions
        ]
        scores = routing_scores(examples, routes)
        sweep.append({"threshold": threshold, "accuracy": scores["accuracy"], "expert_recall": scores["expert_recall"]})
    return sweep


def evaluate_routing(router: Router, examples: Sequence[LabeledPrompt]) -> dict:
    for policy in router.policies:  # untimed: first-call costs (compilation, allocation)
        policy.decide(examples[0].prompt)
    decisions = [router.route(e.prompt) for e in examples]
    categories = sorted({e.category for e in examples if e.category})
    report = routing_scores(examples, [d.route for d in decisions])
    report.update(
        examples=len(examples),
        router_latency_ms=latency_ms([d.latency_s for d in decisions]),
        decided_by={name: sum(d.policy == name for d in decisions) for name in sorted({d.policy for d in decisions})},
        policies=policy_scores(router, examples),
        threshold_sweep=threshold_sweep(examples, decisions),
        by_category={
            category: {
                "examples": len(rows),
                "accuracy": rate(sum(e.label == d.route for e, d in rows), len(rows)),
            }
            for category in categories
            for rows in [[(e, d) for e, d in zip(examples, decisions) if e.category == category]]
        },
        misrouted=[
            {"prompt": e.prompt, "label": e.label, "route": d.route, "reason": d.reason}
            for e, d in zip(examples, decisions)
            if e.label != d.route
        ],
    )
    return report


def end_to_end(engine: Engine, prompts: Sequence[str], *, max_tokens: int, repeats: int, chat: bool) -> dict:
    """Median wall time of routing (auto only), encoding and generating each prompt in each mode."""

    def run(prompt: str, mode: str) -> int:
        request = Request(prompt, max_tokens, chat=chat, route=mode)
        route = engine.route(request).route
        return collect(engine.stream(request, route)).stats.generated_tokens

    modes = (FAST, EXPERT, "auto")
    results = {mode: {"seconds": [], "tokens": []} for mode in modes}
    for prompt in prompts:
        for mode in modes:
            run(prompt, mode)  # warmup
        times, tokens = {mode: [] for mode in modes}, {}
        for _ in range(repeats):  # modes interleaved, so a slow spell of the machine hits them alike
            for mode in modes:
                tic = time.perf_counter()
                tokens[mode] = run(prompt, mode)
                times[mode].append(time.perf_counter() - tic)
        for mode in modes:
            results[mode]["seconds"].append(statistics.median(times[mode]))
            results[mode]["tokens"].append(tokens[mode])
    report = {
        "prompts": list(prompts),
        "max_tokens": max_tokens,
        "repeats": repeats,
        "auto_routes": [engine.router.route(p).route for p in prompts],
    }
    for mode, runs in results.items():
        report[mode] = {
            "median_seconds": statistics.median(runs["seconds"]),
            "seconds": runs["seconds"],
            "tokens": runs["tokens"],
            "ms_per_token": 1e3 * sum(runs["seconds"]) / max(1, sum(runs["tokens"])),
        }
    report["expert_over_fast"] = report[EXPERT]["median_seconds"] / report[FAST]["median_seconds"]
    return report


def router(args, argv: List[str]) -> None:
    check_threshold(args.threshold)
    for option in ("e2e_prompts", "max_tokens", "repeats"):
        if getattr(args, option) < 1:
            raise DFlashError(f"--{option.replace('_', '-')} must be at least 1, got {getattr(args, option)}")
    examples = read_labeled_prompts(args.data)
    engine = Engine(args.target_model, args.draft_model, fast_model=args.fast_model, router=args.router,
                    router_probe=args.router_probe, route_threshold=args.threshold, dtype=args.dtype)  # fmt: skip
    report = {
        "data": str(args.data),
        "router": args.router,
        "threshold": args.threshold if args.router != "guardrails" else None,
        **evaluate_routing(engine.router, examples),
    }
    run_e2e = args.e2e if args.e2e is not None else Path(args.target_model).is_dir() and Path(args.draft_model).is_dir()
    report["end_to_end"] = None
    if run_e2e:
        simple = [e.prompt for e in examples if e.label == FAST][: args.e2e_prompts]
        if not simple:
            raise DFlashError(f"{args.data} has no fast-labelled prompt to time end to end")
        report["end_to_end"] = end_to_end(
            engine, simple, max_tokens=args.max_tokens, repeats=args.repeats, chat=args.chat
        )
    print(json.dumps(report, indent=2) if args.json else summary(report))


def number(value, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def summary(report: dict) -> str:
    latency = report["router_latency_ms"]
    confusion = report["confusion"]
    threshold = f" (threshold {report['threshold']:.2f})" if report["threshold"] is not None else ""
    lines = [
        f"router: guardrails{'' if report['router'] == 'guardrails' else ' + ' + report['router']}{threshold} "
        f"on {report['data']}: {report['examples']} prompts",
        f"accuracy {number(report['accuracy'])} | expert recall {number(report['expert_recall'])} | "
        f"fast recall {number(report['fast_recall'])} | expert precision {number(report['expert_precision'])}",
        f"router latency: median {latency['median']:.2f} ms, mean {latency['mean']:.2f} ms, "
        f"p95 {latency['p95']:.2f} ms, max {latency['max']:.2f} ms",
        "confusion (rows: label, columns: route):",
        f"  {'':>8} {'fast':>6} {'expert':>6}",
        *(f"  {label:>8} {confusion[label][FAST]:>6} {confusion[label][EXPERT]:>6}" for label in (FAST, EXPERT)),
        "decided by: " + ", ".join(f"{name} {count}" for name, count in report["decided_by"].items()),
    ]
    for name, scores in report["policies"].items():
        lines.append(
            f"{name} alone: decides {scores['decided']}, right when deciding "
            f"{number(scores['accuracy_when_deciding'])}, expert recall {number(scores['expert_recall'])}"
        )
    lines.append(
        "by category: "
        + ", ".join(
            f"{category} {number(scores['accuracy'], '.2f')}" for category, scores in report["by_category"].items()
        )
    )
    if report["threshold_sweep"]:
        lines.append(
            "threshold sweep (accuracy / expert recall): "
            + ", ".join(
                f"{row['threshold']:.1f}: {number(row['accuracy'], '.2f')}/{number(row['expert_recall'], '.2f')}"
                for row in report["threshold_sweep"]
            )
        )
    e2e = report["end_to_end"]
    if e2e:
        lines.append(
            f"end to end, {len(e2e['prompts'])} simple prompts, up to {e2e['max_tokens']} tokens, median of "
            f"{e2e['repeats']}:"
        )
        for mode in (FAST, EXPERT, "auto"):
            lines.append(
                f"  {mode:>6}: {e2e[mode]['median_seconds'] * 1e3:.1f} ms ({e2e[mode]['ms_per_token']:.2f} ms/token, "
                f"tokens {e2e[mode]['tokens']})"
            )
        lines.append(f"  expert / fast time: {e2e['expert_over_fast']:.2f}x; auto routed {e2e['auto_routes']}")
    misrouted = report["misrouted"]
    if misrouted:
        lines.append(f"misrouted ({len(misrouted)}; expert prompts sent fast first):")
        for row in sorted(misrouted, key=lambda r: r["label"] != EXPERT):
            lines.append(f"  [{row['label']} -> {row['route']}] {row['prompt'][:70]!r}: {row['reason']}")
    return "\n".join(lines)
