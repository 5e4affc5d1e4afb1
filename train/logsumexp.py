"""The log-sum-exp over the vocabulary, the costly part of the training losses (the drafter's
cross-entropy, the fast model's distillation KL), with its gradient.

MLX's CPU `exp` is not vectorised on x86 (its AVX2 support, ml-explore/mlx pull request 3019, is
still open): over the float32 logits of a SmolLM2 drafter training step (1,792
positions x 49,152 tokens) it takes 1.3 s on a 2-core AMD EPYC, numpy's vectorised `exp` 0.09 s.
On the CPU, float32 logits therefore go through numpy here (that step: 5.7 s -> 3.6 s, the same
losses); on a GPU, and for other dtypes, it is `mx.logsumexp`.
"""

import mlx.core as mx
import numpy as np


@mx.custom_function
def _numpy_logsumexp(logits: mx.array) -> mx.array:
    values = np.asarray(logits)
    peak = values.max(axis=-1, keepdims=True)
    shifted = np.subtract(values, peak)
    np.exp(shifted, out=shifted)
    return mx.array(np.log(shifted.sum(axis=-1)) + peak[..., 0])


@_numpy_logsumexp.vjp
def _numpy_logsumexp_vjp(logits: mx.array, cotangent: mx.array, result: mx.array) -> mx.array:
    # d/dx logsumexp(x) = softmax(x) = exp(x - logsumexp(x))
    softmax = np.subtract(np.asarray(logits), np.asarray(result)[..., None])
    np.exp(softmax, out=softmax)
    softmax *= np.asarray(cotangent)[..., None]
    return mx.array(softmax)


def logsumexp(logits: mx.array) -> mx.array:
    """log(sum(exp(logits))) over the last axis, differentiable."""
    if mx.default_device().type == mx.DeviceType.cpu and logits.dtype == mx.float32:
        return _numpy_logsumexp(logits)
    return mx.logsumexp(logits, axis=-1)


def cross_entropy(logits: mx.array, labels: mx.array) -> mx.array:
    """-log softmax(logits)[label] at every position (`nn.losses.cross_entropy` with integer labels)."""
    return logsumexp(logits) - mx.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
