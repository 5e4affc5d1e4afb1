"""The offline default pair shipped in dflash/checkpoints: loads through the public loader,
decodes held-out prompts exactly as plain mlx-lm does, and its drafter still drafts well."""

import json
from pathlib import Path

import pytest

import dflash
from dflash.generate import encode_prompt, generate

pytestmark = pytest.mark.slow  # decodes held-out prompts with the shipped pair

REPO = Path(__file__).resolve().parents[1]
HELDOUT = REPO / "train" / "data" / "heldout_prompts.jsonl"


@pytest.fixture(scope="module")
def shipped():
    checkpoints = REPO / "dflash" / "checkpoints"
    return dflash.load(str(checkpoints / "expert"), str(checkpoints / "expert-dflash"))


def test_shipped_drafter_is_exact_and_accepts_blocks_on_heldout_prompts(shipped):
    model, tokenizer = shipped
    prompts = [json.loads(line)["prompt"] for line in HELDOUT.read_text().splitlines()[:4]]
    lengths = []
    for prompt in prompts:
        ids = encode_prompt(model.adapter, tokenizer, prompt, chat=True)
        result = dflash.generate(model, tokenizer, ids, max_tokens=64)
        plain = generate(model.adapter, tokenizer, ids, 64).tokens
        assert result.tokens == plain, prompt
        lengths += result.stats.acceptance_lengths
    # Greedy fp32 decoding is deterministic; this drafter accepts ~3 tokens per step over the
    # first 64 tokens of these prompts, a collapsed one (like the first shipped) ~1.2.
    assert sum(lengths) / len(lengths) > 2.5
