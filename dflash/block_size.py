"""`--block-size auto`: every step's block size chosen from the batch's own measurements (one
sequence's, or a batch's rows' pooled), to maximise the expected tokens per second.

A step with a block of b positions commits 1 + k tokens, k the proposals accepted before the
first rejection (k <= b - 1). Over the steps so far, a_i is the share of the steps that tested
proposal i (those whose first i - 1 proposals were accepted and whose block reached i) that
accepted it; a block of b then commits E(b) = 1 + sum over i < b of a_1 a_2 ... a_i tokens on
average. A step's cost t(b) is the median time of the steps run with block b, interpolated
linearly between the sizes measured so far: the first two steps measure the largest block and
the smallest. Every later step takes the b that maximises E(b) / t(b).

Each a_i starts from a prior worth one step: 1 for the first proposal, a_(i-1) for the others
(a_i = (accepted + a_(i-1)) / (tested + 1)). A position not tested yet, or rarely, is taken to do
as well as the one before it: larger blocks are tried while they may pay, and where the first
proposals are mostly rejected the rarely tested ones after them do not look better.
"""

import statistics
from typing import Dict, List

import numpy as np

AUTO = "auto"
SMALLEST = 2


class AutoBlockSize:
    """A batch's measurements and its choice of block size, kept in its decode.Batch: one size for
    all its rows at every step (for one sequence, that request's own)."""

    def __init__(self, largest: int):
        self.largest = largest
        self.tested = [0] * largest  # tested[i]: steps that tested proposal i (index 0 unused)
        self.accepted = [0] * largest
        self.seconds: Dict[int, List[float]] = {}  # step times by block size

    def record(self, block_size: int, accepted: int, seconds: float) -> None:
        """A step of `block_size` positions that accepted `accepted` proposals in `seconds`."""
        for i in range(1, min(accepted + 1, block_size - 1) + 1):
            self.tested[i] += 1
            self.accepted[i] += i <= accepted
        self.seconds.setdefault(block_size, []).append(seconds)

    def expected_tokens(self) -> np.ndarray:
        """E(b) for b = 0 .. largest (entry 0 unused)."""
        rates, rate = [], 1.0
        for tested, accepted in zip(self.tested[1:], self.accepted[1:]):
            rate = (accepted + rate) / (tested + 1)
            rates.append(rate)
        return np.concatenate([[0.0, 1.0], 1 + np.cumsum(np.cumprod(rates))])

    def step_costs(self) -> np.ndarray:
        """t(b) for b = 0 .. largest, interpolated between the measured sizes."""
        measured = sorted(self.seconds)
        medians = [statistics.median(self.seconds[b]) for b in measured]
        return np.interp(np.arange(self.largest + 1), measured, medians)

    def choose(self) -> int:
        for probe in (self.largest, SMALLEST):
            if probe not in self.seconds:
                return probe
        tokens_per_second = self.expected_tokens() / self.step_costs()
        return SMALLEST + int(np.argmax(tokens_per_second[SMALLEST:]))
