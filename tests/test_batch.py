"""Batched speculative decoding: every sequence of a batch is token for token what it gets alone."""

import pytest

import dflash
from adapters.errors import DFlashError
from dflash.acceptance import make_acceptance
from dflash.batch import BatchDecoder, batch_generate
from dflash.generate import collect, plain_generate
from dflash.sampling import SamplingSettings
from tests.helpers import OracleProposals, prompt_of

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
@pytest.mark.parametrize("family", ["llama", "qwen3", "qwen3_moe", "gpt_oss"])
def test_every_sequence_equals_its_single_run(make_pair, family):
    model, tokenizer = dflash.load(*make_pair(family))
    singles = [plain_generate(model.adapter, tokenizer, p, 30).tokens for p in prompts()]
    assert [r.tokens for r in batch_generate(model, tokenizer, prompts(), 30)] == singles  # random drafter
    oracle = RowOracle({n: s for n, s in zip(LENGTHS, singles)}, model.adapter.vocab_size, miss_every=4)
    results = batch_generate(model, tokenizer, prompts(), 30, acceptance=oracle)
    assert [r.tokens for r in results] == singles
    lengths = [n for r in results for n in r.stats.acceptance_lengths]
    assert max(lengths) == 4 and min(lengths) < 4  # ragged: full and partial accepts within the batch


def test_stop_tokens_early_finishes_and_a_sequence_joining_midway(make_pair):
    model, tokenizer = dflash.load(*make_pair("llama"))
    free = [plain_generate(model.adapter, tokenizer, p, 40).tokens for p in prompts()]
    tokenizer.eos_token_ids = {free[1][6], free[3][20]}  # rows 1 and 3 stop early, at different steps
    singles = [dflash.generate(model, tokenizer, p, 40).tokens for p in prompts()]
    assert len(singles[1]) <= 6 and len(singles[3]) <= 20
    decoder = BatchDecoder(model, tokenizer)
    uids = [decoder.insert(p, max_tokens) for p, max_tokens in zip(prompts()[:4], (40, 40, 9, 40))]
    responses = {uid: [] for uid in uids}
    for step in range(200):
        if step == 3:  # a request joins while the others are decoding
            uids.append(decoder.insert(prompts()[4], 40))
            responses[uids[-1]] = []
        for uid, response in decoder.step():
            responses[uid].append(response)
        if not decoder.rows:
            break
    results = [collect(responses[uid]) for uid in uids]
    assert [r.tokens for r in results] == [singles[0], singles[1], singles[2][:9], singles[3], singles[4]]
    assert [r.finish_reason for r in results][1:4] == ["stop", "length", "stop"]


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
    model, tokenizer = dflash.load(*make_pair("qwen3_5"))
    with pytest.raises(DFlashError, match="batched decoding does not support qwen3_5 targets"):
        batch_generate(model, tokenizer, prompts(), 8)
    model, tokenizer = dflash.load(*make_pair("llama"))
    with pytest.raises(DFlashError, match="no prompts"):
        batch_generate(model, tokenizer, [], 8)
    with pytest.raises(DFlashError, match="2 seeds for 5 prompts"):
        batch_generate(model, tokenizer, prompts(), 8, seeds=[1, 2])
    with pytest.raises(DFlashError, match="max tokens must be at least 1"):
        batch_generate(model, tokenizer, prompts(), 0)
