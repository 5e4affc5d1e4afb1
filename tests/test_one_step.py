"""One step over rows: a sequence decoded alone (a batch of one with plain caches), as the one row
of a batch, and as a row among others, commits the same tokens, greedy and sampled with a seed."""

import pytest

import dflash
from dflash.acceptance import make_acceptance
from dflash.batch import batch_generate
from dflash.sampling import SamplingSettings
from tests.helpers import DraftLog, assert_same_up_to_rounding, prompt_of, rounding_bound

LENGTHS = [9, 2, 23]
SEEDS = [5, 6, 7]
FAST = ["llama", "qwen3_5"]  # attention only; recurrent layers
SLOW = ["qwen3", "qwen3_moe", "gpt_oss", "qwen3_next", "gemma4_text"]


def prompts():
    return [prompt_of(n, seed=n) for n in LENGTHS]


def check_one_row_and_many(model, tokenizer, tokens: int, **options) -> None:
    alone = [dflash.generate(model, tokenizer, p, tokens, seed=s, **options).tokens for p, s in zip(prompts(), SEEDS)]
    one_row = [batch_generate(model, tokenizer, [p], tokens, seeds=[s], **options)[0].tokens
               for p, s in zip(prompts(), SEEDS)]  # fmt: skip
    many = [r.tokens for r in batch_generate(model, tokenizer, prompts(), tokens, seeds=SEEDS, **options)]
    assert one_row == alone
    assert many == alone


@pytest.mark.parametrize("family", FAST + [pytest.param(f, marks=pytest.mark.slow) for f in SLOW])
def test_a_sequence_alone_in_a_batch_of_one_and_among_others_commits_the_same(make_pair, family):
    model, tokenizer = dflash.load(*make_pair(family))
    tokenizer.eos_token_ids = set()  # every run to its max tokens: whole sequences compared
    check_one_row_and_many(model, tokenizer, 20)
    sampled = make_acceptance(SamplingSettings(temperature=1.0, top_k=20), model.acceptance_rule)
    check_one_row_and_many(model, tokenizer, 20, acceptance=sampled)
    check_one_row_and_many(model, tokenizer, 20, block_size=4)


@pytest.mark.parametrize("window", [1, 4])
def test_a_draft_window_drafts_in_a_batch_what_it_drafts_alone(make_pair, window):
    """The batch's mask keeps what a sequence's RotatingKVCache keeps: the window less one
    position, plus the context a step hands the drafter."""
    model, tokenizer = dflash.load(*make_pair("llama"))
    alone, batched = DraftLog(), DraftLog()
    singles = [dflash.generate(model, tokenizer, p, 24, acceptance=alone, draft_window=window).tokens
               for p in prompts()]  # fmt: skip
    results = batch_generate(model, tokenizer, prompts(), 24, acceptance=batched, draft_window=window)
    assert [r.tokens for r in results] == singles
    whole = DraftLog()
    batch_generate(model, tokenizer, prompts(), 24, acceptance=whole)
    for n, steps in alone.logits.items():
        assert len(batched.logits[n]) == len(steps)
        for single, row in zip(steps, batched.logits[n]):
            bound = rounding_bound(model.adapter, n + 24, single, extra_layers=model.draft.config.num_hidden_layers)
            assert_same_up_to_rounding(row, single, bound)
    longest = max(LENGTHS)
    assert any(not (whole_step == step).all() for whole_step, step in zip(whole.logits[longest], alone.logits[longest]))
