"""Batched speculative decoding: every sequence of a batch is token for token what it gets alone."""

import json

import mlx.core as mx
import pytest
from mlx_lm.models.cache import ArraysCache

import dflash
from adapters.errors import DFlashError
from dflash.acceptance import make_acceptance
from dflash.batch import BatchDecoder, batch_generate, length_groups
from dflash.generate import collect, generate
from dflash.sampling import SamplingSettings
from eval.cli import main as eval_main
from tests.helpers import (
    DraftLog,
    OracleProposals,
    assert_same_up_to_rounding,
    draft_config,
    prompt_of,
    rounding_bound,
    save_random_draft,
    target_config,
)

LENGTHS = [3, 17, 40, 1, 90]  # distinct: the oracle tells the rows apart by their prompt length


class RowOracle(OracleProposals):
    """The oracle proposer for many rows at once: each row's own reference continuation."""

    def __init__(self, references: dict, vocab_size: int, miss_every: int):
        super().__init__(None, vocab_size, miss_every)
        self.references = references

    def propose(self, draft_logits, state):
        self.reference = self.references[state.stats.prompt_tokens]
        return super().propose(draft_logits, state)


def prompts():
    return [prompt_of(n, seed=n) for n in LENGTHS]


@pytest.mark.slow  # whole batches on every family; the join/leave test stays fast
@pytest.mark.parametrize("family", ["llama", "qwen3", "qwen3_moe", "gpt_oss", "qwen3_5", "qwen3_next"])
def test_every_sequence_equals_its_single_run(make_pair, family):
    model, tokenizer = dflash.load(*make_pair(family))
    singles = [generate(model.adapter, tokenizer, p, 30).tokens for p in prompts()]
    assert [r.tokens for r in batch_generate(model, tokenizer, prompts(), 30)] == singles  # random drafter
    oracle = RowOracle({n: s for n, s in zip(LENGTHS, singles)}, model.adapter.vocab_size, miss_every=4)
    results = batch_generate(model, tokenizer, prompts(), 30, acceptance=oracle)
    assert [r.tokens for r in results] == singles
    lengths = [n for r in results for n in r.stats.acceptance_lengths]
    assert max(lengths) == 4 and min(lengths) < 4  # ragged: full and partial accepts within the batch


@pytest.mark.parametrize("family", ["qwen3_5", "qwen3_next"])
def test_a_ragged_commit_leaves_each_recurrent_row_where_its_single_run_would(make_pair, family):
    model, tokenizer = dflash.load(*make_pair(family))
    adapter, layer_ids = model.adapter, model.draft.config.target_layer_ids
    blocks = mx.array([[5, 9, 2, 7, 3], [8, 1, 4, 6, 2], [3, 3, 9, 1, 5]])
    kept = [2, 5, 4]
    decoder = BatchDecoder(model, tokenizer)
    for n in (7, 19, 11):  # one at a time: each row's prefill is its single run's
        decoder.insert([prompt_of(n, seed=n)], [20])
    adapter.verify(blocks, decoder.batch.target_cache, layer_ids).commit(kept)
    recurrent = [i for i, cache in enumerate(decoder.batch.target_cache) if isinstance(cache, ArraysCache)]
    assert recurrent
    for row, n in enumerate((7, 19, 11)):
        state = dflash.decode.start(model, max_tokens=20)
        dflash.decode.prefill(model, state, mx.array(prompt_of(n, seed=n)))
        adapter.verify(blocks[row : row + 1], state.target_cache, layer_ids).commit(kept[row])
        for i in recurrent:  # close, not equal: a batched matmul rounds differently from a single row's
            for batched, single in zip(decoder.batch.target_cache[i].cache, state.target_cache[i].cache):
                bound = rounding_bound(adapter, n + blocks.shape[1], single)
                assert_same_up_to_rounding(batched[row : row + 1], single, bound)


def test_prompts_are_prefilled_in_groups_of_similar_lengths():
    assert length_groups([3, 36, 40, 1, 45, 90, 50]) == [[3], [0], [1, 2, 4, 6], [5]]
    assert length_groups([7] * 5) == [[0, 1, 2, 3, 4]]


