"""The benchmark report: report.json (everything), report.md (tables for a README), PNG charts,
and one line per run appended to a history file."""

import json
from pathlib import Path
from typing import Optional

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .bench import DFLASH, MLX_SPECULATIVE, PLAIN, method_name
from .loops import MAX_PERIOD, MIN_RUN

SCHEMA_VERSION = 1
SPEEDUP_CHART, ACCEPTANCE_CHART = "speedup.png", "acceptance.png"


def build_report(config: dict, environment: dict, results: dict) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "summary": summarize(results["methods"]),
        "environment": environment,
        "config": config,
        **results,
    }


def summarize(methods: dict) -> dict:
    dflash = methods[DFLASH]
    summary = {
        "exact_match_rate": dflash["exact_match_rate"],
        "mean_acceptance": dflash["mean_acceptance"],
        "speedup_median": dflash["speedup"]["median"],
        "speedup_min": dflash["speedup"]["min"],
        "speedup_max": dflash["speedup"]["max"],
        "ideal_speedup": dflash.get("ideal_speedup"),
        "tokens_per_second_median": dflash["tokens_per_second"]["median"],
        "plain_tokens_per_second_median": methods[PLAIN]["tokens_per_second"]["median"],
        "mlx_speculative": None,
    }
    if MLX_SPECULATIVE in methods:
        mlx = methods[MLX_SPECULATIVE]
        summary["mlx_speculative"] = {
            "exact_match_rate": mlx["exact_match_rate"],
            "mean_acceptance": mlx["mean_acceptance"],
            "speedup_median": mlx["speedup"]["median"],
        }
    return summary


