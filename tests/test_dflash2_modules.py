"""DFlash 2's modules against their definitions computed directly (the convolution, the path
selector, the selector's training loss with the gold token among its candidates), and a tiny
training run that saves a drafter in the published format that decodes exactly."""

import json
from dataclasses import replace
from types import SimpleNamespace

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.models.cache import KVCache

import dflash
from dflash import DFlashError
from dflash.dflash2 import CandidateSelector, DynamicConv
from dflash.generate import generate
from dflash.model import DFlashDraftModel, DraftLayer
from tests.helpers import (
    FLOAT32_EPS,
    assert_same_up_to_rounding,
    draft_config,
    make_tiny_data,
    metrics,
    target_config,
    tiny_config,
    weights,
)
from train.blocks import vocabulary_places
from train.dflash_train import selector_loss, train, with_gold

# ---------------------------------------------------------------------------------------------
# The modules against their definitions


def convolved_by_definition(conv, x, normed, site: int) -> np.ndarray:
    """y_t = sum_j (base[site, j, c] + k[t, site, j, c // G]) x[t - j, c], zero before the block,
    the dynamic kernels k = normed @ W^T laid out as (site, tap, group)."""
    base, xs = np.array(conv.base_kernel), np.array(x)
    n, length, dim = xs.shape
    taps, group = base.shape[1], conv.group_size
    k = (np.array(normed) @ np.array(conv.kernel_projection.weight).T).reshape(n, length, 2, taps, dim // group)
    y = np.zeros_like(xs)
    for row in range(n):
        for t in range(length):
            for c in range(dim):
                for j in range(taps):
                    if t - j >= 0:
                        y[row, t, c] += (base[site, j, c] + k[row, t, site, j, c // group]) * xs[row, t - j, c]
    return y


def random_conv(hidden_size: int) -> DynamicConv:
    conv = DynamicConv(hidden_size=hidden_size, kernel_size=2, group_size=16)
    conv.base_kernel = mx.random.normal(conv.base_kernel.shape)
    conv.kernel_projection.weight = 0.3 * mx.random.normal(conv.kernel_projection.weight.shape)
    return conv


def test_convolution_is_its_definition():
    mx.random.seed(3)
    conv = random_conv(32)
    x, normed = mx.random.normal((2, 5, 32)), mx.random.normal((2, 5, 32))
    kernels = conv.kernels(normed)
    assert kernels.shape == (2, 5, 2, 2, 2)  # rows, positions, sites, taps, groups
    # The kernels end a sum over the 32 channels, the output one over the 2 taps, of terms up to
    # |x| * (|base| + |k|) in size.
    terms = mx.abs(x).max() * (mx.abs(conv.base_kernel).max() + mx.abs(kernels).max())
    bound = (32 + 2) * FLOAT32_EPS * terms.item()
    for site in (0, 1):
        expected = mx.array(convolved_by_definition(conv, x, normed, site))
        assert_same_up_to_rounding(conv(x, kernels, site), expected, bound)


def test_a_dflash2_layer_convolves_each_sublayers_input_and_output():
    """h = x + conv_post(attention(conv_pre(n1))), out = h + conv_post'(mlp(conv_pre'(n2))), each
    convolution's kernels from its sublayer's normed input n (as z-lab's reference layer)."""
    mx.random.seed(4)
    config = draft_config(target_config("llama"), conv_kernel_size=2, conv_group_size=16, selector_rank=4,
                          selector_top_k=4)  # fmt: skip
    layer = DraftLayer(config, None)
    layer.attention_conv, layer.mlp_conv = random_conv(64), random_conv(64)
    x, context = mx.random.normal((1, 5, 64)), mx.random.normal((1, 3, 64))
    n1 = layer.input_layernorm(x)
    attended = layer.self_attn(mx.array(convolved_by_definition(layer.attention_conv, n1, n1, 0)), context, KVCache())
    h = x + mx.array(convolved_by_definition(layer.attention_conv, attended, n1, 1))
    n2 = layer.post_attention_layernorm(h)
    fed = layer.mlp(mx.array(convolved_by_definition(layer.mlp_conv, n2, n2, 0)))
    expected = h + mx.array(convolved_by_definition(layer.mlp_conv, fed, n2, 1))
    # One layer's chain of sums (rounding_bound's): four convolutions' kernels over 64 channels,
    # attention over 64 channels and 8 positions, the MLP over 64 and 128.
    bound = (4 * (64 + 2) + 64 + 8 + 64 + 128) * FLOAT32_EPS * max(1.0, mx.abs(expected).max().item())
    assert_same_up_to_rounding(layer(x, context, KVCache()), expected, bound)


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


def test_the_best_block_of_a_draft_vocabulary_is_the_one_over_the_whole_vocabulary():
    """finish_block finds the best block in the logits of the drafter's own vocabulary: the same
    selector path and argmax as over the whole vocabulary's logits (-inf outside it)."""
    mx.random.seed(6)
    config = draft_config(target_config("llama"), conv_kernel_size=2, conv_group_size=16, selector_rank=4,
                          selector_top_k=4, draft_vocab_size=40)  # fmt: skip
    draft = DFlashDraftModel(config)
    draft.draft_vocab = mx.array(np.sort(np.random.default_rng(6).choice(config.vocab_size, 40, replace=False)),
                                 dtype=mx.int32)  # fmt: skip
    selector = draft.candidate_selector
    for name in ("predecessor_codebook", "successor_codebook"):  # pair terms large enough to matter
        setattr(selector, name, 3 * getattr(selector, name))
    rows = mx.random.normal((40, 64))
    head = lambda h: h @ rows.T  # noqa: E731 (the head restricted to the draft vocabulary's rows)
    hidden, anchors = mx.random.normal((3, 7, 64)), mx.array([1, 17, 300])
    whole = np.full((3, 7, config.vocab_size), -np.inf, dtype=np.float32)
    whole[..., np.array(draft.draft_vocab)] = np.array(head(hidden))
    logits, path = draft.finish_block(hidden, head, anchors)
    assert np.array_equal(np.array(logits), whole)
    assert mx.array_equal(path, draft.candidate_selector(hidden, mx.array(whole), anchors))
    _, argmax = draft.finish_block(hidden, head, anchors, selector=False)
    assert np.array_equal(np.array(argmax), whole.argmax(-1))
    assert not mx.array_equal(path, argmax)  # the selector chose otherwise somewhere


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
    blocks = SimpleNamespace(tokens=tokens, labels=labels, weights=weights, vocab_labels=labels)
    loss, _ = selector_loss(selector, hidden, logits, blocks)
    A, B = np.array(selector.predecessor_codebook), np.array(selector.successor_codebook)
    H, U = np.array(hidden) @ np.array(selector.hidden_projection.weight).T, np.array(logits)
    expected, magnitude = 0.0, 0.0
    for n in range(2):
        for t in range(3):
            gold, previous = int(labels[n, t]), int(tokens[n, 0]) if t == 0 else int(labels[n, t - 1])
            candidates = list(np.argsort(-U[n, t])[:3])
            if gold not in candidates:
                candidates[-1] = gold
            scores = np.array([U[n, t, b] + np.sum(A[previous] * H[n, t] * B[b]) for b in candidates])
            log_softmax = scores - scores.max() - np.log(np.exp(scores - scores.max()).sum())
            expected -= float(weights[n, t]) * log_softmax[candidates.index(gold)]
            magnitude += float(weights[n, t]) * (np.abs(scores).max() + abs(log_softmax[candidates.index(gold)]))
    # float32 scores (sums over the rank 4), a log-sum-exp over the 3 candidates, 6 positions summed.
    assert abs(loss.item() - expected) <= (4 + 3 + 6) * FLOAT32_EPS * max(1.0, magnitude)


def test_the_selector_loss_over_a_draft_vocabulary_is_the_whole_vocabularys_with_the_rest_unproposable():
    mx.random.seed(3)
    selector = CandidateSelector(hidden_size=16, vocab_size=12, rank=4, top_k=3)
    draft_vocab = mx.array([0, 1, 4, 7, 9, 11])
    hidden, vocab_logits = mx.random.normal((2, 3, 16)), mx.random.normal((2, 3, 6))
    tokens, labels = mx.array([[5, 2, 2, 2], [7, 2, 2, 2]]), mx.array([[1, 9, 4], [0, 0, 11]])
    weights = mx.array([[1.0, 0.5, 0.25], [1.0, 0.5, 0.0]])
    places = vocabulary_places(np.array(draft_vocab), 12)
    restricted = SimpleNamespace(tokens=tokens, labels=labels, weights=weights, vocab_labels=mx.array(places[labels]))
    whole = SimpleNamespace(tokens=tokens, labels=labels, weights=weights, vocab_labels=labels)
    logits = mx.full((2, 3, 12), -1e9)
    logits[..., draft_vocab] = vocab_logits
    loss, chose_right = selector_loss(selector, hidden, vocab_logits, restricted, draft_vocab)
    whole_loss, whole_chose_right = selector_loss(selector, hidden, logits, whole)
    assert loss.item() == whole_loss.item() and chose_right.item() == whole_chose_right.item()


@pytest.mark.slow  # a whole training run
def test_training_a_dflash2_drafter(tmp_path):
    target, data_dir = make_tiny_data(tmp_path, "llama")
    config = tiny_config(target, data_dir, tmp_path / "run", dflash2=True, selector_rank=8, selector_top_k=8)
    drafter = train(config)
    records = metrics(tmp_path / "run")
    assert records[-1]["loss"] < records[0]["loss"] and records[-1]["selector_loss"] < records[0]["selector_loss"]
    saved = json.loads((drafter / "config.json").read_text())
    assert saved["architectures"] == ["DFlash2DraftModel"] and "rope_theta" not in saved
    assert saved["rope_parameters"] == {"rope_type": "default", "rope_theta": 10000.0}
    assert {"selector_rank": 8, "selector_top_k": 8, "conv_group_size": 16, "conv_kernel_size": 2,
            "block_size": 8}.items() <= saved["dflash_config"].items()  # fmt: skip
    trained = weights(drafter)
    assert "candidate_selector.predecessor_codebook" in trained
    assert not mx.array_equal(trained["layers.0.attention_conv.base_kernel"],
                              DynamicConv(64, 2, 16).base_kernel)  # the convolutions trained  # fmt: skip
    model, tokenizer = dflash.load(str(target), str(drafter))
    prompt = [5, 17, 99, 230]
    reference = generate(model.adapter, tokenizer, prompt, 24).tokens
    assert dflash.generate(model, tokenizer, prompt, 24).tokens == reference
    with pytest.raises(DFlashError, match="conv_group_size 24 does not divide hidden_size 64"):
        train(replace(config, out=str(tmp_path / "bad"), conv_group_size=24))
