"""`dflash-eval batch`: aggregate throughput of batched DFlash against the same prompts generated
one after another with DFlash, and against mlx-lm's plain batched decoding of the target.

    dflash-eval batch --suite train/data/heldout_prompts.jsonl --batch-sizes 1,2,4,8,16,32 --out benchmarks/batch

For every batch size B, the first B prompts of the suites (cycled when B is larger) are generated
greedily by every method (batched DFlash at the drafter's block and at block "auto"), interleaved
over the repeats. A method's aggregate tokens/s is all its generated tokens over the wall time of
the whole batch, prompt processing included. Every batched DFlash sequence is checked against its
one-after-another DFlash output. Writes report.json, report.md and throughput.png.
"""

import shlex
import statistics
import time
from pathlib import Path
from typing import List

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from mlx_lm.generate import batch_generate as mlx_batch_generate

import dflash
from adapters.loading import DTYPE_CHOICES
from dflash.batch import batch_generate
from dflash.generate import encode_prompt

from .environment import environment
from .options import add_pair_arguments, at_least, positive_ints
from .report import write_files
from .suites import load_suites, suite_hash

METHODS = {
    "sequential": "DFlash, one after another",
    "batched": "DFlash batch_generate",
    "batched_auto": "DFlash batch_generate, block auto",
    "plain_batched": "plain mlx-lm batch_generate",
}
BATCHED = ("batched", "batched_auto")


def add_batch(subcommands) -> None:
    parser = subcommands.add_parser("batch", help="throughput of batched DFlash by batch size",
                                    description=__doc__.strip().splitlines()[0])  # fmt: skip
    add_pair_arguments(parser)
    parser.add_argument("--suite", action="append", help="prompt suites, as for bench (default: offline)")
    parser.add_argument("--batch-sizes", type=positive_ints, default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--max-tokens", type=at_least(1), default=128, help="new tokens per prompt")
    parser.add_argument("--repeats", type=at_least(1), default=3)
    parser.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES)
    parser.add_argument("--out", type=Path, default=Path("runs/batch"))
    parser.set_defaults(run=run_batch)


def timed(generate):
    tic = time.perf_counter()
    token_lists = generate()
    return token_lists, sum(map(len, token_lists)) / (time.perf_counter() - tic)


def run_batch(args, argv: List[str]) -> None:
    max_tokens, repeats = args.max_tokens, args.repeats
    prompts = load_suites(args.suite or ["offline"], None)
    model, tokenizer = dflash.load(args.target_model, args.draft_model, dtype=args.dtype)
    prompt_ids = [encode_prompt(model.adapter, tokenizer, p.prompt, chat=True) for p in prompts]

    methods = {
        "sequential": lambda ids: [dflash.generate(model, tokenizer, p, max_tokens).tokens for p in ids],
        "batched": lambda ids: [r.tokens for r in batch_generate(model, tokenizer, ids, max_tokens)],
        "batched_auto": lambda ids: [r.tokens for r in batch_generate(model, tokenizer, ids, max_tokens,
                                                                      block_size="auto")],  # fmt: skip
        "plain_batched": lambda ids: mlx_batch_generate(model.target, tokenizer, ids, max_tokens=max_tokens,
                                                        return_token_ids=True).token_ids,  # fmt: skip
    }
    for generate in methods.values():  # warm up
        generate(prompt_ids[:2])
    rows = []
    for size in args.batch_sizes:
        ids = [prompt_ids[i % len(prompt_ids)] for i in range(size)]
        speeds, exact = {name: [] for name in methods}, True
        for repeat in range(repeats):
            outputs = {}
            shift = repeat % len(methods)
            for name in list(methods)[shift:] + list(methods)[:shift]:
                outputs[name], tokens_per_second = timed(lambda: methods[name](ids))
                speeds[name].append(tokens_per_second)
            exact = exact and all(outputs[name] == outputs["sequential"] for name in BATCHED)
        row = {"batch_size": size, "exact": exact}
        for name, values in speeds.items():
            row[name] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
        for name in BATCHED:
            row[f"{name}_over_sequential"] = row[name]["median"] / row["sequential"]["median"]
            row[f"{name}_over_plain_batched"] = row[name]["median"] / row["plain_batched"]["median"]
        rows.append(row)
        print(f"batch {size}: " + ", ".join(f"{name} {row[name]['median']:.1f} tok/s" for name in methods)
              + f", exact {exact}", flush=True)  # fmt: skip

    report = {
        "config": {"command": shlex.join(["dflash-eval"] + argv), "target": args.target_model,
                   "draft": args.draft_model, "max_tokens": max_tokens, "repeats": repeats},
        "environment": environment({"target": args.target_model, "draft": args.draft_model}, model.dtype,
                                   suite_hash(prompts), 0),
        "rows": rows,
    }  # fmt: skip
    write_files(args.out, report, markdown(report))
    chart(rows, args.out / "throughput.png")


def markdown(report: dict) -> str:
    lines = [
        "# Batched DFlash throughput",
        "",
        f"`{report['config']['command']}`: {report['config']['max_tokens']} new tokens per prompt, "
        f"median (min-max) of {report['config']['repeats']} repeats, aggregate tokens/s over the whole batch.",
        "",
        "Exact: every batched sequence equals its one-after-another DFlash output.",
        "",
    ]
    ratios = [(f"{name}_over_{base}", f"{name} / {base}".replace("_", " "))
              for name in BATCHED for base in ("sequential", "plain_batched")]  # fmt: skip
    header = ["batch", *METHODS.values(), *(label for _, label in ratios), "exact"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in report["rows"]:
        cells = [f"{row[m]['median']:.1f} ({row[m]['min']:.1f}-{row[m]['max']:.1f})" for m in METHODS]
        cells += [f"{row[key]:.2f}x" for key, _ in ratios]
        lines.append(f"| {row['batch_size']} | " + " | ".join(cells) + f" | {'yes' if row['exact'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def chart(rows: List[dict], path: Path) -> None:
    figure = Figure(figsize=(6, 4))
    axes = figure.add_subplot()
    sizes = [row["batch_size"] for row in rows]
    for name, label in METHODS.items():
        axes.plot(sizes, [row[name]["median"] for row in rows], marker="o", label=label)
    axes.set_xscale("log", base=2)
    axes.set_xlabel("batch size")
    axes.set_ylabel("aggregate tokens/s")
    axes.legend()
    figure.tight_layout()
    FigureCanvasAgg(figure).print_png(str(path))
