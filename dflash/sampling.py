"""Sampling settings: temperature and the top-p / min-p / top-k filters, applied exactly as
mlx-lm's sampler applies them, so that plain decoding and the lossless acceptance rules
(dflash/acceptance.py) draw from the same distribution."""

import math
from dataclasses import dataclass

import mlx.core as mx
from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p

from adapters.errors import DFlashError


@dataclass(frozen=True)
class SamplingSettings:
    """Temperature and filters, as mlx-lm's `make_sampler` applies them. Temperature 0 is greedy;
    top_p 1, top_k 0 and min_p 0 switch their filter off."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0

    def __post_init__(self):
        for name, value in (("temperature", self.temperature), ("top-p", self.top_p), ("min-p", self.min_p)):
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise DFlashError(f"{name} must be a number, got {value!r}")
        # Written so that NaN fails every check.
        if not 0 <= self.temperature < math.inf:
            raise DFlashError(f"temperature must be 0 (greedy) or a finite number above it, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise DFlashError(f"top-p must be in (0, 1], got {self.top_p}")
        if not (isinstance(self.top_k, int) and self.top_k >= 0):
            raise DFlashError(f"top-k must be an integer >= 0 (0: off), got {self.top_k}")
        if not 0 <= self.min_p < 1:
            raise DFlashError(f"min-p must be in [0, 1), got {self.min_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def sampling_logits(self, logits: mx.array) -> mx.array:
        """Logits [..., V] whose softmax is the distribution a token is drawn from: the filters in
        make_sampler's order (top-p, min-p, top-k; the order matters), then the temperature, as
        mlx-lm's `categorical_sampling` scales it."""
        logits = logits.astype(mx.float32)  # the acceptance test compares probabilities: no bf16 rounding
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        if self.top_p < 1:
            logprobs = apply_top_p(logprobs, self.top_p)
        if self.min_p > 0:
            logprobs = apply_min_p(logprobs, self.min_p)
        if 0 < self.top_k < logprobs.shape[-1]:
            logprobs = apply_top_k(logprobs, self.top_k)
        return logprobs * (1.0 / self.temperature)