@pytest.mark.parametrize("family", ["llama", "gpt_oss", "qwen3_next"])
def test_prompts_prefilled_together_leave_each_row_where_its_single_prefill_would(make_pair, family, monkeypatch):
    monkeypatch.setattr(dflash.decode, "PREFILL_STEP_SIZE", 16)  # padded rows across several chunks
    model, tokenizer = dflash.load(*make_pair(family))
    lengths = [3, 36, 40, 1, 45, 90, 50]  # groups of one and one group of four, padded (test above)
    together = [prompt_of(n, seed=n) for n in lengths]
    decoder = BatchDecoder(model, tokenizer)
    uids = decoder.insert(together, [20] * len(together))
    row_of = {row.uid: i for i, row in enumerate(decoder.rows)}
    for uid, prompt in zip(uids, together):
        row = row_of[uid]
        state = dflash.decode.start(model, max_tokens=20)
        dflash.decode.prefill(model, state, mx.array(prompt))
        assert decoder.rows[row].state.tokens == state.tokens
        # close, not equal: a batched matmul rounds differently from a single row's
        bound = rounding_bound(model.adapter, len(prompt), state.context)
        assert_same_up_to_rounding(decoder.rows[row].state.context, state.context, bound)
        for batched, single in zip(decoder.batch.target_cache, state.target_cache):
            if isinstance(batched, ArraysCache):
                pairs = [(b[row : row + 1], s) for b, s in zip(batched.cache, single.cache)]
            else:
                assert batched.lengths[row] == single.offset == len(prompt)
                pairs = [(b[row : row + 1, :, : len(prompt)], s[..., : len(prompt), :])
                         for b, s in zip(batched.state, single.state)]  # fmt: skip
            for b, s in pairs:
                assert_same_up_to_rounding(b, s, rounding_bound(model.adapter, len(prompt), s))


def test_stop_tokens_early_finishes_and_a_sequence_joining_midway(make_pair):
    model, tokenizer = dflash.load(*make_pair("llama"))
    free = [generate(model.adapter, tokenizer, p, 40).tokens for p in prompts()]
    tokenizer.eos_token_ids = {free[1][6], free[3][20]}  # rows 1 and 3 stop early, at different steps
    singles = [dflash.generate(model, tokenizer, p, 40).tokens for p in prompts()]
    assert len(singles[1]) <= 6 and len(singles[3]) <= 20
    decoder = BatchDecoder(model, tokenizer)
    uids = decoder.insert(prompts()[:4], [40, 40, 9, 40])
    responses = {uid: [] for uid in uids}
    for step in range(200):
        if step == 3:  # a request joins while the others are decoding
            uids += decoder.insert(prompts()[4:], [40])
            responses[uids[-1]] = []
        for uid, response in decoder.step():
            responses[uid].append(response)
        if not decoder.rows:
            break
    results = [collect(responses[uid]) for uid in uids]
    assert [r.tokens for r in results] == [singles[0], singles[1], singles[2][:9], singles[3], singles[4]]
    assert [r.finish_reason for r in results][1:4] == ["stop", "length", "stop"]


def test_an_insert_whose_prefill_fails_adds_no_row(make_pair, monkeypatch):
    model, tokenizer = dflash.load(*make_pair("llama"))
    decoder = BatchDecoder(model, tokenizer)
    [kept] = decoder.insert([prompt_of(5, seed=5)], [12])
    prefill_together, calls = dflash.decode.prefill_together, []

    def second_group_fails(*args):
        calls.append(args)
        if len(calls) == 2:
            raise RuntimeError("prefill failed")
        prefill_together(*args)

    monkeypatch.setattr(dflash.decode, "prefill_together", second_group_fails)
    with pytest.raises(RuntimeError):
        decoder.insert([prompt_of(3, seed=3), prompt_of(90, seed=90)], [12, 12])  # two groups
    assert [row.uid for row in decoder.rows] == [kept] and len(calls) == 2
    assert all(cache.keys.shape[0] == 1 for cache in decoder.batch.target_cache + decoder.batch.draft_cache)
    tokens = []
    while decoder.rows:
        tokens += [t for _, response in decoder.step() for t in response.tokens]
    assert tokens == generate(model.adapter, tokenizer, prompt_of(5, seed=5), 12).tokens


