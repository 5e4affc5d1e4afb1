"""`dflash-eval`: one subcommand per benchmark kind.

    dflash-eval bench --suite offline --out runs/bench     # speed + exactness report

A new kind is a function that adds its subparser and sets `run`, listed in SUBCOMMANDS.
"""

import argparse
import shlex
import sys
from dataclasses import asdict
from pathlib import Path
from typing import List, Optional

import mlx.core as mx

import dflash
from adapters.errors import DFlashError
from adapters.loading import DEQUANTIZE_CHOICES, DTYPE_CHOICES, load_target, quantized_layers
from dflash.acceptance import ACCEPTANCE_RULES
from dflash.block_size import AUTO
from dflash.commands import run_command
from dflash.engine import check_offline_default
from dflash.loading import DRAFT_BITS, load_draft_for
from dflash.sampling import SamplingSettings

from .batch import add_batch
from .bench import Variant, analyse, dflash_variants, method_name, run_benchmark
from .candidates import add_candidates
from .curves import add_curves
from .environment import environment
from .exactness import TIE_GAP
from .options import add_pair_arguments, at_least, positive_ints
from .prefix_cache import add_prefix_cache
from .report import build_report, number, write_report
from .router import add_router
from .serve_load import add_serve_load
from .steps import add_steps
from .suites import DEFAULT_SUITES, HUB_SUITES, PACKAGED_SUITES, SHIPPED_SUITES, load_suites, suite_hash
from .target_loops import add_loops


def add_bench(subcommands) -> None:
    parser = subcommands.add_parser(
        "bench",
        help="speed and exactness of DFlash against plain and mlx-lm speculative decoding",
        description="Run a prompt suite with plain mlx-lm greedy decoding, DFlash and (with --mlx-draft-model) "
        "mlx-lm's speculative decoding on the same target; write report.json, report.md and charts to --out.",
    )
    add_pair_arguments(parser)
    parser.add_argument(
        "--compare-draft-model", action="append", default=[], metavar="PATH",
        help="another DFlash drafter of the same target, run beside --draft-model as a method of its own with the "
        "drafter's settings (its name: 'dflash draft=PATH'); repeat for several",
    )  # fmt: skip
    parser.add_argument(
        "--mlx-draft-model", help="small mlx-lm model sharing the target's tokenizer, for mlx-lm's speculative decoding"
    )
    parser.add_argument(
        "--suite",
        action="append",
        help=f"{', '.join([*SHIPPED_SUITES, *PACKAGED_SUITES])} (offline), {', '.join(HUB_SUITES)} (need a network) "
        "or a JSONL file of "
        '{"prompt": ..., "id": ...} lines; repeat for several (default: ' + ' and '.join(DEFAULT_SUITES) + ')',
    )
    parser.add_argument("--limit", type=at_least(1), help="run only the first N prompts of each suite")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"), help="report directory (default: runs/bench)")
    parser.add_argument("--history", type=Path, help="append one JSON line with this run's summary to this file")
    parser.add_argument("--max-tokens", type=at_least(1), default=256, help="new tokens per prompt (default: 256)")
    parser.add_argument("--repeats", type=at_least(1), default=3, help="timed runs of every method (default: 3)")
    parser.add_argument("--warmup", type=at_least(0), default=1, help="untimed runs of every method first (default: 1)")
    parser.add_argument(
        "--block-size", type=listed(block_size), default=[],
        help="DFlash block sizes to run beside today's (the drafter's), comma-separated, e.g. 2,4,auto; auto "
        "chooses every step's block from the measured step costs and acceptance",
    )
    parser.add_argument(
        "--draft-window", type=positive_ints, default=[],
        help="drafter context windows to run beside today's (the whole context), comma-separated, e.g. 16,64: "
        "the drafter sees only the last N committed positions",
    )
    parser.add_argument(
        "--without-selector", action="store_true",
        help="also run the DFlash 2 drafter proposing its own argmax instead of its selector's path: what the "
        "selector adds",
    )
    parser.add_argument(
        "--temperature", type=float, default=0.0,
        help="0 (default): greedy, with exactness against plain decoding; above 0 every method samples, each "
        "prompt and repeat from the same seed",
    )
    parser.add_argument(
        "--acceptance", type=listed(acceptance_rule), default=["speculative"],
        help=f"acceptance rules at --temperature > 0, comma-separated, of {', '.join(ACCEPTANCE_RULES)}; today's "
        "(speculative) always runs",
    )
    parser.add_argument(
        "--num-draft-tokens", type=at_least(1), default=3, help="mlx-lm speculative draft tokens per step (default: 3)"
    )
    parser.add_argument(
        "--no-chat", dest="chat", action="store_false", help="feed prompts raw, without the chat template"
    )
    parser.add_argument(
        "--dtype", default="auto", choices=DTYPE_CHOICES, help="(auto: float32 on CPU)"
    )
    parser.add_argument(
        "--dequantize", default="auto", choices=DEQUANTIZE_CHOICES,
        help="a quantized target (and --mlx-draft-model): auto dequantizes on the CPU backend when it fits in memory; "
        "every method decodes the same loaded target",
    )
    parser.add_argument(
        "--quantize-draft", type=int, choices=DRAFT_BITS, metavar="BITS",
        help="quantize the DFlash drafter to BITS bits when loading it",
    )
    parser.add_argument(
        "--tie-gap",
        type=float,
        help="largest top-1/top-2 logit gap counted as a near-tie at a divergence "
        f"(default by dtype: {', '.join(f'{k} {v}' for k, v in TIE_GAP.items())})",
    )
    parser.add_argument("--seed", type=int, default=0, help="MLX random seed, recorded in the report (default: 0)")
    parser.set_defaults(run=bench)


