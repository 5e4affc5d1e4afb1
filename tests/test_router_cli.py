"""`dflash-mlx --route`, `dflash-eval router` and the shipped routing set."""

import json
from collections import Counter
from pathlib import Path

import pytest

from adapters.routing import EXPERT, FAST, Guardrails, load_fast_model, make_router, read_labeled_prompts
from dflash.presets import DEFAULT_FAST, DEFAULT_ROUTER_PROBE
from dflash.cli import main as cli_main
from eval.cli import main as eval_main
from tests.helpers import save_target, target_config
from train.router import main as train_router_main

SUITES = Path(__file__).resolve().parent.parent / "eval" / "suites"
CODE_PROMPT = "Write a Python function that returns the n-th Fibonacci number."
CHAT_PROMPT = "Hi! How are you today?"


@pytest.fixture(scope="session")
def models(make_pair, tmp_path_factory):
    """Tiny expert pair, the expert target doubling as the fast model, and a probe trained on it."""
    target, draft = make_pair("llama")
    root = tmp_path_factory.mktemp("routing")
    probe = root / "probe.safetensors"
    argv = ["--data", str(SUITES / "routing_train.jsonl"), "--fast-model", target, "--out", str(probe),
            "--folds", "2", "--steps", "60"]  # fmt: skip
    assert train_router_main(argv) == 0
    return {"target": target, "draft": draft, "fast": target, "probe": str(probe), "root": root}


def run_cli(capsys, models, *args):
    argv = ["--fast-model", models["fast"], "--target-model", models["target"], "--draft-model", models["draft"],
            "--router-probe", models["probe"], "--max-new-tokens", "6", "--json", *args]  # fmt: skip
    code = cli_main(argv)
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else None), err


def test_forced_routes_report_the_route_and_give_the_same_greedy_tokens(capsys, models):
    # The fast model here is the expert's target, so DFlash (exact) and plain decoding agree.
    _, fast, _ = run_cli(capsys, models, "--route", "fast", "--prompt", CHAT_PROMPT)
    _, expert, _ = run_cli(capsys, models, "--route", "expert", "--prompt", CHAT_PROMPT)
    assert fast["route"] == FAST and expert["route"] == EXPERT
    assert fast["route_reason"] == expert["route_reason"] == "chosen by the request"
    assert fast["router_latency_s"] == 0.0
    assert fast["tokens"] == expert["tokens"] and len(fast["tokens"]) == fast["generated_tokens"] == 6
    assert fast["fast_model"] == models["fast"] and "draft_model" not in fast
    assert expert["draft_model"] == models["draft"] and "mean_acceptance" in expert


def test_fast_route_samples_with_the_sampling_options(capsys, models):
    sampled = [
        run_cli(
            capsys, models, "--route", "fast", "--temperature", "1.5", "--seed", str(seed), "--max-new-tokens", "12"
        )[1]
        for seed in (7, 7, 8)
    ]
    assert sampled[0]["tokens"] == sampled[1]["tokens"] != sampled[2]["tokens"]
    assert sampled[0]["sampling"] == {"temperature": 1.5, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "seed": 7}
    code, _, err = run_cli(capsys, models, "--route", "fast", "--temperature", "1", "--top-p", "0")
    assert code == 2 and "top-p" in err


def test_fast_route_loads_no_expert_model(capsys, models):
    code, report, _ = run_cli(capsys, models, "--route", "fast", "--target-model", "/nonexistent/target")
    assert code == 0 and report["route"] == FAST


def test_auto_route_with_guardrails_alone(capsys, models):
    # The expert pair is not needed for a chat prompt: a missing one proves it is not loaded.
    _, chat, _ = run_cli(capsys, models, "--route", "auto", "--router", "guardrails", "--prompt", CHAT_PROMPT,
                         "--draft-model", "/nonexistent/draft")  # fmt: skip
    assert chat["route"] == FAST and "found nothing" in chat["route_reason"]
    _, coding, _ = run_cli(capsys, models, "--route", "auto", "--router", "guardrails", "--prompt", CODE_PROMPT)
    assert coding["route"] == EXPERT and coding["route_reason"].startswith("guardrail: code")
    assert coding["router_latency_s"] > 0 and "mean_acceptance" in coding


