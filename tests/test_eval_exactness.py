import hashlib

import mlx.core as mx
import pytest

import dflash
from dflash.generate import encode_prompt, generate
from eval.bench import DFLASH, PLAIN, Run, analyse
from eval.environment import checkpoint_hashes, environment
from eval.exactness import divergence_record, first_divergence, logit_gap
from eval.report import build_report, markdown
from eval.suites import Prompt, suite_hash

TIE_GAP = 0.01
POSITION = 2  # where the constructed near-tie is


def test_logit_gap_on_constructed_logits():
    logits = mx.array([0.5, 3.0, -1.0, 2.999, 1.0])
    top1, top2, gap = logit_gap(logits)
    assert (top1, top2) == (1, 3)
    assert gap == pytest.approx(0.001, abs=1e-6)
    assert logit_gap(mx.array([2.0, 2.0, 0.0]))[2] == 0.0
    assert logit_gap(mx.array([1.0, 5.0, 2.0], dtype=mx.bfloat16)) == (1, 2, 3.0)


def test_first_divergence():
    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert first_divergence([1, 2], [1, 2, 3]) == 2  # the reference stopped at position 2
    assert first_divergence([], []) is None


@pytest.fixture(scope="module")
def near_tie(make_pair):
    """A tiny pair whose target's tied embedding is tampered (in memory) so that, after the first
    POSITION tokens of its plain greedy output, an unused token is nearly tied with top-1."""
    target, draft = make_pair(block_size=4)
    model, tokenizer = dflash.load(target, draft)
    prompt_ids = encode_prompt(model.adapter, tokenizer, "The quick brown fox")
    reference = generate(model.adapter, tokenizer, prompt_ids, max_tokens=6).tokens
    top1 = reference[POSITION]
    stop_tokens = model.adapter.stop_tokens(tokenizer)
    twin = next(t for t in range(tokenizer.vocab_size) if t not in set(prompt_ids + reference) | stop_tokens)
    embedding = model.target.model.embed_tokens
    # A slightly shorter copy of top-1's row: its logit is just below top-1's wherever top-1
    # scores positive, and it never appears in the input.
    weight = embedding.weight
    embedding.weight = mx.concatenate([weight[:twin], weight[top1 : top1 + 1] * (1 - 1e-5), weight[twin + 1 :]])
    assert generate(model.adapter, tokenizer, prompt_ids, max_tokens=6).tokens == reference
    return model, tokenizer, prompt_ids, reference, twin, (target, draft)


def test_divergence_at_a_near_tie(near_tie):
    model, tokenizer, prompt_ids, reference, twin, _ = near_tie
    stops = model.adapter.stop_tokens(tokenizer)
    candidate = reference[:POSITION] + [twin] + reference[POSITION + 1 :]
    record = divergence_record(model.target, tokenizer, prompt_ids, reference, candidate, stops, TIE_GAP)
    assert record["position"] == POSITION
    assert (record["top1"], record["top2"]) == (reference[POSITION], twin)
    assert (record["reference_token"], record["candidate_token"]) == (reference[POSITION], twin)
    assert 0 < record["gap"] < 1e-3
    assert record["verdict"] == "near-tie"
    # The same flip is a mismatch when the gap allowed for rounding is smaller than the gap.
    assert (
        divergence_record(model.target, tokenizer, prompt_ids, reference, candidate, stops, 0.0)["verdict"]
        == "mismatch"
    )
    assert divergence_record(model.target, tokenizer, prompt_ids, reference, list(reference), stops, TIE_GAP) is None


def test_divergence_far_from_a_tie_is_a_mismatch(near_tie):
    model, tokenizer, prompt_ids, reference, *_ = near_tie
    logits = model.target(mx.array([prompt_ids + reference[:POSITION]]))[0, -1]
    worst = mx.argmin(logits).item()
    candidate = reference[:POSITION] + [worst]
    record = divergence_record(
        model.target, tokenizer, prompt_ids, reference, candidate, model.adapter.stop_tokens(tokenizer), TIE_GAP
    )
    assert record["candidate_token"] == worst and record["verdict"] == "mismatch"
    # A method that stops early diverges where it stopped; its token reads as <stop>.
    stopped = divergence_record(
        model.target,
        tokenizer,
        prompt_ids,
        reference,
        reference[:POSITION],
        model.adapter.stop_tokens(tokenizer),
        TIE_GAP,
    )
    assert stopped["candidate_token"] is None and stopped["candidate_text"] == "<stop>"
    assert stopped["verdict"] == "mismatch"


def test_near_tie_divergence_end_to_end_in_the_report(near_tie):
    """A DFlash run that took the twin token at the near-tie goes through the analysis into the
    report: not exact, diverging at POSITION, called a near-tie in report.md."""
    model, tokenizer, prompt_ids, reference, twin, pair = near_tie
    diverged = reference[:POSITION] + [twin] + reference[POSITION + 1 :]
    runs = {
        PLAIN: [[Run(reference, 0.06)]],
        DFLASH: [[Run(diverged, 0.03, [2, 2, 1], draft_time=0.01, verify_time=0.015)]],
    }
    prompts = [Prompt("fox", "tiny", "The quick brown fox")]
    results = analyse(model, tokenizer, prompts, {"prompt_ids": [prompt_ids], "runs": runs}, TIE_GAP)
    dflash_figures = results["prompts"][0]["methods"][DFLASH]
    assert dflash_figures["exact_match_rate"] == 0.0
    assert dflash_figures["divergence"]["position"] == POSITION
    assert dflash_figures["divergence"]["verdict"] == "near-tie"
    assert dflash_figures["speedup"]["median"] == pytest.approx(2.0)
    assert dflash_figures["mean_acceptance"] == pytest.approx(5 / 3)

    checkpoints = dict(zip(("target", "draft"), pair))
    config = {
        **checkpoints,
        "command": "test",
        "mlx_draft": None,
        "suites": ["tiny"],
        "max_tokens": 6,
        "repeats": 1,
        "warmup": 0,
        "block_size": None,
        "chat": False,
        "tie_gap": TIE_GAP,
    }
    env = environment(checkpoints, "float32", suite_hash(prompts), seed=0)
    text = markdown(build_report(config, env, results))
    assert "| tiny/fox | DFlash | 2 |" in text and "near-tie" in text


def test_a_single_file_checkpoint_is_hashed(tmp_path):
    weights = tmp_path / "model.gguf"
    weights.write_bytes(b"GGUF")
    assert checkpoint_hashes(str(weights), "target") == {"model.gguf": hashlib.sha256(b"GGUF").hexdigest()}