def write_report(report: dict, out: Path, history: Optional[Path] = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    write_speedup_chart(report, out / SPEEDUP_CHART)
    write_acceptance_chart(report, out / ACCEPTANCE_CHART)
    (out / "report.md").write_text(markdown(report))
    if history is not None:
        append_history(report, history)


def write_files(out: Path, report: dict, text: str) -> None:
    """A subcommand's report.json and its report.md `text`, in `out`; says where."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(text)
    print(f"report: {out / 'report.md'}")


def append_history(report: dict, history: Path) -> None:
    environment, config = report["environment"], report["config"]
    line = {
        "time": environment["time"],
        "git_commit": environment["git_commit"],
        "git_dirty": environment["git_dirty"],
        "command": config["command"],
        "target": config["target"],
        "draft": config["draft"],
        "suite_hash": environment["suite_hash"],
        "summary": report["summary"],
    }
    history.parent.mkdir(parents=True, exist_ok=True)
    with open(history, "a") as f:
        f.write(json.dumps(line, ensure_ascii=False) + "\n")


def speculative_methods(report: dict) -> list:
    return [name for name in report["methods"] if name != PLAIN]


def number(value, spec: str = ".2f", suffix: str = "") -> str:
    return "–" if value is None else f"{value:{spec}}{suffix}"


def with_range(figures: dict, spec: str = ".1f", suffix: str = "") -> str:
    return f"{number(figures['median'], spec, suffix)} ({number(figures['min'], spec)}–{number(figures['max'], spec)})"


def table(header: list, rows: list) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(report: dict) -> str:
    sections = [
        "# dflash-mlx benchmark",
        f"```\n{report['config']['command']}\n```",
        setup_section(report),
        summary_section(report),
        step_cost_section(report),
        variants_section(report),
        group_section(report),
        histogram_section(report),
        divergence_section(report),
        loop_section(report),
        f"![speedup]({SPEEDUP_CHART})\n\n![tokens per step]({ACCEPTANCE_CHART})",
    ]
    return "\n\n".join(section for section in sections if section) + "\n"


def setup_section(report: dict) -> str:
    environment, config = report["environment"], report["config"]
    models = []
    for role in ("target", "draft", "mlx_draft"):
        if config.get(role):
            hashes = ", ".join(
                f"{name} {digest[:12]}" for name, digest in environment["checkpoints"][role]["sha256"].items()
            )
            models.append(f"{role} `{config[role]}` (sha256 {hashes})")
    run = [
        f"{'temperature ' + str(config['temperature']) if config.get('temperature') else 'greedy'}, "
        f"up to {config['max_tokens']} new tokens",
        "chat template" if config["chat"] else "raw prompts",
        f"{config['repeats']} repeats after {config['warmup']} warmup",
        f"DFlash block size {config.get('block_size') or 'of the drafter'}",
    ]
    if config.get("mlx_draft"):
        run.append(f"mlx-lm {config['num_draft_tokens']} draft tokens per step")
    if config.get("target_runs_quantized") is not None:
        run.append(f"target {'quantized' if config['target_runs_quantized'] else 'unquantized'} as loaded "
                   f"(--dequantize {config['dequantize']})")  # fmt: skip
    if config.get("quantize_draft"):
        run.append(f"drafter quantized to {config['quantize_draft']} bits")
    commit = (environment["git_commit"] or "unknown")[:12]
    if environment["git_dirty"]:
        commit += " (uncommitted changes)"
    return (
        f"Models: {', '.join(models)}.\n\n"
        f"Suites: {', '.join(config['suites'])} ({len(report['prompts'])} prompts, "
        f"sha256 {environment['suite_hash'][:12]}); {', '.join(run)}.\n\n"
        f"Environment: mlx {environment['mlx']}, mlx-lm {environment['mlx_lm']}, {environment['device']} "
        f"({environment['device_name']}), BLAS {environment['blas']}, {environment['dtype']}, commit {commit}, "
        f"{environment['time']}."
    )


def summary_section(report: dict) -> str:
    rows = []
    for name, figures in report["methods"].items():
        loops = figures["loops"]
        rows.append(
            [
                method_name(name),
                with_range(figures["tokens_per_second"]),
                "1.00x" if name == PLAIN else with_range(figures["speedup"], ".2f", "x"),
                number(figures.get("mean_acceptance")),
                number(figures.get("exact_match_rate"), ".0%"),
                f"{number(loops['cycle_share'], '.0%')} ({loops['prompts_looping']}/{len(report['prompts'])} prompts)",
                number(figures["peak_memory_gb"], ".3g", " GB"),
            ]
        )
    header = [
        "Method",
        "tokens/s median (min–max)",
        "speedup median (min–max)",
        "tau",
        "exact match",
        "loop share",
        "peak memory",
    ]
    return (
        "## Summary\n\n"
        "Speedup: a method's tokens/s over plain decoding's in the same repeat (methods interleaved "
        "prompt by prompt), median and range over repeats. Loop share: the generated tokens inside "
        "cycles ([Loops](#loops)), and how many prompts' outputs fall into one.\n\n" + table(header, rows)
    )


def step_cost_section(report: dict) -> str:
    rows = [
        [
            method_name(name),
            number(dflash["plain_ms_per_token"]),
            number(dflash["draft_ms_per_step"]),
            number(dflash["verify_ms_per_step"]),
            number(dflash["other_ms_per_step"]),
            number(dflash["mean_acceptance"]),
            number(dflash["ideal_speedup"], ".2f", "x"),
            number(dflash["speedup"]["median"], ".2f", "x"),
        ]
        for name, dflash in report["methods"].items()
        if "ideal_speedup" in dflash
    ]
    if not rows:
        return ""
    header = [
        "method",
        "plain ms/token",
        "draft ms/step",
        "verify ms/step",
        "other ms/step",
        "tau",
        "ideal speedup",
        "measured speedup",
    ]
    return (
        "## DFlash step costs\n\n"
        "Ideal speedup = tau × plain time per token / (draft + verify time per step): what the measured "
        "tau and pass costs allow if the rest of the loop (other: detokenising, stop checks, Python) "
        "cost nothing.\n\n" + table(header, rows)
    )


def variants_section(report: dict) -> str:
    """Every DFlash variant against today's DFlash and against each other: the ratio of their
    tokens/s in the same repeat, median (min–max); and the block sizes each one ran."""
    variants = [name for name in report["methods"] if name.startswith(DFLASH)]
    if len(variants) < 2:
        return ""
    rows = []
    for name in variants:
        figures = report["methods"][name]
        blocks = ", ".join(f"{size}: {count}" for size, count in figures.get("block_size_histogram", {}).items())
        gains = [with_range(figures["gains"][other], ".2f", "x") if other != name else "–" for other in variants]
        rows.append([method_name(name), number(figures["mean_acceptance"]), blocks] + gains)
    header = ["variant", "tau", "block size: steps"] + [f"over {method_name(other)}" for other in variants]
    return (
        "## DFlash variants\n\n"
        f"{method_name(DFLASH)} is today's behaviour (the drafter's block size, speculative sampling when sampling). "
        "Gain: the row's tokens/s over the column's in the same repeat, median (min–max) over repeats.\n\n"
        + table(header, rows)
    )


def group_section(report: dict) -> str:
    speculative = speculative_methods(report)
    header = ["Group", "prompts", "plain tokens/s"]
    for name in speculative:
        header += [f"{method_name(name)} tokens/s", "speedup", "tau", "exact"]
    rows = []
    for group, entry in report["groups"].items():
        row = [group, entry["prompts"], number(entry["methods"][PLAIN]["tokens_per_second"]["median"], ".1f")]
        for name in speculative:
            figures = entry["methods"][name]
            row += [
                number(figures["tokens_per_second"]["median"], ".1f"),
                number(figures["speedup"]["median"], ".2f", "x"),
                number(figures["mean_acceptance"]),
                number(figures["exact_match_rate"], ".0%"),
            ]
        rows.append(row)
    return "## By suite and category\n\n" + table(header, rows)


def histogram_section(report: dict) -> str:
    speculative = speculative_methods(report)
    histograms = [report["methods"][name]["acceptance_histogram"] for name in speculative]
    lengths = sorted({int(length) for histogram in histograms for length in histogram})
    rows = [[length] + [histogram.get(str(length), 0) for histogram in histograms] for length in lengths]
    header = ["tokens/step"] + [f"{method_name(name)} steps" for name in speculative]
    return "## Tokens per verify step\n\n" + table(header, rows)


def divergence_section(report: dict) -> str:
    if report["config"].get("temperature"):
        return ""  # sampled runs agree with plain decoding in distribution, not token for token
    rows = []
    for prompt in report["prompts"]:
        for name in speculative_methods(report):
            record = prompt["methods"][name].get("divergence")
            if record is not None:
                rows.append(
                    [
                        f"{prompt['suite']}/{prompt['id']}",
                        method_name(name),
                        record["position"],
                        f"{record['reference_token']} {json.dumps(record['reference_text'])}",
                        f"{record['candidate_token']} {json.dumps(record['candidate_text'])}",
                        number(record["gap"], ".4g"),
                        record["verdict"],
                    ]
                )
    title = "## Divergences from plain decoding\n\n"
    if not rows:
        return title + "None: every method reproduced plain greedy decoding token for token."
    header = ["prompt", "method", "position", "plain token", "method token", "top-1/top-2 gap", "verdict"]
    return (
        title + f"A gap up to {report['config']['tie_gap']} with the two tokens the target's top two is a near-tie "
        "that rounding can flip; anything else is a mismatch to investigate.\n\n" + table(header, rows)
    )


def loop_section(report: dict) -> str:
    """The prompts on which some method's output falls into a cycle: per method, the position in
    the output where its first cycle starts and the share of the output inside cycles."""
    names = list(report["methods"])
    rows = []
    for prompt in report["prompts"]:
        loops = [prompt["methods"][name]["loops"] for name in names]
        if any(entry["prompts_looping"] for entry in loops):
            rows.append([f"{prompt['suite']}/{prompt['id']}"] + [first_cycle_and_share(entry) for entry in loops])
    title = (
        "## Loops\n\n"
        f"A cycle: a pattern of 1 to {MAX_PERIOD} tokens that occurs at least three times in a row, its "
        f"repeats after the first occurrence spanning at least {MIN_RUN} tokens (eval/loops.py). First cycle: "
        "where in the output the first one starts; share: the output's tokens inside cycles. A drafter "
        "predicts a cycle trivially, so tau and speedup on outputs that loop overstate those on text that "
        "does not.\n\n"
    )
    if not rows:
        return title + "None: no method's output fell into a cycle."
    header = ["prompt"] + [f"{method_name(name)} first cycle (share)" for name in names]
    return title + table(header, rows)


def first_cycle_and_share(loops: dict) -> str:
    return f"{number(loops['first_cycle_median'], 'd')} ({number(loops['cycle_share'], '.0%')})"


def write_speedup_chart(report: dict, path: Path) -> None:
    """Median speedup over plain decoding (min–max whiskers) per suite and category, and over
    all prompts when there are several suites; DFlash's ideal speedup as a marker on its bar."""
    speculative = speculative_methods(report)
    columns = [(group, entry["methods"]) for group, entry in report["groups"].items()]
    if len(report["config"]["suites"]) > 1:
        columns.insert(0, ("all", report["methods"]))
    figure = Figure(figsize=(max(6, 1.1 * len(columns) + 2), 4))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    width = 0.8 / len(speculative)
    for k, name in enumerate(speculative):
        xs = [i + (k - (len(speculative) - 1) / 2) * width for i in range(len(columns))]
        speedups = [methods[name]["speedup"] for _, methods in columns]
        medians = [s["median"] or 0 for s in speedups]
        whiskers = [
            [m - (s["min"] or m) for m, s in zip(medians, speedups)],
            [(s["max"] or m) - m for m, s in zip(medians, speedups)],
        ]
        axes.bar(xs, medians, width, yerr=whiskers, capsize=3, label=method_name(name))
        if name == DFLASH:
            ideals = [methods[name].get("ideal_speedup") for _, methods in columns]
            points = [(x, ideal) for x, ideal in zip(xs, ideals) if ideal is not None]
            if points:
                axes.scatter(*zip(*points), marker="D", s=30, color="crimson", label="DFlash ideal", zorder=3)
    axes.axhline(1.0, color="gray", linestyle="--", linewidth=1)
    axes.set_xticks(range(len(columns)), [label for label, _ in columns], rotation=30, ha="right")
    axes.set_ylabel("speedup over plain mlx-lm (x)")
    axes.set_title("Speedup by suite and category")
    axes.legend(loc="upper left", bbox_to_anchor=(1, 1))
    figure.savefig(path, dpi=120, bbox_inches="tight")


def write_acceptance_chart(report: dict, path: Path) -> None:
    """Share of verify steps by tokens committed per step, per speculative method."""
    speculative = speculative_methods(report)
    figure = Figure(figsize=(7, 4))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    width = 0.8 / len(speculative)
    longest = 1
    for k, name in enumerate(speculative):
        figures = report["methods"][name]
        histogram = {int(length): count for length, count in figures["acceptance_histogram"].items()}
        steps = sum(histogram.values()) or 1
        xs = [length + (k - (len(speculative) - 1) / 2) * width for length in histogram]
        label = f"{method_name(name)} (tau {number(figures['mean_acceptance'])})"
        axes.bar(xs, [count / steps for count in histogram.values()], width, label=label)
        longest = max([longest, *histogram])
    axes.set_xticks(range(1, longest + 1))
    axes.set_xlabel("tokens committed per verify step")
    axes.set_ylabel("share of steps")
    axes.set_title("Acceptance: tokens per step")
    axes.legend(loc="upper left", bbox_to_anchor=(1, 1))
    figure.savefig(path, dpi=120, bbox_inches="tight")
