"""Acceptance rules for temperature > 0. Both are lossless: the committed tokens are
distributed exactly as plain sampling from the target with the same settings.

- `SpeculativeSampling` (Leviathan et al. 2023; Chen et al. 2023): proposal x_i is drawn from
  the drafter's distribution q_i and accepted with probability min(1, p_i(x_i) / q_i(x_i));
  at the first rejection the target's token is drawn from normalise(max(0, p_i - q_i)).
- `TokenMatching`: the target draws its own token at every position and a proposal is accepted
  while it equals that draw. Simpler, and it accepts less: sum p*q instead of sum min(p, q).

p and q are the target's and the drafter's logits put through the same `SamplingSettings`.
The rules plug into the decode loop like `GreedyAcceptance`.
"""

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import mlx.core as mx
from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p, make_sampler

from .acceptance import GreedyAcceptance
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
        # Written so that NaN fails every check.
        if not self.temperature >= 0:
            raise DFlashError(f"temperature must be 0 (greedy) or more, got {self.temperature}")
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

    def mlx_sampler(self, vocab_size: int):
        """mlx-lm's own sampler with these settings, for plain decoding with `generate_step`."""
        # apply_top_k rejects k >= V; keeping every token is the same as no top-k.
        top_k = self.top_k if self.top_k < vocab_size else 0
        return make_sampler(self.temperature, top_p=self.top_p, min_p=self.min_p, top_k=top_k)


@dataclass
class AcceptanceStats:
    """Per draft step: the proposals accepted, the proposals tested (up to and including the
    first rejection), and over those tested positions the sums of each one's chance of
    acceptance under both rules, from that step's p and q: sum_x min(p(x), q(x)) for speculative
    sampling, sum_x p(x) q(x) for token matching. Whichever rule ran, its sum is the expected
    value of its accepted count, so the realized rate checks the expected one, and the two
    expected rates show what speculative sampling gains over token matching."""

    accepted: List[int] = field(default_factory=list)
    tested: List[int] = field(default_factory=list)
    expected_speculative: List[float] = field(default_factory=list)
    expected_match: List[float] = field(default_factory=list)

    def record(self, rates: List[List[float]], accepted: int) -> None:
        """rates [2, n]: both rules' chances at each of the n drafted positions."""
        speculative, match = rates
        tested = min(accepted + 1, len(speculative))
        self.accepted.append(accepted)
        self.tested.append(tested)
        self.expected_speculative.append(sum(speculative[:tested]))
        self.expected_match.append(sum(match[:tested]))

    def _rate(self, counts: List[float]) -> float:
        return sum(counts) / sum(self.tested) if self.tested else 0.0

    @property
    def acceptance_rate(self) -> float:
        """Fraction of the tested proposals that were accepted."""
        return self._rate(self.accepted)

    @property
    def expected_speculative_rate(self) -> float:
        return self._rate(self.expected_speculative)

    @property
    def expected_match_rate(self) -> float:
        return self._rate(self.expected_match)


class SamplingAcceptance:
    """What both lossless rules share: drawing from p and q, the random keys, the statistics.

    Every generation starts its random stream afresh from `seed` (in `first_token`), so the same
    seed gives the same text; with no seed, the stream starts from mlx's global generator."""

    def __init__(self, settings: SamplingSettings, seed: Optional[int] = None):
        if settings.greedy:
            raise DFlashError("sampling acceptance needs a temperature > 0; use GreedyAcceptance for 0")
        self.settings, self.seed = settings, seed
        self.stats = AcceptanceStats()
        self._key = None

    def _next_key(self) -> mx.array:
        self._key, key = mx.random.split(self._key)
        return key

    def first_token(self, target_logits: mx.array) -> int:
        seed = self.seed if self.seed is not None else mx.random.randint(0, 2**31 - 1).item()
        self._key = mx.random.key(seed)
        self.stats = AcceptanceStats()
        return mx.random.categorical(self.settings.sampling_logits(target_logits), key=self._next_key()).item()

    def propose(self, draft_logits: mx.array) -> mx.array:
        """One draw per block position from the drafter's marginal q_i. The drafter predicts all
        positions in one pass, so q_i does not depend on the other proposals."""
        return mx.random.categorical(self.settings.sampling_logits(draft_logits), key=self._next_key())

    def _distributions(self, draft_logits: mx.array, target_logits: mx.array) -> Tuple[mx.array, mx.array, mx.array]:
        """p [n + 1, V], q [n, V] and both rules' acceptance chances at each position [2, n]."""
        p = mx.softmax(self.settings.sampling_logits(target_logits), axis=-1)
        q = mx.softmax(self.settings.sampling_logits(draft_logits), axis=-1)
        rates = mx.stack([mx.minimum(p[:-1], q).sum(axis=-1), (p[:-1] * q).sum(axis=-1)])
        return p, q, rates


def leading_true(flags: List[bool]) -> int:
    """How many flags are True before the first False."""
    return flags.index(False) if False in flags else len(flags)


class SpeculativeSampling(SamplingAcceptance):
    """Accept x_i with probability min(1, p_i(x_i) / q_i(x_i)); at the first rejection draw from
    normalise(max(0, p_i - q_i)); after a full accept the bonus token is drawn from p_n."""

    def accept(self, proposals: mx.array, draft_logits: mx.array, target_logits: mx.array) -> List[int]:
        p, q, rates = self._distributions(draft_logits, target_logits)
        n = proposals.size
        positions = mx.arange(n)
        uniform = mx.random.uniform(shape=(n,), key=self._next_key())
        accepted = uniform * q[positions, proposals] < p[positions, proposals]
        mx.eval(accepted, rates)
        count = leading_true(accepted.tolist())
        self.stats.record(rates.tolist(), accepted=count)
        last = p[n] if count == n else self.correction(p[count], q[count])
        token = mx.random.categorical(mx.log(last), key=self._next_key()).item()
        return proposals[:count].tolist() + [token]

    def correction(self, p: mx.array, q: mx.array) -> mx.array:
        """The distribution (unnormalised) of the target's token where a proposal was rejected."""
        residual = mx.maximum(p - q, 0)
        # In exact arithmetic a rejection implies mass where p > q; rounding can leave none.
        return mx.where(residual.sum() > 0, residual, p)


class TokenMatching(SamplingAcceptance):
    """Draw the target's token at every position from p_i, accept proposals while they equal
    those draws, then commit the target's draw at the first mismatch (or the bonus draw)."""

    def accept(self, proposals: mx.array, draft_logits: mx.array, target_logits: mx.array) -> List[int]:
        p, _, rates = self._distributions(draft_logits, target_logits)
        target_draws = mx.random.categorical(mx.log(p), key=self._next_key())
        mx.eval(target_draws, rates)
        target_draws, proposed = target_draws.tolist(), proposals.tolist()
        count = leading_true([x == y for x, y in zip(proposed, target_draws)])
        self.stats.record(rates.tolist(), accepted=count)
        return proposed[:count] + [target_draws[count]]


ACCEPTANCE_RULES = {"speculative": SpeculativeSampling, "match": TokenMatching}


def make_acceptance(settings: SamplingSettings, rule: str = "speculative", seed: Optional[int] = None):
    """The acceptance rule for `settings`: greedy at temperature 0 (whatever `rule` says),
    otherwise `rule`, one of ACCEPTANCE_RULES."""
    if rule not in ACCEPTANCE_RULES:
        raise DFlashError(f"acceptance rule must be one of {sorted(ACCEPTANCE_RULES)}, got {rule!r}")
    if settings.greedy:
        return GreedyAcceptance()
    return ACCEPTANCE_RULES[rule](settings, seed)
