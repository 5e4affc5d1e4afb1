"""Loops in generated tokens (eval/loops.py) and their figures in the benchmark report."""

import json

import pytest

import dflash
from adapters import adapter_for
from adapters.loading import load_target
from dflash.generate import encode_prompt
from eval.bench import DFLASH, PLAIN, Run, analyse
from eval.cli import main as eval_main
from eval.environment import environment
from eval.loops import MIN_RUN, cycle_spans, loop_figures
from eval.report import build_report, markdown
from eval.suites import Prompt, suite_hash

CODE = '''def parse(line, sep=","):
    """Split one line of a CSV file into its fields."""
    fields = line.split(sep)
    if not fields:
        return None
    if not fields:
        return None
    pairs = [(0, 1), (0, 1), (1, 0)]
    return [field.strip() for field in fields] + pairs
'''


def distinct(count: int, first: int = 100) -> list:
    return list(range(first, first + count))


def test_no_tokens_no_cycle():
    assert cycle_spans([]) == []
    empty = {"cycle_share": None, "prompts_looping": 0, "first_cycle_median": None}
    assert loop_figures([]) == empty
    assert loop_figures([[]]) == empty


def test_a_repeated_token_is_a_cycle_from_min_run_matches_on():
    assert cycle_spans([7] * MIN_RUN) == []  # MIN_RUN - 1 tokens equal to the one before
    assert cycle_spans([7] * (MIN_RUN + 1)) == [(0, MIN_RUN + 1)]
    assert cycle_spans(distinct(MIN_RUN - 1)) == []


def test_ordinary_code_is_no_loop():
    """Character by character: a repeated pair of lines, a short repeated pair, indentation."""
    assert cycle_spans([ord(c) for c in CODE]) == []
    assert cycle_spans(distinct(5) + [1, 2] * 3 + distinct(5, 200)) == []  # a pair three times: 4 matches


def test_a_repeated_pair_of_tokens_is_a_cycle():
    assert cycle_spans([1, 2] * 20) == [(0, 40)]
    assert loop_figures([[1, 2] * 20]) == {"cycle_share": 1.0, "prompts_looping": 1, "first_cycle_median": 0}


def test_a_repeated_line_is_a_cycle_from_three_occurrences_on():
    line = distinct(20, 200)
    assert cycle_spans(distinct(10) + line * 5) == [(10, 110)]
    assert cycle_spans(distinct(10) + line * 3 + distinct(5, 300)) == [(10, 70)]
    assert cycle_spans(distinct(10) + line * 2 + line[:19] + distinct(5, 300)) == []


def test_a_cycle_starting_mid_way():
    tokens = distinct(30) + [1, 2] * 20 + distinct(10, 300)
    assert cycle_spans(tokens) == [(30, 70)]
    assert loop_figures([tokens]) == {"cycle_share": 0.5, "prompts_looping": 1, "first_cycle_median": 30}
    # A cycle cut short by the end of the output keeps its last, partial occurrence.
    assert cycle_spans(distinct(30) + [1, 2, 3] * 7 + [1]) == [(30, 52)]


def test_overlapping_cycles_count_their_tokens_once():
    """[x] * 20 then [x, y, z] * 10: period 1 covers 0..21, period 3 covers 20..50 (and periods
    2, 6, 9, ... the same stretches again)."""
    tokens = [1] * 20 + [1, 2, 3] * 10
    assert cycle_spans(tokens) == [(0, 50)]
    assert loop_figures([tokens])["cycle_share"] == 1.0


def test_figures_over_several_outputs_are_token_weighted():
    outputs = [distinct(30) + [1, 2] * 20 + distinct(10, 300), distinct(20), [5] * 20, distinct(60) + [9] * 40]
    figures = loop_figures(outputs)
    assert figures["cycle_share"] == pytest.approx((40 + 20 + 40) / (80 + 20 + 20 + 100))
    assert figures["prompts_looping"] == 3
    assert figures["first_cycle_median"] == 30  # of 30, 0 and 60


