"""DFlash 2's modules against their definitions computed directly (the convolution, the path
selector, the selector's training loss with the gold token among its candidates), and a tiny
training run that saves a drafter in the published format that decodes exactly."""

import json
from dataclasses import replace
from types import SimpleNamespace

import mlx.core as mx
import numpy as np
import pytest

import dflash
from dflash import DFlashError
from dflash.dflash2 import CandidateSelector, DynamicConv
from dflash.generate import plain_generate
from tests.helpers import make_tiny_data, metrics, tiny_config, weights
from train.dflash_train import selector_loss, train, with_gold


# ---------------------------------------------------------------------------------------------
# The modules against their definitions


def test_convolution_is_its_definition():
    """y_t = sum_j (base[site, j, c] + k[t, site, j, c // G]) x[t - j, c], zero before the block."""
    mx.random.seed(3)
    conv = DynamicConv(hidden_size=32, kernel_size=2, group_size=16)
    conv.base_kernel = mx.random.normal(conv.base_kernel.shape)
    conv.kernel_projection.weight = mx.random.normal(conv.kernel_projection.weight.shape)
    x, normed = mx.random.normal((2, 5, 32)), mx.random.normal((2, 5, 32))
    kernels = conv.kernels(normed)
    base, k, xs = np.array(conv.base_kernel), np.array(kernels), np.array(x)
    assert k.shape == (2, 5, 2, 2, 2)  # rows, positions, sites, taps, groups
    np.testing.assert_allclose(k.reshape(2, 5, -1), np.array(normed) @ np.array(conv.kernel_projection.weight).T,
                               rtol=1e-5, atol=1e-5)  # fmt: skip
    for site in (0, 1):
        y = np.array(conv(x, kernels, site))
        expected = np.zeros_like(xs)
        for n in range(2):
            for t in range(5):
                for c in range(32):
                    for j in range(2):
                        if t - j >= 0:
                            expected[n, t, c] += (base[site, j, c] + k[n, t, site, j, c // 16]) * xs[n, t - j, c]
        np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_a_fresh_convolution_is_the_identity():
    conv = DynamicConv(hidden_size=32, kernel_size=2, group_size=16)
    x = mx.random.normal((1, 4, 32))
    assert mx.array_equal(conv(x, conv.kernels(x), 0), x) and mx.array_equal(conv(x, conv.kernels(x), 1), x)


def test_selector_path_is_its_definition():
    """Greedy left to right: position t takes the top-k candidate b maximising
    U_t(b) + <A(previous) * H(h_t), B(b)>, the first previous being the anchor."""
    mx.random.seed(5)
    selector = CandidateSelector(hidden_size=24, vocab_size=40, rank=6, top_k=5)
    hidden, logits, anchors = mx.random.normal((3, 7, 24)), mx.random.normal((3, 7, 40)), mx.array([1, 17, 39])
    path = np.array(selector(hidden, logits, anchors))
    A, B = np.array(selector.predecessor_codebook), np.array(selector.successor_codebook)
    H = np.array(hidden) @ np.array(selector.hidden_projection.weight).T
    U = np.array(logits)
    for n in range(3):
        previous = int(anchors[n])
        for t in range(7):
            candidates = np.argsort(-U[n, t])[:5]
            scores = [U[n, t, b] + np.sum(A[previous] * H[n, t] * B[b]) for b in candidates]
            previous = int(candidates[int(np.argmax(scores))])
            assert path[n, t] == previous
    # the pair term matters: the path is not the per-position argmax
    assert (path != np.argmax(U, axis=-1)).any()


# ---------------------------------------------------------------------------------------------
# Training


def test_the_gold_token_joins_the_candidates_in_place_of_the_weakest():
    logits = mx.array([[[0.0, 5.0, 4.0, 1.0, 3.0], [2.0, 0.0, 1.0, 9.0, 8.0]]])
    candidates = mx.array([[[1, 2, 4], [3, 4, 0]]])
    gold = with_gold(candidates, logits, mx.array([[0, 4]]))
    assert gold.tolist() == [[[1, 2, 0], [3, 4, 0]]]  # 4 (logit 3) gave way to 0; 4 was there


def test_selector_loss_is_the_cross_entropy_of_its_scores_after_the_gold_path():
    mx.random.seed(2)
    selector = CandidateSelector(hidden_size=16, vocab_size=12, rank=4, top_k=3)
    hidden, logits = mx.random.normal((2, 3, 16)), mx.random.normal((2, 3, 12))
    tokens, labels = mx.array([[5, 2, 2, 2], [7, 2, 2, 2]]), mx.array([[1, 9, 4], [0, 0, 11]])
    weights = mx.array([[1.0, 0.5, 0.25], [1.0, 0.5, 0.0]])
    blocks = SimpleNamespace(tokens=tokens, labels=labels, weights=weights)
    loss, _ = selector_loss(selector, hidden, logits, blocks)
    A, B = np.array(selector.predecessor_codebook), np.array(selector.successor_codebook)
    H, U = np.array(hidden) @ np.array(selector.hidden_projection.weight).T, np.array(logits)
    expected = 0.0
    for n in range(2):
        for t in range(3):
            gold, previous = int(labels[n, t]), int(tokens[n, 0]) if t == 0 else int(labels[n, t - 1])
            candidates = list(np.argsort(-U[n, t])[:3])
            if gold not in candidates:
                candidates[-1] = gold
            scores = np.array([U[n, t, b] + np.sum(A[previous] * H[n, t] * B[b]) for b in candidates])
            log_softmax = scores - scores.max() - np.log(np.exp(scores - scores.max()).sum())
            expected -= float(weights[n, t]) * log_softmax[candidates.index(gold)]
    assert loss.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.slow  # a whole training run
def test_training_a_dflash2_drafter(tmp_path):
    target, data_dir = make_tiny_data(tmp_path, "llama")
    config = tiny_config(target, data_dir, tmp_path / "run", dflash2=True, selector_rank=8, selector_top_k=8)
    drafter = train(config)
    records = metrics(tmp_path / "run")
    assert records[-1]["loss"] < records[0]["loss"] and records[-1]["selector_loss"] < records[0]["selector_loss"]
    saved = json.loads((drafter / "config.json").read_text())
    assert saved["architectures"] == ["DFlash2DraftModel"]
    assert {"selector_rank": 8, "selector_top_k": 8, "conv_group_size": 16, "conv_kernel_size": 2,
            "block_size": 8}.items() <= saved["dflash_config"].items()  # fmt: skip
    trained = weights(drafter)
    assert "candidate_selector.predecessor_codebook" in trained
    assert not mx.array_equal(trained["layers.0.attention_conv.base_kernel"],
                              DynamicConv(64, 2, 16).base_kernel)  # the convolutions trained  # fmt: skip
    model, tokenizer = dflash.load(str(target), str(drafter))
    prompt = [5, 17, 99, 230]
    assert dflash.generate(model, tokenizer, prompt, 24).tokens == plain_generate(model.adapter, tokenizer, prompt, 24).tokens
    with pytest.raises(DFlashError, match="conv_group_size 24 does not divide hidden_size 64"):
        train(replace(config, out=str(tmp_path / "bad"), conv_group_size=24))
