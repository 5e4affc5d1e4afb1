"""`dflash-eval candidates`: the target's tokens among the drafter's candidates, and the tau of the
argmax, of what was proposed and of a top-k oracle."""

import json

import dflash
from eval.candidates import KeepingDrafts, score_steps
from eval.cli import main as eval_main
from tests.helpers import SMALL_VOCAB, small_prompt


def test_each_step_is_scored_by_its_leading_run_of_hits():
    block = 4  # 3 proposals a step
    tokens = [9, 1, 2, 3, 7, 5, 6]  # the first from the prompt's pass
    drafts = [
        ([1, 2, 8], [[1, 4], [2, 4], [8, 3]]),  # argmax and proposals hit twice; the top-2 oracle 3 times
        ([5, 0, 0], [[0, 7], [5, 6], [0, 0]]),  # starts at 7: the argmax misses, the proposals too
        ([0, 0, 0], [[0, 0], [0, 0], [0, 0]]),  # at 6: too few of the target's tokens left to score
    ]
    counts = score_steps(drafts, [3, 1, 1], tokens, block, [2])
    assert counts == {"decoded": [2, 0], "argmax": [2, 0], "proposed": [2, 0], "top2": [3, 2]}


def test_the_report_is_consistent_with_the_decoding_it_watched(dflash2_pair, make_pair, tmp_path):
    suite = tmp_path / "mini.jsonl"
    suite.write_text('{"prompt": "def add(a, b):"}\n{"prompt": "The quick brown fox"}\n')
    for (target, draft), dflash2 in [(dflash2_pair("llama", top_k=4), True), (make_pair("llama"), False)]:
        out = tmp_path / f"report-{dflash2}"
        assert eval_main(["candidates", "--target-model", target, "--draft-model", draft, "--suite", str(suite),
                          "--max-tokens", "40", "--out", str(out)]) == 0  # fmt: skip
        report = json.loads((out / "report.json").read_text())
        assert report["config"]["dflash2"] is dflash2
        figures = report["suites"]["all"]
        assert figures["steps"] > 0 and figures["tau_proposed"] == figures["tau_decoded"]
        oracles = [figures[key] for key in sorted(k for k in figures if k.startswith("tau_top"))]
        assert figures["tau_argmax"] <= min(oracles) and oracles == sorted(oracles)
        assert figures["tau_proposed"] <= oracles[-1]  # a selector's path is among its top-k candidates
        if not dflash2:
            assert figures["tau_proposed"] == figures["tau_argmax"]


def test_the_kept_drafts_score_each_step_as_it_was_decoded(dflash2_pair):
    loaded, tokenizer = dflash.load(*dflash2_pair("llama", vocab_size=SMALL_VOCAB, top_k=4))
    tokenizer.eos_token_ids = set()
    model = KeepingDrafts.watching(loaded, top_k=4)
    totals = {}
    for seed, length in enumerate([1, 9, 40]):
        model.drafts.clear()
        prompt = small_prompt(length, seed)
        result = dflash.generate(model, tokenizer, prompt, 80, block_size=model.block_size)
        assert len(model.drafts) == len(result.stats.acceptance_lengths)
        for name, counts in score_steps(model.drafts, result.stats.acceptance_lengths, result.tokens,
                                        model.block_size, [2, 4]).items():  # fmt: skip
            totals[name] = totals.get(name, 0) + sum(counts)
    assert totals["proposed"] == totals["decoded"] > 0  # the selector's own proposals were accepted
    assert totals["argmax"] <= totals["top2"] <= totals["top4"] and totals["proposed"] <= totals["top4"]
