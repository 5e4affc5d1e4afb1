"""Greedy DFlash output must equal mlx-lm's plain greedy decoding token for token."""

import pytest

import dflash
from dflash.generate import generate
from tests.helpers import OracleProposals, prompt_of

PROMPT_LENGTHS = [1, 7, 64, 300]


def check_exact(model, tokenizer, prompt, max_tokens, block_size=None, oracle=False, miss_every=7):
    reference = generate(model.adapter, tokenizer, prompt, max_tokens).tokens
    acceptance = OracleProposals(reference, model.adapter.vocab_size, miss_every) if oracle else None
    result = dflash.generate(model, tokenizer, prompt, max_tokens, block_size=block_size, acceptance=acceptance)
    assert result.tokens == reference
    assert sum(result.stats.acceptance_lengths) + 1 >= len(result.tokens)
    return result


@pytest.mark.slow  # the family x tied x GQA matrix
@pytest.mark.parametrize("family", ["llama", "qwen3"])
@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("kv_heads", [2, 4], ids=["gqa", "mha"])
def test_families_tied_untied_gqa(make_pair, family, tied, kv_heads):
    model, tokenizer = dflash.load(*make_pair(family, tied=tied, kv_heads=kv_heads))
    check_exact(model, tokenizer, prompt_of(12), 40)
    result = check_exact(model, tokenizer, prompt_of(20, seed=1), 60, oracle=True)
    assert result.stats.mean_acceptance > 3  # the accepting paths really ran


@pytest.mark.slow  # the block size x prompt length matrix
@pytest.mark.parametrize("block_size", [2, 4, 8, 16])
@pytest.mark.parametrize("prompt_length", PROMPT_LENGTHS)
def test_block_sizes_and_prompt_lengths(make_pair, block_size, prompt_length):
    model, tokenizer = dflash.load(*make_pair("qwen3" if prompt_length % 2 else "llama"))
    prompt = prompt_of(prompt_length, seed=prompt_length)
    check_exact(model, tokenizer, prompt, 24, block_size=block_size)
    check_exact(model, tokenizer, prompt, 40, block_size=block_size, oracle=True, miss_every=5)


@pytest.mark.parametrize("max_tokens", [1, 2, 15, 16, 17, 33])
def test_max_token_boundary(make_pair, max_tokens):
    model, tokenizer = dflash.load(*make_pair("llama"))
    # miss_every larger than max_tokens: every block is accepted in full up to the boundary
    result = check_exact(model, tokenizer, prompt_of(9), max_tokens, oracle=True, miss_every=1000)
    assert len(result.tokens) == max_tokens
    assert result.finish_reason == "length"


@pytest.mark.parametrize("eos_at", [3, 10, 17])
def test_eos_inside_accepted_block(make_pair, eos_at):
    model, tokenizer = dflash.load(*make_pair("qwen3"))
    prompt = prompt_of(9)
    free_run = generate(model.adapter, tokenizer, prompt, 40).tokens
    eos = free_run[eos_at]
    stop_at = free_run.index(eos)  # the first occurrence is where both decoders must stop
    tokenizer.eos_token_ids = {eos}
    result = check_exact(model, tokenizer, prompt, 40, oracle=True, miss_every=1000)
    assert result.tokens == free_run[:stop_at]
    assert result.finish_reason == "stop"


def test_random_drafter_rejects_but_stays_exact(make_pair):
    model, tokenizer = dflash.load(*make_pair("llama", tied=False))
    result = check_exact(model, tokenizer, prompt_of(30), 50)
    assert all(1 <= n <= model.block_size for n in result.stats.acceptance_lengths)


def test_drafter_saved_and_reloaded_generates_the_same(make_pair, tmp_path):
    target, draft = make_pair("llama")
    model, tokenizer = dflash.load(target, draft)
    dflash.save_draft(model.draft, tmp_path / "copy")
    reloaded, _ = dflash.load(target, str(tmp_path / "copy"))
    prompt = prompt_of(16)
    assert dflash.generate(model, tokenizer, prompt, 30).tokens == dflash.generate(reloaded, tokenizer, prompt, 30).tokens
    assert dflash.generate(model, tokenizer, prompt, 30).stats.acceptance_lengths == dflash.generate(
        reloaded, tokenizer, prompt, 30
    ).stats.acceptance_lengths


def test_text_prompt_with_chat_template_streams_the_same_text(make_pair):
    model, tokenizer = dflash.load(*make_pair("llama"))
    pieces = list(dflash.stream_generate(model, tokenizer, "Write add(a, b).", 30, chat=True))
    result = dflash.generate(model, tokenizer, "Write add(a, b).", 30, chat=True)
    assert "".join(p.text for p in pieces) == result.text
    assert [t for p in pieces for t in p.tokens] == result.tokens
    assert result.text
