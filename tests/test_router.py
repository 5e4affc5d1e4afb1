"""The router's policies (guardrails, probe, judge), their stacking, the probe trainer and bad input."""

import json

import mlx.core as mx
import pytest

from adapters.routing import (
    DEFAULT_THRESHOLD,
    EXPERT,
    FAST,
    Guardrails,
    LLMJudge,
    Probe,
    ProbePolicy,
    Router,
    ScoringPolicy,
    load_fast_model,
    load_probe,
    make_router,
    pooled_features,
    read_labeled_prompts,
)
from dflash import DFlashError
from tests.helpers import save_target, target_config
from train.router import fit_logistic
from train.router import main as train_router_main

CODE = [
    "```python\nprint('hi')\n```",
    "Write a Python function that merges two dicts.",
    "WRITE A PYTHON FUNCTION THAT MERGES TWO DICTS",
    "how do i reverse a string in javascript",
    "Can you implement binary search in Rust?",
    "def area(r):\n    return 3.14 * r * r\nwhy is this slow?",
    "What does `df.groupby('city').mean()` return?",
    "SELECT name, age FROM users WHERE age > 30 -- what does this return?",
    "git rebase -i HEAD~3 confuses me",
    "Refactor my code so it has fewer nested loops",
    "what's the time complexity of heapsort",
    "I need a regular expression for dates like 2024-01-31",
]
DEBUGGING = [
    'Traceback (most recent call last):\n  File "main.py", line 3, in <module>\nZeroDivisionError: division by zero',
    "My script crashes with a KeyError when the config is missing.",
    "Exception in thread main java.lang.NullPointerException",
    "Why do I get a segmentation fault here?",
    "npm ERR! code ELIFECYCLE",
    "it keeps throwing a type error when I pass a list",
]
MATH = [
    "Solve 2x + 3 = 11",
    "solve for y: 4y - 2 = 10",
    "What is 37 * 41?",
    "what's 12 plus 30?",
    "Find the derivative of x^2 * cos(x)",
    "Compute the integral of sin(x) from 0 to pi",
    "What is 20% of 350?",
    "PROVE THAT there are infinitely many primes",
    "If 3 pens cost $4.50, how much do 7 pens cost in total?",
    "What's the probability of drawing two aces in a row?",
]
MULTI_STEP = [
    "Explain step by step how a refrigerator works.",
    "Explain Step-By-Step how a refrigerator works.",
    "explain STEP BY STEP how a refrigerator works",
    "Walk me through how mortgages are priced.",
    "Think it through carefully: should I rent or buy?",
    "Compare and contrast mitosis and meiosis.",
    "What are the trade-offs of a four-day week?",
    "Analyse the causes of the French Revolution.",
]
# Ordinary chat, including words that also name languages, commands or math ideas.
CHAT = [
    "Hi! How are you today?",
    "good morning :)",
    "Thanks so much, see you later!",
    "What's the capital of Portugal?",
    "I love a cup of java in the morning.",
    "We saw a python at the zoo, it was huge.",
    "There's rust on my bike chain, is it ruined?",
    "What's the dress code for a garden party?",
    "My zip code is 10001, is that Manhattan?",
    "Any pointers for my first marathon?",
    "Can you compile a list of beach reads?",
    "We're planning a birthday bash for my dad.",
    "The pandas at the zoo were adorable.",
    "I have 2 cats and a dog, any names for a third cat?",
    "The shop is open 9 - 5 on weekdays.",
    "Shipping takes 3-5 days, right?",
    "See you on 12/25!",
    "I rated the movie 10/10.",
    "Call me at 555-1234 tonight.",
    "Tell me a riddle!",
    "What's the function of the kidneys?",
    "Translate 'good night' into German.",
    "Rewrite this politely: 'give me the file'",
    "Write a short poem about autumn.",
    "I'm so tired today ^_^",
]


# ------------------------------------------------------------------------------------------
# Guardrails