def listed(parse):
    def items(text: str) -> list:
        return [parse(item) for item in text.split(",")]

    return items


def block_size(text: str):
    return text if text == AUTO else at_least(2)(text)


def acceptance_rule(text: str) -> str:
    if text not in ACCEPTANCE_RULES:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(ACCEPTANCE_RULES)}, got {text!r}")
    return text


SUBCOMMANDS = [add_bench, add_router, add_serve_load, add_batch, add_steps, add_prefix_cache, add_curves,
               add_loops, add_candidates]


def load_mlx_draft(path: str, tokenizer, dtype: str, dequantize: str):
    # In the target's dtype, dequantized as the target is: it computes as the target does.
    draft_model, draft_tokenizer = load_target(path, dtype, what="--mlx-draft-model", dequantize=dequantize)
    if draft_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise DFlashError(f"mlx draft model '{path}' does not share the target's tokenizer")
    return draft_model


def bench(args, argv: List[str]) -> None:
    suites = args.suite or DEFAULT_SUITES
    prompts = load_suites(suites, args.limit)
    check_offline_default((args.target_model, args.draft_model), "pass --target-model and --draft-model")
    mx.random.seed(args.seed)
    model, tokenizer = dflash.load(args.target_model, args.draft_model, dtype=args.dtype, dequantize=args.dequantize,
                                   draft_bits=args.quantize_draft)  # fmt: skip
    sampling = SamplingSettings(temperature=args.temperature)
    if args.mlx_draft_model and not sampling.greedy:
        raise DFlashError("--mlx-draft-model runs greedy only: leave it out with --temperature > 0")
    mlx_draft_model = None
    if args.mlx_draft_model:
        mlx_draft_model = load_mlx_draft(args.mlx_draft_model, tokenizer, model.dtype, args.dequantize)
    tie_gap = args.tie_gap if args.tie_gap is not None else TIE_GAP[model.dtype]
    variants = dflash_variants(args.block_size, args.acceptance, model.block_size, sampling.greedy, args.draft_window)
    compared = {path: load_draft_for(model.adapter, path, args.quantize_draft) for path in args.compare_draft_model}
    variants += [Variant(draft_model=path) for path in compared]
    if args.without_selector:
        if not model.draft.config.dflash2:
            raise DFlashError(f"--without-selector needs a DFlash 2 drafter; '{args.draft_model}' has no path selector")
        variants.append(Variant(selector=False))
    checkpoints = {"target": args.target_model, "draft": args.draft_model, "mlx_draft": args.mlx_draft_model}
    env = environment(checkpoints, model.dtype, suite_hash(prompts), args.seed)

    benchmark = run_benchmark(
        model,
        tokenizer,
        prompts,
        max_tokens=args.max_tokens,
        repeats=args.repeats,
        warmup=args.warmup,
        chat=args.chat,
        variants=variants,
        compared_drafters=compared,
        sampling=sampling,
        mlx_draft_model=mlx_draft_model,
        num_draft_tokens=args.num_draft_tokens,
    )
    config = {
        "command": shlex.join(["dflash-eval"] + argv),
        "target": args.target_model,
        "draft": args.draft_model,
        "mlx_draft": args.mlx_draft_model,
        "compared_drafts": args.compare_draft_model,
        "suites": suites,
        "limit": args.limit,
        "max_tokens": args.max_tokens,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "block_sizes": args.block_size,
        "draft_windows": args.draft_window,
        "temperature": args.temperature,
        "acceptance": args.acceptance,
        "variants": {variant.name: asdict(variant) for variant in variants},
        "num_draft_tokens": args.num_draft_tokens,
        "chat": args.chat,
        "tie_gap": tie_gap,
        "dequantize": args.dequantize,
        "target_runs_quantized": bool(quantized_layers(model.target)),
        "quantize_draft": args.quantize_draft,
    }
    report = build_report(config, env, analyse(model, tokenizer, prompts, benchmark, tie_gap, sampling.greedy))
    write_report(report, args.out, args.history)
    print_summary(report, args.out)


def print_summary(report: dict, out: Path) -> None:
    for name, figures in report["methods"].items():
        line = f"{method_name(name):>24}: {number(figures['tokens_per_second']['median'], '.1f')} tokens/s"
        if "speedup" in figures:
            line += (
                f", speedup {number(figures['speedup']['median'], '.2f', 'x')}, "
                f"tau {number(figures['mean_acceptance'])}, exact {number(figures['exact_match_rate'], '.0%')}"
            )
        if "block_size_histogram" in figures and len(figures["block_size_histogram"]) > 1:
            line += f", blocks {figures['block_size_histogram']}"
        print(line)
    print(f"report: {out / 'report.md'}")


def run(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="dflash-eval", description="dflash-mlx benchmarks")
    subcommands = parser.add_subparsers(dest="command", required=True)
    for add_subcommand in SUBCOMMANDS:
        add_subcommand(subcommands)
    args = parser.parse_args(argv)
    args.run(args, argv)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    return run_command("dflash-eval", lambda: run(sys.argv[1:] if argv is None else list(argv)))


if __name__ == "__main__":
    sys.exit(main())