def test_a_sliding_window_drafter_drafts_in_a_batch_what_it_drafts_alone(make_pair, tmp_path):
    target, _ = make_pair("qwen3")
    config = draft_config(target_config("qwen3"), layers=2, layer_types=["sliding_attention", "full_attention"],
                          sliding_window=4)  # fmt: skip
    model, tokenizer = dflash.load(target, str(save_random_draft(tmp_path / "swa", config)))
    alone, batched = DraftLog(), DraftLog()
    singles = [dflash.generate(model, tokenizer, p, 30, acceptance=alone).tokens for p in prompts()]
    assert [r.tokens for r in batch_generate(model, tokenizer, prompts(), 30, acceptance=batched)] == singles
    assert alone.logits.keys() == batched.logits.keys()
    for n, steps in alone.logits.items():
        assert len(batched.logits[n]) == len(steps)
        for single, row in zip(steps, batched.logits[n]):
            bound = rounding_bound(model.adapter, n + 30, single, extra_layers=config.num_hidden_layers)
            assert_same_up_to_rounding(row, single, bound)


def test_auto_block_size_is_exact_and_shared_by_the_rows(make_pair):
    model, tokenizer = dflash.load(*make_pair("llama"))
    singles = [generate(model.adapter, tokenizer, p, 40).tokens for p in prompts()]
    oracle = RowOracle({n: s for n, s in zip(LENGTHS, singles)}, model.adapter.vocab_size, miss_every=5)
    results = batch_generate(model, tokenizer, prompts(), 40, acceptance=oracle, block_size="auto")
    assert [r.tokens for r in results] == singles
    sizes = [r.stats.block_sizes for r in results]
    assert all(s == sizes[0][: len(s)] for s in sizes)  # one block size per step for the whole batch
    # It probes the extremes; what it chooses next depends on measured times (test_decode_speed.py
    # checks the choice with given ones).
    assert sizes[0][:2] == [16, 2]
    with pytest.raises(DFlashError, match="block size must be between 2"):
        BatchDecoder(model, tokenizer, block_size=17)


@pytest.mark.slow  # whole batches on every family; the join/leave test stays fast
@pytest.mark.parametrize("rule", ["speculative", "match"])
def test_sampled_sequences_follow_their_own_seeds(make_pair, rule):
    model, tokenizer = dflash.load(*make_pair("qwen3"))
    acceptance = make_acceptance(SamplingSettings(temperature=1.0, top_k=20), rule)
    seeds = [11, 12, 13, 14, 15]
    singles = [dflash.generate(model, tokenizer, p, 24, acceptance=acceptance, seed=s).tokens
               for p, s in zip(prompts(), seeds)]  # fmt: skip
    batched = batch_generate(model, tokenizer, prompts(), 24, acceptance=acceptance, seeds=seeds)
    assert [r.tokens for r in batched] == singles
    assert len(set(map(tuple, singles))) == len(singles)


def test_refusals(make_pair):
    model, tokenizer = dflash.load(*make_pair("llama"))
    with pytest.raises(DFlashError, match="no prompts"):
        batch_generate(model, tokenizer, [], 8)
    with pytest.raises(DFlashError, match="2 seeds for 5 prompts"):
        batch_generate(model, tokenizer, prompts(), 8, seeds=[1, 2])
    with pytest.raises(DFlashError, match="max tokens must be at least 1"):
        batch_generate(model, tokenizer, prompts(), 0)
    decoder = BatchDecoder(model, tokenizer)
    with pytest.raises(DFlashError, match="1 max_tokens for 2 prompts"):
        decoder.insert([[5, 6], [7]], [8])
    with pytest.raises(DFlashError, match="3 acceptances for 2 prompts"):
        decoder.insert([[5, 6], [7]], [8, 8], acceptances=[None] * 3)
    assert not decoder.rows


@pytest.mark.slow  # a whole benchmark run
def test_throughput_benchmark_checks_every_batched_sequence(make_pair, tmp_path):
    target, draft = make_pair("llama", block_size=4)
    suite = tmp_path / "mini.jsonl"
    suite.write_text('{"prompt": "def add(a, b):"}\n{"prompt": "The quick brown fox"}\n{"prompt": "x = 1"}\n')
    out = tmp_path / "report"
    eval_main(["batch", "--target-model", target, "--draft-model", draft, "--suite", str(suite), "--batch-sizes", "1,3",
               "--max-tokens", "6", "--repeats", "1", "--out", str(out)])  # fmt: skip
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert [row["batch_size"] for row in rows] == [1, 3] and all(row["exact"] for row in rows)
    for name in ("sequential", "batched", "batched_auto", "plain_batched"):
        assert rows[1][name]["median"] > 0
    assert rows[1]["batched_auto_over_plain_batched"] == rows[1]["batched_auto"]["median"] / rows[1]["plain_batched"]["median"]
    assert "block auto" in (out / "report.md").read_text() and (out / "throughput.png").stat().st_size > 0
