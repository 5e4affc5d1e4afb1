"""Drafters with a draft vocabulary (`draft_vocab_size` and the `draft_vocab` weight): the target's
LM head restricted to its rows, logits of -inf outside it, greedy output identical to plain
decoding, and checkpoints that do not fit refused (sampling: tests/test_sampling.py)."""

import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

import dflash
from adapters import adapter_for
from adapters.errors import DFlashError
from adapters.loading import load_target
from dflash.generate import generate
from tests.helpers import (
    DRAFT_VOCAB,
    FLOAT32_EPS,
    VOCAB_SIZE,
    DraftLog,
    draft_config,
    save_target,
    target_config,
    weights,
)


@pytest.fixture(scope="module")
def vocab_pair(make_pair):
    return make_pair("llama", layers=2, draft_layers=1, block_size=4, draft_vocab=DRAFT_VOCAB)


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("bits", [None, 4])
def test_the_restricted_head_is_the_targets_head_at_those_rows(tied, bits, tmp_path):
    model, _ = load_target(str(save_target(tmp_path / "target", target_config("llama", layers=1, tied=tied))))
    if bits:
        nn.quantize(model, group_size=32, bits=bits)
    adapter = adapter_for(model)
    hidden = mx.random.normal((2, 3, adapter.hidden_size), key=mx.random.key(4))
    ids = mx.array(DRAFT_VOCAB)
    restricted, whole = adapter.lm_head(hidden, adapter.head_rows(ids)), adapter.lm_head(hidden)[..., ids]
    # Dot products over the hidden size, summed in different orders: n * eps of the terms' magnitude.
    magnitude = mx.abs(hidden) @ mx.abs(adapter.head_rows(ids)).T
    assert (mx.abs(restricted - whole) <= adapter.hidden_size * FLOAT32_EPS * magnitude).all().item()


def test_the_drafter_proposes_only_its_vocabulary_and_decodes_as_plain_greedy(vocab_pair):
    model, tokenizer = dflash.load(*vocab_pair)
    assert model.draft.config.draft_vocab_size == len(DRAFT_VOCAB)
    assert weights(Path(vocab_pair[1]))["draft_vocab"].tolist() == list(DRAFT_VOCAB)
    prompt = [5, 17, 99, 230, 7]
    log = DraftLog()
    result = generate(model, tokenizer, prompt, 40, acceptance=log)
    assert result.tokens == generate(model.adapter, tokenizer, prompt, 40).tokens
    logits = np.concatenate([np.array(row) for rows in log.logits.values() for row in rows])
    outside = np.setdiff1d(np.arange(VOCAB_SIZE), DRAFT_VOCAB)
    assert np.isneginf(logits[:, outside]).all() and np.isfinite(logits[:, list(DRAFT_VOCAB)]).all()


@pytest.mark.parametrize(
    "draft_vocab",
    [DRAFT_VOCAB[::-1], DRAFT_VOCAB[:-1] + (VOCAB_SIZE,), np.array(DRAFT_VOCAB, dtype=np.float32)],
    ids=["descending", "outside", "float"],
)
def test_a_draft_vocabulary_that_does_not_fit_is_refused(draft_vocab, vocab_pair, tmp_path):
    (tmp_path / "config.json").write_text((Path(vocab_pair[1]) / "config.json").read_text())
    stored = weights(Path(vocab_pair[1]))
    stored["draft_vocab"] = mx.array(draft_vocab)
    mx.save_safetensors(str(tmp_path / "model.safetensors"), stored)
    with pytest.raises(DFlashError, match=f"draft_vocab in .* is not ascending int32 token ids below {VOCAB_SIZE}"):
        dflash.load(vocab_pair[0], str(tmp_path))


def test_a_draft_vocabulary_larger_than_the_vocabulary_is_refused(vocab_pair, tmp_path):
    config = json.loads((Path(vocab_pair[1]) / "config.json").read_text())
    config["dflash_config"]["draft_vocab_size"] = VOCAB_SIZE + 1
    (tmp_path / "config.json").write_text(json.dumps(config))
    mx.save_safetensors(str(tmp_path / "model.safetensors"), weights(Path(vocab_pair[1])))
    with pytest.raises(DFlashError, match=f"draft_vocab_size {VOCAB_SIZE + 1} exceeds the vocabulary {VOCAB_SIZE}"):
        dflash.load(vocab_pair[0], str(tmp_path))


def test_a_dflash2_selector_keeps_no_more_candidates_than_the_draft_vocabulary():
    target = target_config("llama", layers=2)
    selector = dict(conv_kernel_size=2, conv_group_size=16, selector_rank=4, selector_top_k=16)
    with pytest.raises(ValueError, match="selector_top_k 16 exceeds the vocabulary 8"):
        draft_config(target, draft_vocab_size=8, **selector)
    assert draft_config(target, draft_vocab_size=16, **selector).dflash2