def test_auto_route_with_the_probe_and_the_judge(capsys, models):
    _, guarded, _ = run_cli(capsys, models, "--route", "auto", "--prompt", CODE_PROMPT)
    assert guarded["route"] == EXPERT and guarded["route_reason"].startswith("guardrail:")
    for router in ("probe", "judge"):
        _, report, _ = run_cli(capsys, models, "--route", "auto", "--router", router, "--prompt", CHAT_PROMPT)
        assert report["route"] in (FAST, EXPERT) and report["route_reason"].startswith(f"{router}: P(expert)")
        assert report["router_latency_s"] > 0
    _, always_expert, _ = run_cli(capsys, models, "--route", "auto", "--route-threshold", "0", "--prompt", CHAT_PROMPT)
    assert always_expert["route"] == EXPERT


def test_text_output_names_the_route(capsys, models):
    argv = ["--fast-model", models["fast"], "--route", "fast", "--max-new-tokens", "3", "--prompt", CHAT_PROMPT]
    assert cli_main(argv) == 0
    _, err = capsys.readouterr()
    assert err.startswith("route fast (chosen by the request; router 0.0 ms)\n3 tokens at")


def test_cli_refuses_bad_routing_input_in_one_line(capsys, models, tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a probe")
    narrow = save_target(
        tmp_path / "narrow", target_config("llama", hidden_size=32, num_attention_heads=2, head_dim=16)
    )
    cases = [
        (["--route", "auto", "--prompt", "  "], "the prompt is empty"),
        (["--route", "fast", "--prompt", ""], "the prompt is empty"),
        (["--route", "auto", "--router-probe", str(garbage)], "cannot read router probe"),
        (["--route", "auto", "--router-probe", str(tmp_path / "none.safetensors")], "not found"),
        (["--route", "auto", "--fast-model", str(narrow)], "hidden size 64; the fast model's is 32"),
        (["--route", "auto", "--route-threshold", "2"], "threshold"),
        (["--route", "fast", "--fast-model", str(tmp_path / "nope")], "fast model"),
    ]
    for args, message in cases:
        code, _, err = run_cli(capsys, models, *args)
        assert code == 2, args
        assert err.startswith("dflash-mlx: error: ") and message in err and err.count("\n") == 1, err


# ------------------------------------------------------------------------------------------
# dflash-eval router

SMALL_SET = [
    ("Hello!", FAST, "greeting"),
    ("What's the capital of Peru?", FAST, "trivia"),
    ("Write a Python function that adds two numbers.", EXPERT, "code"),
    ("Solve 3x = 12.", EXPERT, "math"),
    ("Alice is older than Bob, who is older than Carol. Who is youngest?", EXPERT, "reasoning"),
]


def write_set(path, rows):
    path.write_text("".join(json.dumps({"prompt": p, "label": label, "category": c}) + "\n" for p, label, c in rows))
    return path


def test_eval_router_scores_guardrails_on_any_jsonl(capsys, tmp_path):
    data = write_set(tmp_path / "small.jsonl", SMALL_SET)
    eval_main(["router", "--data", str(data), "--router", "guardrails", "--no-e2e", "--json"])
    report = json.loads(capsys.readouterr().out)
    # The puzzle has no guardrail cue: guardrails alone send it fast.
    assert report["accuracy"] == pytest.approx(4 / 5)
    assert report["expert_recall"] == pytest.approx(2 / 3)
    assert report["confusion"] == {FAST: {FAST: 2, EXPERT: 0}, EXPERT: {FAST: 1, EXPERT: 2}}
    assert report["decided_by"] == {"fallback": 3, "guardrails": 2}
    assert report["policies"]["guardrails"] == {"decided": 2, "accuracy_when_deciding": 1.0, "expert_recall": 2 / 3}
    assert report["by_category"]["reasoning"] == {"examples": 1, "accuracy": 0.0}
    assert [row["prompt"] for row in report["misrouted"]] == [SMALL_SET[4][0]]
    assert set(report["router_latency_ms"]) == {"mean", "median", "p95", "max"}
    assert report["end_to_end"] is None
    assert report["threshold_sweep"] == []  # nothing scored, nothing to sweep


def test_eval_router_times_each_mode_end_to_end(capsys, models, tmp_path):
    data = write_set(tmp_path / "small.jsonl", SMALL_SET)
    eval_main(["router", "--data", str(data), "--fast-model", models["fast"], "--router-probe", models["probe"],
               "--target-model", models["target"], "--draft-model", models["draft"], "--e2e", "--e2e-prompts", "1",
               "--max-tokens", "4", "--repeats", "1", "--json"])  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert report["router"] == "probe" and report["threshold"] == 0.3
    assert report["policies"]["probe"]["decided"] == len(SMALL_SET)
    sweep = {row["threshold"]: row for row in report["threshold_sweep"]}
    assert sweep[0.3]["accuracy"] == report["accuracy"] and sweep[0.3]["expert_recall"] == report["expert_recall"]
    recalls = [row["expert_recall"] for row in report["threshold_sweep"]]
    assert recalls == sorted(recalls, reverse=True)  # a higher threshold never sends more to the expert
    e2e = report["end_to_end"]
    assert e2e["prompts"] == ["Hello!"] and e2e["auto_routes"][0] in (FAST, EXPERT)
    for mode in (FAST, EXPERT, "auto"):
        assert e2e[mode]["median_seconds"] > 0 and e2e[mode]["tokens"] == [4]
    assert e2e["expert_over_fast"] > 0


def test_eval_router_text_summary(capsys, tmp_path):
    data = write_set(tmp_path / "small.jsonl", SMALL_SET)
    eval_main(["router", "--data", str(data), "--router", "guardrails", "--no-e2e"])
    out = capsys.readouterr().out
    assert "accuracy 0.800 | expert recall 0.667" in out and "[expert -> fast]" in out


def test_eval_router_refuses_bad_input(capsys, models, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi", "label": "maybe"}\n')
    experts_only = write_set(tmp_path / "experts.jsonl", [row for row in SMALL_SET if row[1] == EXPERT])
    pair = ["--target-model", models["target"], "--draft-model", models["draft"], "--fast-model", models["fast"]]
    cases = [
        (["--data", str(bad), "--no-e2e"], "label 'maybe'"),
        (["--data", str(experts_only), "--e2e", *pair], "no fast-labelled prompt"),
        (["--data", str(experts_only), "--e2e-prompts", "0"], "--e2e-prompts must be at least 1"),
    ]
    for args, message in cases:
        assert eval_main(["router", "--router", "guardrails", *args]) == 2
        assert message in capsys.readouterr().err


# ------------------------------------------------------------------------------------------
# The shipped routing set


def test_shipped_routing_set_is_balanced_varied_and_split_cleanly():
    train = read_labeled_prompts(SUITES / "routing_train.jsonl")
    test = read_labeled_prompts(SUITES / "routing_test.jsonl")
    prompts = [e.prompt for e in train + test]
    assert len(prompts) >= 300 and len(set(prompts)) == len(prompts)
    for split in (train, test):
        labels = Counter(e.label for e in split)
        assert abs(labels[FAST] - labels[EXPERT]) <= 0.05 * len(split)
    categories = {
        split_name: Counter(e.category for e in split) for split_name, split in (("train", train), ("test", test))
    }
    assert set(categories["train"]) == set(categories["test"])
    assert {"greeting", "chat", "trivia", "rewrite", "code", "math", "debugging", "analysis"} <= set(categories["test"])
    assert 0.2 <= len(test) / len(prompts) <= 0.35


def test_guardrails_never_fire_on_the_shipped_fast_prompts():
    examples = read_labeled_prompts(SUITES / "routing_train.jsonl") + read_labeled_prompts(
        SUITES / "routing_test.jsonl"
    )
    guardrails = Guardrails()
    fired = [
        (e.prompt, guardrails.decide(e.prompt).reason)
        for e in examples
        if e.label == FAST and guardrails.decide(e.prompt)
    ]
    assert fired == []


@pytest.mark.skipif(not DEFAULT_FAST.is_dir(), reason="the shipped fast model is not built")
def test_shipped_probe_fits_the_shipped_fast_model_and_keeps_expert_recall():
    # A retrained fast model fails the probe's canary check here: retrain the probe with it.
    router = make_router("probe", load_fast_model(str(DEFAULT_FAST)), DEFAULT_ROUTER_PROBE)
    examples = read_labeled_prompts(SUITES / "routing_test.jsonl")
    routes = [router.route(e.prompt).route for e in examples]
    experts = [route for e, route in zip(examples, routes) if e.label == EXPERT]
    # Measured here: 57 of the 58 expert prompts routed expert, 106 of the 116 prompts routed right;
    # the floors let two expert prompts and five prompts in all flip on another CPU's rounding.
    assert len(experts) == 58 and experts.count(EXPERT) >= 57 - 2
    assert sum(e.label == route for e, route in zip(examples, routes)) >= 106 - 5