@pytest.fixture(scope="module")
def loop_report(make_pair):
    """A hand-made benchmark of two prompts on a tiny pair: plain and DFlash generate the same
    tokens, which fall into a cycle on the first prompt after 30 tokens and never on the second."""
    target, draft = make_pair(block_size=4)
    model, tokenizer = dflash.load(target, draft)
    prompts = [Prompt("loop", "tiny", "def add(a, b):", "code"), Prompt("plain", "tiny", "The quick brown fox")]
    outputs = [distinct(30) + [1, 2] * 20 + distinct(10, 300), distinct(80, 200)]
    runs = {
        name: [[Run(tokens, 0.05, [4] * 20, draft_time=0.01, verify_time=0.02) for tokens in outputs]]
        for name in (PLAIN, DFLASH)
    }
    prompt_ids = [encode_prompt(model.adapter, tokenizer, prompt.prompt, False) for prompt in prompts]
    results = analyse(model, tokenizer, prompts, {"prompt_ids": prompt_ids, "runs": runs}, tie_gap=0.01)
    checkpoints = {"target": target, "draft": draft}
    config = {**checkpoints, "command": "test", "mlx_draft": None, "suites": ["tiny"], "max_tokens": 80,
              "repeats": 1, "warmup": 0, "block_size": None, "chat": False, "tie_gap": 0.01}  # fmt: skip
    return build_report(config, environment(checkpoints, "float32", suite_hash(prompts), seed=0), results)


def test_the_report_carries_the_loops_of_every_method(loop_report):
    for name in (PLAIN, DFLASH):
        assert loop_report["methods"][name]["loops"] == {
            "cycle_share": 0.25,
            "prompts_looping": 1,
            "first_cycle_median": 30,
        }
        assert loop_report["groups"]["tiny/code"]["methods"][name]["loops"]["cycle_share"] == 0.5
        looping, not_looping = (prompt["methods"][name]["loops"] for prompt in loop_report["prompts"])
        assert looping == {"cycle_share": 0.5, "prompts_looping": 1, "first_cycle_median": 30}
        assert not_looping == {"cycle_share": 0.0, "prompts_looping": 0, "first_cycle_median": None}

    text = markdown(loop_report)
    assert "| loop share |" in text and "| 25% (1/2 prompts) |" in text
    assert "## Loops" in text
    assert "| tiny/loop | 30 (50%) | 30 (50%) |" in text and "tiny/plain" not in text


@pytest.mark.slow  # a whole run of the command
def test_the_loops_command_measures_the_targets_own_greedy_output_per_suite(make_pair, tmp_path):
    target, _ = make_pair("llama")
    suites = {"code": ["def add(a, b):", "x = 1", "for i in range(3):"], "prose": ["The quick brown fox", "Once"]}
    for name, texts in suites.items():
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"prompt": text}) + "\n" for text in texts))
    out = tmp_path / "report"
    eval_main(["loops", "--target-model", target, "--suite", str(tmp_path / "code.jsonl"), "--suite",
               str(tmp_path / "prose.jsonl"), "--no-chat", "--max-tokens", "40", "--batch-size", "1",
               "--out", str(out)])  # fmt: skip
    report = json.loads((out / "report.json").read_text())["suites"]

    # One row at a time, mlx-lm's batched decoding is plain greedy decoding, one prompt after another.
    model, tokenizer = load_target(target)
    plain = {name: [dflash.generate(adapter_for(model), tokenizer, text, 40).tokens for text in texts]
             for name, texts in suites.items()}  # fmt: skip
    plain["all"] = plain["code"] + plain["prose"]
    for name, outputs in plain.items():
        assert report[name] == {"prompts": len(outputs), "tokens": sum(map(len, outputs)), **loop_figures(outputs)}
    assert "| prose | 2 |" in (out / "report.md").read_text()
