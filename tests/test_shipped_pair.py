"""The offline default pair (dflash/presets.py): SmolLM2-135M-Instruct from the installed wheel and
the drafter shipped for it load through the public loader with no path given, decode held-out
chat prompts exactly as plain mlx-lm does, and the drafter accepts more than its own token."""

import pytest

import dflash
from adapters.routing import EXPERT
from dflash.block_size import AUTO
from dflash.engine import Engine, Request, resolve_pair
from dflash.generate import collect, encode_prompt, generate
from dflash.presets import DEFAULT_PROMPT
from eval.suites import load_suite

pytestmark = pytest.mark.slow  # decodes held-out prompts with the real 135M target


@pytest.fixture(scope="module")
def shipped():
    pair = resolve_pair(None, None, None)
    return dflash.load(pair.target, pair.draft)


def test_shipped_drafter_is_exact_and_accepts_blocks_on_heldout_prompts(shipped):
    model, tokenizer = shipped
    lengths = []
    for prompt in load_suite("chat", limit=4):
        ids = encode_prompt(model.adapter, tokenizer, prompt.prompt, chat=True)
        result = dflash.generate(model, tokenizer, ids, max_tokens=64)
        plain = generate(model.adapter, tokenizer, ids, 64).tokens
        assert result.tokens == plain, prompt.prompt
        lengths += result.stats.acceptance_lengths
    # Greedy fp32 decoding is deterministic. A drafter that never guesses right accepts exactly 1
    # token a step; the shipped one accepts more: 1.52 here (the DFlash drafter trained beside it
    # 1.48; their tau on the bench: README, the offline default).
    assert sum(lengths) / len(lengths) > 1.3


def test_the_default_engine_decodes_with_auto_block_size_exactly():
    """With no block size asked for, the offline default decodes with "auto" (presets.DEFAULT_BLOCK_SIZE):
    every step's block is chosen between 2 and the drafter's, and the output is plain decoding's."""
    engine = Engine()
    request = Request(DEFAULT_PROMPT, max_tokens=48)
    prepared = engine.prepare(request, EXPERT)
    assert prepared.block_size == AUTO
    result = collect(engine.run(prepared))
    assert result.tokens == engine.baseline(request).tokens
    assert set(result.stats.block_sizes) <= set(range(2, engine.expert[0].block_size + 1))
