"""End to end: `dflash-eval bench` on a tiny random pair and a tiny mlx-lm draft model."""

import json
import re

import pytest

from eval.cli import main
from eval.report import append_history
from tests.helpers import save_target, target_config

REPEATS = 2
MAX_TOKENS = 8


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory, make_pair):
    target, draft = make_pair(block_size=4)
    directory = tmp_path_factory.mktemp("bench")
    # A smaller random model with the same tokenizer, as mlx-lm's draft model.
    save_target(directory / "mlx-draft", target_config("llama", layers=2), seed=5)
    suite = directory / "mini.jsonl"
    suite.write_text(
        '{"prompt": "def add(a, b):", "id": "code", "category": "code"}\n{"prompt": "The quick brown fox"}\n'
    )
    out = directory / "report"
    main(
        [
            "bench",
            "--target-model", target,
            "--draft-model", draft,
            "--mlx-draft-model", str(directory / "mlx-draft"),
            "--suite", str(suite),
            "--max-tokens", str(MAX_TOKENS),
            "--repeats", str(REPEATS),
            "--no-chat",
            "--out", str(out),
            "--history", str(directory / "history.jsonl"),
        ]
    )  # fmt: skip
    return directory, out, json.loads((out / "report.json").read_text())


def test_report_schema(bench_run):
    _, _, report = bench_run
    summary = report["summary"]
    for key in ("exact_match_rate", "mean_acceptance", "speedup_median"):
        assert isinstance(summary[key], float)
    assert set(summary["mlx_speculative"]) == {"exact_match_rate", "mean_acceptance", "speedup_median"}

    env = report["environment"]
    for key in ("mlx", "mlx_lm", "device", "blas", "dtype", "git_commit", "suite_hash", "seed"):
        assert key in env
    assert env["dtype"] == "float32" and env["seed"] == 0 and len(env["suite_hash"]) == 64
    assert set(env["checkpoints"]) == {"target", "draft", "mlx_draft"}
    assert set(env["checkpoints"]["target"]["sha256"]) == {"model.safetensors", "config.json"}

    assert set(report["methods"]) == {"plain", "dflash", "mlx_speculative"}
    for figures in report["methods"].values():
        assert len(figures["tokens_per_second"]["repeats"]) == REPEATS
        assert (
            figures["tokens_per_second"]["min"]
            <= figures["tokens_per_second"]["median"]
            <= figures["tokens_per_second"]["max"]
        )
    dflash = report["methods"]["dflash"]
    for key in (
        "speedup",
        "mean_acceptance",
        "acceptance_histogram",
        "draft_ms_per_step",
        "verify_ms_per_step",
        "other_ms_per_step",
        "ideal_speedup",
    ):
        assert key in dflash
    assert sum(dflash["acceptance_histogram"].values()) == dflash["steps"]
    assert "ideal_speedup" not in report["methods"]["mlx_speculative"]  # mlx-lm does not split its step times

    assert set(report["groups"]) == {"mini", "mini/code"}
    assert report["groups"]["mini"]["prompts"] == 2
    assert [p["id"] for p in report["prompts"]] == ["code", "2"]
    assert report["config"]["command"].startswith("dflash-eval bench --target-model")


def test_methods_reproduce_plain_decoding(bench_run):
    """Greedy DFlash and mlx-lm speculative decoding are exact on the tiny pair (its logits
    are far from ties), and the bench cuts every method at the same stop tokens."""
    _, _, report = bench_run
    for prompt in report["prompts"]:
        lengths = {figures["generated_tokens"] for figures in prompt["methods"].values()}
        assert len(lengths) == 1
        assert prompt["methods"]["dflash"]["divergence"] is None
        assert prompt["methods"]["mlx_speculative"]["divergence"] is None
    assert report["summary"]["exact_match_rate"] == 1.0
    assert report["summary"]["mlx_speculative"]["exact_match_rate"] == 1.0


def test_markdown_charts_and_history(bench_run):
    directory, out, report = bench_run
    text = (out / "report.md").read_text()
    for heading in ("## Summary", "## DFlash step costs", "## By suite and category", "## Tokens per verify step"):
        assert heading in text
    assert "None: every method reproduced plain greedy decoding" in text
    for chart in ("speedup.png", "acceptance.png"):
        assert (out / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({chart})" in text

    history = directory / "history.jsonl"
    append_history(report, history)
    lines = [json.loads(line) for line in history.read_text().splitlines()]
    assert len(lines) == 2
    assert lines[0]["summary"] == report["summary"] and lines[0]["git_commit"] == report["environment"]["git_commit"]


def test_bad_input_is_one_line(tmp_path, capsys, monkeypatch):
    assert main(["bench", "--target-model", str(tmp_path), "--suite", str(tmp_path / "missing.jsonl")]) == 2
    error = capsys.readouterr().err
    assert error == f"dflash-eval: error: suite file {tmp_path / 'missing.jsonl'} not found\n"

    for module in ("eval.options", "dflash.engine"):  # bench's default, and the check of the offline default
        monkeypatch.setattr(f"{module}.DEFAULT_TARGET", tmp_path / "not-shipped-yet")
    pair = "--target-model and --draft-model"
    for command, remedy in [("bench", pair), ("candidates", pair), ("loops", "--target-model")]:
        assert main([command]) == 2
        assert re.fullmatch(rf"dflash-eval: error: the offline default target .* is not installed .*; pass {remedy}\n",
                            capsys.readouterr().err)  # fmt: skip


def test_another_drafter_runs_beside_the_first(tmp_path, make_pair):
    target, draft = make_pair(block_size=4)
    _, other = make_pair(block_size=2)  # the same target config: a drafter of block 2 for it
    suite = tmp_path / "mini.jsonl"
    suite.write_text('{"prompt": "def add(a, b):"}\n')
    out = tmp_path / "report"
    argv = ["bench", "--target-model", target, "--draft-model", draft, "--compare-draft-model", other,
            "--suite", str(suite), "--max-tokens", "6", "--repeats", "1", "--no-chat", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    compared = f"dflash draft={other}"
    assert set(report["methods"]) == {"plain", "dflash", compared}
    # each ran its own drafter (its own block size; shorter blocks only near the end), both exactly as plain decoding
    assert max(map(int, report["methods"]["dflash"]["block_size_histogram"])) == 4
    assert max(map(int, report["methods"][compared]["block_size_histogram"])) == 2
    assert report["methods"][compared]["exact_match_rate"] == report["methods"]["dflash"]["exact_match_rate"] == 1.0
    assert set(report["methods"][compared]["gains"]) == {"dflash"}
    assert report["config"]["compared_drafts"] == [other]
