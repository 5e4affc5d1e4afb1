"""`dflash-eval curves`: drafter training runs side by side, from their RUN/metrics.jsonl
(`dflash-train run`): the held-out tau at each evaluation and its ratio to the first run's, the
block loss and accuracy averaged over the last steps, and the time a step took.

    dflash-eval curves runs/smollm2/drafter-run runs/smollm2/drafter2-run --names DFlash,"DFlash 2" \\
        --out benchmarks/smollm2-drafters

Writes report.md and curves.png (tau, loss and accuracy against the step). A DFlash 2 run's loss
is its block loss alone, comparable with DFlash's.
"""

import json
import shlex
import statistics
from pathlib import Path
from typing import Dict, List

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from adapters.errors import DFlashError

from .options import at_least
from .report import number, table

STEP_FIELDS = {"step", "loss", "accuracy", "step_time"}  # what every line of a run's metrics has


def add_curves(subcommands) -> None:
    parser = subcommands.add_parser("curves", help="drafter training runs side by side: tau, loss, accuracy, step time",
                                    description=__doc__.strip().splitlines()[0])  # fmt: skip
    parser.add_argument("runs", nargs="+", type=Path, help="run directories of `dflash-train run`")
    parser.add_argument("--names", type=lambda text: text.split(","),
                        help="comma-separated labels, one per run (default: the directories' names)")  # fmt: skip
    parser.add_argument("--window", type=at_least(1), default=25,
                        help="steps that the loss and accuracy are averaged over (default 25)")  # fmt: skip
    parser.add_argument("--out", type=Path, required=True, help="directory for report.md and curves.png")
    parser.set_defaults(run=run_curves)


def read_metrics(run: Path) -> List[dict]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        raise DFlashError(f"'{run}' has no metrics.jsonl: pass the run directories of `dflash-train run`")
    records = []
    for line_number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise DFlashError(f"{path}, line {line_number}: not a JSON record") from None
    if not records or not all(isinstance(r, dict) and STEP_FIELDS <= r.keys() for r in records):
        raise DFlashError(f"{path}: not the metrics of `dflash-train run` (records of {', '.join(sorted(STEP_FIELDS))})")
    return records


def trailing_mean(values: List[float], window: int) -> np.ndarray:
    """The mean of each value and the window - 1 before it (fewer at the start)."""
    sums = np.cumsum(np.concatenate([[0.0], values]))
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - window, 0)
    return (sums[ends] - sums[starts]) / (ends - starts)


def summary_rows(runs: Dict[str, List[dict]], window: int, upto: int) -> list:
    rows = []
    for name, records in runs.items():
        compared = [r for r in records if upto - window < r["step"] <= upto]
        taus = [r for r in records if "tau" in r]
        rows.append([
            name,
            records[-1]["step"],
            number(statistics.median(r["step_time"] for r in records), ".2f", " s"),
            number(statistics.mean(r["loss"] for r in compared), ".3f"),
            number(statistics.mean(r["accuracy"] for r in compared), ".3f"),
            f"{taus[-1]['tau']:.2f} (step {taus[-1]['step']})" if taus else number(None),
        ])  # fmt: skip
    return rows


def tau_rows(runs: Dict[str, List[dict]]) -> list:
    """One row per evaluated step: each run's tau there, and its ratio to the first run's."""
    taus = {name: {r["step"]: r["tau"] for r in records if "tau" in r} for name, records in runs.items()}
    first, *others = taus.values()
    rows = []
    for step in sorted(set().union(*(t.keys() for t in taus.values()))):
        ratios = [t[step] / first[step] if step in t and step in first else None for t in others]
        rows.append([step] + [number(t.get(step)) for t in taus.values()] + [number(r, ".2f", "x") for r in ratios])
    return rows


def markdown(runs: Dict[str, List[dict]], window: int, command: str) -> str:
    names = list(runs)
    upto = min(records[-1]["step"] for records in runs.values())  # every run's budget reaches it
    steps = f"steps {max(upto - window, 0) + 1}-{upto}"
    summary = ["run", "steps", "median step time", f"loss ({steps})", f"accuracy ({steps})", "last held-out tau"]
    taus = ["step"] + [f"tau {name}" for name in names] + [f"{name} / {names[0]}" for name in names[1:]]
    return "\n\n".join([
        "# Drafter training runs",
        f"```\n{command}\n```",
        "Held-out tau: the mean tokens a DFlash step commits on the runs' held-out prompts, measured "
        "by `dflash-train run` every `--eval-every` steps. Loss: the weighted block cross-entropy; "
        "accuracy: the drafter's top-1 over every predicted block position; both averaged over the "
        "same steps of every run, the last that all of them reached.",
        table(summary, summary_rows(runs, window, upto)),
        "## Held-out tau by step\n\n" + table(taus, tau_rows(runs)),
        "![curves](curves.png)",
    ]) + "\n"  # fmt: skip


def chart(runs: Dict[str, List[dict]], window: int, path: Path) -> None:
    figure = Figure(figsize=(12, 3.6))
    tau_axes, loss_axes, accuracy_axes = figure.subplots(1, 3)
    for name, records in runs.items():
        steps = [r["step"] for r in records]
        evaluated = [r for r in records if "tau" in r]
        tau_axes.plot([r["step"] for r in evaluated], [r["tau"] for r in evaluated], marker="o", label=name)
        loss_axes.plot(steps, trailing_mean([r["loss"] for r in records], window), label=name)
        accuracy_axes.plot(steps, trailing_mean([r["accuracy"] for r in records], window), label=name)
    loss_axes.set_yscale("log")  # a fresh drafter starts far above where it trains to
    for axes, label in [(tau_axes, "held-out tau"), (loss_axes, f"loss (mean of {window} steps)"),
                        (accuracy_axes, f"block accuracy (mean of {window} steps)")]:  # fmt: skip
        axes.set_xlabel("step")
        axes.set_ylabel(label)
        axes.legend()
    figure.tight_layout()
    FigureCanvasAgg(figure).print_png(str(path))


def run_curves(args, argv: List[str]) -> None:
    names = args.names or [run.name for run in args.runs]
    if len(names) != len(args.runs) or len(set(names)) != len(names):
        raise DFlashError(
            f"--names gives {len(names)} labels for {len(args.runs)} runs: give each run a label of its own"
        )
    runs = {name: read_metrics(run) for name, run in zip(names, args.runs)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.md").write_text(markdown(runs, args.window, shlex.join(["dflash-eval"] + argv)))
    chart(runs, args.window, args.out / "curves.png")
    print(f"wrote {args.out / 'report.md'} and {args.out / 'curves.png'}")
