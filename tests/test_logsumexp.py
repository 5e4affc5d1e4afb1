"""train/logsumexp.py: the log-sum-exp and cross-entropy of the training losses equal MLX's, values
and gradients, within what float32 arithmetic allows; the numpy path is the one the CPU takes."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from train import logsumexp as module
from train.logsumexp import cross_entropy, logsumexp

EPS = float(np.finfo(np.float32).eps)


@pytest.fixture
def logits():
    # a training step's shape in small: positions x vocabulary, logits of a trained head's scale
    return mx.random.normal((3, 7, 1000), key=mx.random.key(0)) * 8.0


def test_the_cpu_takes_the_numpy_path(logits, monkeypatch):
    calls = []
    numpy_path = module._numpy_logsumexp
    monkeypatch.setattr(module, "_numpy_logsumexp", lambda x: calls.append(x.shape) or numpy_path(x))
    logsumexp(logits)
    logsumexp(logits.astype(mx.bfloat16))  # numpy has no bfloat16: MLX's own
    assert mx.default_device().type == mx.DeviceType.cpu and calls == [logits.shape]


def test_values_and_gradients_equal_mlx(logits):
    labels = mx.random.randint(0, logits.shape[-1], logits.shape[:-1], key=mx.random.key(1))
    weights = mx.random.uniform(shape=labels.shape, key=mx.random.key(2))

    def ours(x):
        return (cross_entropy(x, labels) * weights).sum()

    def mlx(x):
        return (nn.losses.cross_entropy(x, labels) * weights).sum()

    (value, grad), (expected, expected_grad) = mx.value_and_grad(ours)(logits), mx.value_and_grad(mlx)(logits)
    # Each sum of V exponentials carries a relative error of at most V * eps in float32, so each
    # log-sum-exp an absolute one of V * eps. The gradient is weight * (softmax - one-hot): each
    # softmax term is off by at most (V + 2) eps of itself (through the log-sum-exp, the exp and
    # the product), and the one-hot subtraction and the weighting round once more each.
    vocab = logits.shape[-1]
    assert abs(value.item() - expected.item()) <= vocab * EPS * weights.sum().item() + EPS * abs(expected.item())
    weight = weights[..., None]
    bound = (vocab + 2) * EPS * weight * mx.softmax(logits, axis=-1) + 2 * EPS * weight
    assert mx.all(mx.abs(grad - expected_grad) <= bound).item()
    assert mx.allclose(logsumexp(logits), mx.logsumexp(logits, axis=-1), rtol=0, atol=vocab * EPS).item()