@pytest.mark.parametrize(
    "prompt, category",
    [(p, "code") for p in CODE]
    + [(p, "debugging") for p in DEBUGGING]
    + [(p, "math") for p in MATH]
    + [(p, "multi-step") for p in MULTI_STEP],
)
def test_guardrails_send_code_math_and_multi_step_to_expert(prompt, category):
    decision = Guardrails().decide(prompt)
    assert decision is not None, prompt
    assert decision.route == EXPERT and decision.policy == "guardrails"
    assert decision.reason.startswith("guardrail: ")
    # Categories overlap (a stack trace is code too); the reason names the one that fired.
    assert decision.reason.split()[1] in ("code", "debugging", "math", "multi-step")
    if category in ("math", "multi-step"):
        assert category in decision.reason


@pytest.mark.parametrize("prompt", CHAT)
def test_guardrails_abstain_on_ordinary_chat(prompt):
    assert Guardrails().decide(prompt) is None


def test_guardrail_reason_quotes_what_matched():
    decision = Guardrails().decide("Please solve 2x + 3 = 11 for me")
    assert "2x + 3" in decision.reason


# ------------------------------------------------------------------------------------------
# Stacking


class FixedScore(ScoringPolicy):
    name = "fixed"

    def __init__(self, probability, threshold=DEFAULT_THRESHOLD):
        super().__init__(threshold)
        self.probability = probability

    def expert_probability(self, prompt):
        return self.probability


def test_guardrails_override_the_scoring_policy():
    router = Router([Guardrails(), FixedScore(0.0)])
    decision = router.route("Write a Python function that sorts a list.")
    assert decision.route == EXPERT and decision.policy == "guardrails"
    assert router.route("Hello!").route == FAST


@pytest.mark.parametrize(
    "probability, route", [(0.05, FAST), (0.29, FAST), (0.3, EXPERT), (0.45, EXPERT), (0.9, EXPERT)]
)
def test_scoring_policy_decides_when_no_guardrail_fires(probability, route):
    decision = Router([Guardrails(), FixedScore(probability)]).route("Hello!")
    assert decision.route == route and decision.policy == "fixed"
    assert decision.expert_probability == probability
    assert f"{probability:.2f}" in decision.reason and "threshold 0.30" in decision.reason


def test_default_threshold_is_conservative():
    assert DEFAULT_THRESHOLD < 0.5  # a coin flip goes to the expert
    assert FixedScore(0.5).decide("Hello!").route == EXPERT
    assert FixedScore(0.5, threshold=0.6).decide("Hello!").route == FAST


def test_first_deciding_policy_wins_and_fallback_applies_when_all_abstain():
    assert Router([FixedScore(0.0), Guardrails()]).route("def f(): pass").route == FAST
    fallback_fast = Router([Guardrails()], fallback=FAST).route("Hello!")
    assert fallback_fast.route == FAST and fallback_fast.policy == "fallback"
    assert "guardrails found nothing" in fallback_fast.reason
    assert Router([Guardrails()]).route("Hello!").route == EXPERT  # default fallback: when in doubt, expert


def test_router_records_its_latency():
    assert Router([Guardrails(), FixedScore(0.1)]).route("Hello!").latency_s > 0


@pytest.mark.parametrize("threshold", [-0.1, 1.5, float("nan")])
def test_threshold_outside_zero_one_is_refused(threshold):
    with pytest.raises(DFlashError, match="threshold"):
        FixedScore(0.5, threshold=threshold)


def test_bad_router_construction_is_refused():
    with pytest.raises(DFlashError, match="at least one policy"):
        Router([])
    with pytest.raises(DFlashError, match="unknown route"):
        Router([Guardrails()], fallback="medium")
    with pytest.raises(DFlashError, match="needs the fast model"):
        make_router("probe")
    with pytest.raises(DFlashError, match="unknown router"):
        make_router("oracle", fast=object())


@pytest.mark.parametrize("prompt", ["", "   \n\t", None])
def test_empty_prompt_is_refused_by_every_policy(prompt):
    for decide in (Router([Guardrails()]).route, Guardrails().decide, FixedScore(0.5).decide):
        with pytest.raises(DFlashError, match="the prompt is empty"):
            decide(prompt)


# ------------------------------------------------------------------------------------------
# Probe

TRAINING_PROMPTS = [
    ("Hello there!", FAST), ("Good morning, how are you?", FAST), ("Tell me a joke.", FAST),
    ("What is the capital of France?", FAST), ("Thanks, bye!", FAST), ("Translate 'cat' into French.", FAST),
    ("def add(a, b): return a + b", EXPERT), ("for i in range(10): print(i * i)", EXPERT),
    ("Write a function that sorts a list.", EXPERT), ("Solve 2x + 3 = 7 step by step.", EXPERT),
    ("Why does my loop print 0123456789?", EXPERT), ("Prove that the sum of two odd numbers is even.", EXPERT),
]  # fmt: skip


