"""What `dflash-eval` reports of a DFlash 2 drafter: the step cost of its modules, and its
acceptance and speed without its selector beside those with it."""

import json

import pytest

from eval.cli import main as eval_main


def test_step_costs_report_what_the_dflash2_modules_add(dflash2_pair, tmp_path):
    target, draft = dflash2_pair("llama")
    out = tmp_path / "steps"
    eval_main(["steps", "--target-model", target, "--draft-model", draft, "--prompt-lengths", "12", "--repeats", "2",
               "--out", str(out)])  # fmt: skip
    result = json.loads((out / "report.json").read_text())["prompt_lengths"]["12"]
    assert {"draft", "draft_backbone", "selector", "verify"} <= set(result)
    assert result["dflash2_added_share"] == pytest.approx(result["selector_share"] + result["convolutions_share"])
    assert "selector / step" in (out / "report.md").read_text()


def test_the_bench_runs_a_dflash2_drafter_without_its_selector_beside_it(dflash2_pair, make_pair, tmp_path, capsys):
    target, draft = dflash2_pair("llama")
    suite = tmp_path / "mini.jsonl"
    suite.write_text('{"prompt": "def add(a, b):"}\n')
    argv = ["bench", "--target-model", target, "--suite", str(suite), "--without-selector", "--max-tokens", "12",
            "--repeats", "1", "--warmup", "0", "--no-chat", "--out", str(tmp_path / "report")]  # fmt: skip
    assert eval_main([*argv, "--draft-model", draft]) == 0
    methods = json.loads((tmp_path / "report" / "report.json").read_text())["methods"]
    assert set(methods) == {"plain", "dflash", "dflash no-selector"}
    assert methods["dflash no-selector"]["exact_match_rate"] == 1.0
    capsys.readouterr()
    dflash_target, dflash_draft = make_pair("llama")
    assert eval_main([*argv[:2], dflash_target, *argv[3:], "--draft-model", dflash_draft]) == 2
    assert capsys.readouterr().err.strip().endswith(f"--without-selector needs a DFlash 2 drafter; '{dflash_draft}' "
                                                    "has no path selector")  # fmt: skip
