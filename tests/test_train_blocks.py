"""Anchors, block masks, loss weights and the learning-rate schedule, checked by hand, and the
training forward pass checked against the drafter's own decoding path."""

import math

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

import dflash  # noqa: F401  (OpenBLAS before mlx)
from dflash.loading import load_draft
from tests.helpers import draft_config, save_random_draft, save_target, target_config
from train.blocks import default_gamma, loss_weights, make_blocks, sample_anchors
from train.data import load_training_target
from train.hidden_states import target_hidden
from train.schedule import batch_of_step, epoch_order, learning_rate_schedule

MASK = 99


def test_blocks_of_a_hand_checked_example():
    # positions:       0   1   2 | 3   4   5   6   7      (prompt 0..2, response 3..7)
    tokens = np.array([10, 11, 12, 13, 14, 15, 16, 17])
    blocks = make_blocks(tokens, np.array([3, 6]), block_size=4, mask_token_id=MASK, gamma=2.0)
    w1, w2, w3 = 1.0, math.exp(-1 / 2), math.exp(-2 / 2)

    assert blocks.tokens.tolist() == [[13, MASK, MASK, MASK], [16, MASK, MASK, MASK]]
    assert blocks.anchors.tolist() == [3, 6]
    assert blocks.labels.tolist()[0] == [14, 15, 16]
    assert blocks.labels.tolist()[1][0] == 17  # the other two labels lie past the end
    np.testing.assert_allclose(np.array(blocks.weights), [[w1, w2, w3], [w1, 0, 0]], rtol=1e-6)

    mask = np.array(blocks.mask)
    assert mask.shape == (2 * 4, 8 + 2 * 4)  # [block positions, context + both blocks side by side]
    T, F = True, False
    # Block at 3 sees context 0..2 (strictly before its anchor) and its own 4 positions;
    # block at 6 sees context 0..5. Every position of a block sees the same keys.
    assert mask[:4].tolist() == [[T, T, T, F, F, F, F, F, T, T, T, T, F, F, F, F]] * 4
    assert mask[4:].tolist() == [[T, T, T, T, T, T, F, F, F, F, F, F, T, T, T, T]] * 4


def test_anchors_lie_in_the_response_and_leave_a_label():
    rng = np.random.default_rng(0)
    anchors = sample_anchors(rng, prompt_len=5, seq_len=40, count=10)
    assert len(anchors) == 10 and len(set(anchors.tolist())) == 10
    assert anchors.tolist() == sorted(anchors.tolist())
    assert anchors.min() >= 5 and anchors.max() <= 38
    # Fewer candidates than asked for: every response position but the last.
    assert sample_anchors(rng, prompt_len=5, seq_len=9, count=10).tolist() == [5, 6, 7]
    # Resampled every epoch, reproducible from the seed.
    draw = lambda epoch: sample_anchors(np.random.default_rng([0, epoch, 7]), 5, 400, 16).tolist()  # noqa: E731
    assert draw(0) == draw(0) and draw(0) != draw(1)
    assert sorted(epoch_order(0, 3, 10).tolist()) == list(range(10))


def test_batches_walk_a_new_order_every_epoch():
    batches = [batch_of_step(0, step, num_examples=10, batch_size=3) for step in range(6)]
    assert [epoch for epoch, _ in batches] == [0, 0, 0, 1, 1, 1]
    for epoch in (0, 1):
        seen = np.concatenate([indices for e, indices in batches if e == epoch]).tolist()
        assert seen == epoch_order(0, epoch, 10)[:9].tolist()  # one example left over sits the epoch out
    assert batches[0][1].tolist() != batches[3][1].tolist()


def test_learning_rate_warms_up_then_decays_to_the_final_rate():
    schedule = learning_rate_schedule(1.0, warmup_steps=4, total_steps=14, final_lr=0.1)
    rates = [schedule(mx.array(step)).item() for step in range(15)]
    np.testing.assert_allclose(rates[:5], [0.25, 0.5, 0.75, 1.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(rates[9], 0.1 + 0.9 * 0.5, rtol=1e-6)  # half way through the cosine
    np.testing.assert_allclose(rates[14], 0.1, rtol=1e-6)
    assert all(a >= b for a, b in zip(rates[3:], rates[4:]))
    assert learning_rate_schedule(1.0, warmup_steps=0, total_steps=10)(mx.array(0)).item() == 1.0


def test_loss_weights_and_gamma():
    assert (default_gamma(16), default_gamma(10), default_gamma(8)) == (7.0, 5.0, 4.0)
    assert default_gamma(8) < default_gamma(9) < default_gamma(10) < default_gamma(12) < default_gamma(16)
    assert default_gamma(2) == 1.0 and default_gamma(32) > 7.0
    weights = loss_weights(16, 7.0)
    assert weights.shape == (15,)
    np.testing.assert_allclose(weights, [math.exp(-(k - 1) / 7) for k in range(1, 16)], rtol=1e-6)


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_training_pass_equals_the_decoding_pass(tmp_path, family):
    """All blocks in one masked pass give what the drafter computes when decoding each block
    alone after exactly the context before its anchor."""
    config = target_config(family)
    save_target(tmp_path / "target", config)
    save_random_draft(tmp_path / "draft", draft_config(config, block_size=8))
    _, _, adapter = load_training_target(str(tmp_path / "target"))
    draft = load_draft(str(tmp_path / "draft"))
    tokens = np.random.default_rng(0).integers(3, 500, size=40)
    anchors = np.array([12, 13, 20, 37])  # overlapping blocks and one running past the end
    blocks = make_blocks(tokens, anchors, 8, draft.config.mask_token_id, 4.0)
    hidden = target_hidden(adapter, tokens.tolist(), draft.config.target_layer_ids)

    together = draft(adapter.embed(blocks.tokens), hidden, block_offset=blocks.anchors, mask=blocks.mask)
    for n, anchor in enumerate(anchors):
        alone = draft(adapter.embed(blocks.tokens[n : n + 1]), hidden[:, :anchor], draft.make_cache())
        assert mx.abs(together[n] - alone[0]).max().item() < 1e-4


def test_fresh_drafter_writes_small_residual_updates():
    from dflash.model import DFlashDraftModel
    from train.dflash_train import scale_residual_writes

    draft = DFlashDraftModel(draft_config(target_config("llama"), layers=2))
    before = dict(tree_flatten(draft.parameters()))
    scale_residual_writes(draft, 0.05)
    for name, value in tree_flatten(draft.parameters()):
        shrunk = name.endswith(("o_proj.weight", "down_proj.weight"))
        assert mx.allclose(value, before[name] * (0.05 if shrunk else 1.0)).item(), name