@pytest.fixture(scope="session")
def fast_model_dir(make_pair):
    return make_pair("llama")[0]


@pytest.fixture(scope="session")
def trained_probe(fast_model_dir, tmp_path_factory):
    """A probe trained with dflash-train-router on the tiny fast model."""
    root = tmp_path_factory.mktemp("router-probe")
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "label": label}) + "\n" for p, label in TRAINING_PROMPTS))
    out = root / "probe.safetensors"
    argv = ["--data", str(data), "--fast-model", fast_model_dir, "--out", str(out), "--folds", "2", "--steps", "60"]
    assert train_router_main(argv) == 0
    return out


def test_trainer_writes_a_loadable_probe_and_a_summary(trained_probe, fast_model_dir):
    probe = load_probe(trained_probe)
    fast = load_fast_model(fast_model_dir)
    assert probe.hidden_size == fast.adapter.hidden_size == 64
    assert probe.layer_ids == [fast.adapter.num_layers // 2]
    assert probe.num_features == 128
    summary = json.loads(trained_probe.with_suffix(".json").read_text())
    assert summary["examples"] == len(TRAINING_PROMPTS) and summary["expert_examples"] == 6
    assert 0 <= summary["cv_accuracy"] <= 1 and summary["l2"] > 0


def test_probe_policy_is_the_sigmoid_of_the_saved_logistic_regression(trained_probe, fast_model_dir):
    fast = load_fast_model(fast_model_dir)
    probe = load_probe(trained_probe)
    policy = ProbePolicy(probe, fast)
    prompt = "Hello there!"
    features = pooled_features(fast, prompt, probe.layer_ids)
    standardised = (features - probe.feature_mean) / probe.feature_std
    expected = 1 / (1 + mx.exp(-((standardised * probe.weight).sum() + probe.bias[0])))
    decision = policy.decide(prompt)
    assert decision.expert_probability == pytest.approx(expected.item(), abs=1e-5)
    assert decision.route == (EXPERT if decision.expert_probability >= DEFAULT_THRESHOLD else FAST)
    assert decision.reason.startswith("probe: P(expert)")


def test_logistic_regression_fits_separable_features(fast_model_dir):
    fast = load_fast_model(fast_model_dir)
    features = mx.stack([pooled_features(fast, p, [3]) for p, _ in TRAINING_PROMPTS])
    labels = mx.array([1.0 if label == EXPERT else 0.0 for _, label in TRAINING_PROMPTS])
    mean, std = features.mean(axis=0), features.std(axis=0) + 1e-6
    weight, bias = fit_logistic((features - mean) / std, labels, l2=1e-4, steps=200, lr=0.05)
    predictions = ((features - mean) / std) @ weight + bias[0] > 0
    assert (predictions == (labels > 0)).all().item()


def test_probe_stacked_under_guardrails(trained_probe, fast_model_dir):
    router = make_router("probe", load_fast_model(fast_model_dir), trained_probe, threshold=0.3)
    assert router.route("```js\nconsole.log(1)\n```").policy == "guardrails"
    assert router.route("Hello there!").policy == "probe"


def test_probe_for_another_hidden_size_is_refused(trained_probe, tmp_path):
    narrow = save_target(
        tmp_path / "narrow", target_config("llama", hidden_size=32, num_attention_heads=2, head_dim=16)
    )
    with pytest.raises(DFlashError, match="hidden size 64; the fast model's is 32") as error:
        ProbePolicy(load_probe(trained_probe), load_fast_model(str(narrow)))
    assert "\n" not in str(error.value)


def test_probe_for_another_model_of_the_same_width_is_refused(trained_probe, tmp_path):
    deeper = save_target(tmp_path / "deeper", target_config("llama", layers=4))
    with pytest.raises(DFlashError, match="6 layers and 512 tokens; the fast model has 4 and 512 "):
        ProbePolicy(load_probe(trained_probe), load_fast_model(str(deeper)))


def test_probe_for_a_retrained_model_of_the_same_shape_is_refused(trained_probe, tmp_path):
    retrained = save_target(tmp_path / "retrained", target_config("llama"), seed=5)
    with pytest.raises(DFlashError, match="trained on another model: the fast model's hidden states"):
        ProbePolicy(load_probe(trained_probe), load_fast_model(str(retrained)))


def test_probe_accepts_its_model_in_another_dtype(trained_probe, fast_model_dir):
    ProbePolicy(load_probe(trained_probe), load_fast_model(fast_model_dir, dtype="bfloat16"))


def test_unreadable_probe_files_are_refused(tmp_path, make_pair):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01 definitely not safetensors")
    _, draft_dir = make_pair("llama")
    cases = {
        tmp_path / "missing.safetensors": "not found",
        garbage: "cannot read router probe",
        # A drafter's weights are valid safetensors, but not a probe.
        f"{draft_dir}/model.safetensors": "is not a router probe",
    }
    for path, message in cases.items():
        with pytest.raises(DFlashError, match=message) as error:
            load_probe(path)
        assert "\n" not in str(error.value)


def test_probe_with_inconsistent_metadata_is_refused(trained_probe, tmp_path):
    probe = load_probe(trained_probe)
    probe.layer_ids = [1, 3]  # metadata now promises 192 features; the tensors hold 128
    broken = tmp_path / "broken.safetensors"
    probe.save(broken)
    with pytest.raises(DFlashError, match="wrong shape"):
        load_probe(broken)


def test_probe_round_trips_through_its_file(trained_probe, tmp_path):
    probe = load_probe(trained_probe)
    copy = tmp_path / "copy.safetensors"
    probe.save(copy)
    again = load_probe(copy)
    assert isinstance(again, Probe) and again.layer_ids == probe.layer_ids
    assert mx.array_equal(again.weight, probe.weight).item()


# ------------------------------------------------------------------------------------------
# LLM judge


def test_judge_scores_the_share_of_the_complex_label(fast_model_dir):
    fast = load_fast_model(fast_model_dir)
    judge = LLMJudge(fast, threshold=0.3)
    prompt = "Hello there!"
    logits = fast.model(mx.array(judge.judge_tokens(prompt))[None])[0, -1]
    probabilities = mx.softmax(logits.astype(mx.float32))
    simple = probabilities[mx.array(judge.label_tokens[FAST])].sum()
    complex_ = probabilities[mx.array(judge.label_tokens[EXPERT])].sum()
    decision = judge.decide(prompt)
    assert decision.expert_probability == pytest.approx((complex_ / (simple + complex_)).item(), rel=1e-4)
    assert decision.policy == "judge" and decision.reason.startswith("judge: P(expert)")
    # The prompt the judge reads is the classification request in the chat template.
    text = fast.tokenizer.decode(judge.judge_tokens(prompt))
    assert "Hello there!" in text and "simple or complex" in text and text.endswith("<|assistant|>")


def test_judge_follows_the_threshold_and_stacks_under_guardrails(fast_model_dir):
    fast = load_fast_model(fast_model_dir)
    assert LLMJudge(fast, threshold=0.0).decide("Hello").route == EXPERT
    assert LLMJudge(fast, threshold=1.0).decide("Hello").route == FAST
    router = make_router("judge", fast, threshold=1.0)
    assert router.route("Solve x^2 = 4").policy == "guardrails"
    assert router.route("Hello").policy == "judge"


# ------------------------------------------------------------------------------------------
# Labeled prompts


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "has no labeled prompts"),
        ('{"prompt": "hi"}\n', "expected"),
        ('{"prompt": "hi", "label": "medium"}\n', "label 'medium'"),
        ('{"prompt": "  ", "label": "fast"}\n', "the prompt is empty"),
        ('{"prompt": "hi", "label": "fast"}\nnot json\n', ":2:"),
    ],
)
def test_bad_labeled_prompt_files_are_refused(tmp_path, content, message):
    path = tmp_path / "data.jsonl"
    path.write_text(content)
    with pytest.raises(DFlashError, match=message):
        read_labeled_prompts(path)


def test_missing_labeled_prompt_file_is_refused(tmp_path):
    with pytest.raises(DFlashError, match="cannot read labeled prompts"):
        read_labeled_prompts(tmp_path / "nope.jsonl")
