"""Acceptance rules: how proposals are drawn from the drafter's logits and which of them the
target's logits accept. The decode loop calls only the three methods of `Acceptance`.

Rules hold settings, never per-request state: the random key and the statistics live in the
request's `DecodeState` (dflash/decode.py), passed to every call, so one rule object can serve
any number of requests at once.

- `GreedyAcceptance` (temperature 0): propose the drafter's argmax, accept the longest prefix
  equal to the target's argmax, then commit the target's own token. Output equals plain greedy
  decoding token for token.
- `SpeculativeSampling` (Leviathan et al. 2023; Chen et al. 2023): proposal x_i is drawn from the
  drafter's distribution q_i and accepted with probability min(1, p_i(x_i) / q_i(x_i)); at the
  first rejection the target's token is drawn from normalise(max(0, p_i - q_i)).
- `TokenMatching`: the target draws its own token at every position and a proposal is accepted
  while it equals that draw. Simpler, and it accepts less: sum p*q instead of sum min(p, q).
- `ArgmaxProposals`: speculative sampling with the drafter's argmax as a one-hot q: x_i is accepted
  with probability p_i(x_i), and at the first rejection the target's token is drawn from p_i
  without x_i. A block of independent draws from the drafter's marginals is incoherent (each
  position was predicted from mask tokens, not from the draws before it); the argmax block is
  the drafter's most likely continuation.

All three sampling rules are lossless: the committed tokens are distributed exactly as plain sampling
from the target with the same `SamplingSettings`, which make p and q from the logits.
"""

from typing import List, Protocol, Tuple

import mlx.core as mx

from adapters.errors import DFlashError

from .sampling import SamplingSettings
from .stats import AcceptanceStats


class Acceptance(Protocol):
    def first_token(self, target_logits: mx.array, state) -> int:
        """The token after the prompt, from the target's logits at its last position [V]."""

    def propose(self, draft_logits: mx.array, state) -> mx.array:
        """Proposals [n] from the drafter's logits at block positions 1..n [n, V]."""

    def accept(self, proposals: mx.array, draft_logits: mx.array, target_logits: mx.array, state) -> List[int]:
        """Committed tokens: the accepted proposals plus one target token. target_logits [n + 1, V]
        are the target's logits at [last committed, proposal_1..n]."""


class GreedyAcceptance:
    def first_token(self, target_logits: mx.array, state) -> int:
        return mx.argmax(target_logits, axis=-1).item()

    def propose(self, draft_logits: mx.array, state) -> mx.array:
        return mx.argmax(draft_logits, axis=-1)

    def accept(self, proposals: mx.array, draft_logits: mx.array, target_logits: mx.array, state) -> List[int]:
        target_tokens = mx.argmax(target_logits, axis=-1).tolist()
        proposed = proposals.tolist()
        n = leading_true([x == y for x, y in zip(proposed, target_tokens)])
        return proposed[:n] + [target_tokens[n]]


def leading_true(flags: List[bool]) -> int:
    """How many flags are True before the first False."""
    return flags.index(False) if False in flags else len(flags)


class SamplingAcceptance:
    """What the lossless rules share: drawing from p and q with the request's random keys, and
    recording the acceptance statistics in the request's stats."""

    def __init__(self, settings: SamplingSettings):
        if settings.greedy:
            raise DFlashError("sampling acceptance needs a temperature > 0; use GreedyAcceptance for 0")
        self.settings = settings

    def first_token(self, target_logits: mx.array, state) -> int:
        state.stats.acceptance_stats = AcceptanceStats()
        return mx.random.categorical(self.settings.sampling_logits(target_logits), key=state.next_key()).item()

    def propose(self, draft_logits: mx.array, state) -> mx.array:
        """One draw per block position from the drafter's marginal q_i. The drafter predicts all
        positions in one pass, so q_i does not depend on the other proposals."""
        return mx.random.categorical(self.settings.sampling_logits(draft_logits), key=state.next_key())

    def proposal_distribution(self, proposals: mx.array, draft_logits: mx.array) -> mx.array:
        """q [n, V]: the distribution each proposal was drawn from."""
        return mx.softmax(self.settings.sampling_logits(draft_logits), axis=-1)

    def _distributions(self, proposals: mx.array, draft_logits: mx.array,
                       target_logits: mx.array) -> Tuple[mx.array, mx.array, mx.array]:  # fmt: skip
        """p [n + 1, V], q [n, V] and both rules' acceptance chances at each position [2, n]."""
        p = mx.softmax(self.settings.sampling_logits(target_logits), axis=-1)
        q = self.proposal_distribution(proposals, draft_logits)
        rates = mx.stack([mx.minimum(p[:-1], q).sum(axis=-1), (p[:-1] * q).sum(axis=-1)])
        return p, q, rates


class SpeculativeSampling(SamplingAcceptance):
    """Accept x_i with probability min(1, p_i(x_i) / q_i(x_i)); at the first rejection draw from
    normalise(max(0, p_i - q_i)); after a full accept the bonus token is drawn from p_n."""

    def accept(self, proposals: mx.array, draft_logits: mx.array, target_logits: mx.array, state) -> List[int]:
        p, q, rates = self._distributions(proposals, draft_logits, target_logits)
        n = proposals.size
        positions = mx.arange(n)
        uniform = mx.random.uniform(shape=(n,), key=state.next_key())
        accepted = uniform * q[positions, proposals] < p[positions, proposals]
        mx.eval(accepted, rates)
        count = leading_true(accepted.tolist())
        state.stats.acceptance_stats.record(rates.tolist(), accepted=count)
        last = p[n] if count == n else self.correction(p[count], q[count])
        token = mx.random.categorical(mx.log(last), key=state.next_key()).item()
        return proposals[:count].tolist() + [token]

    def correction(self, p: mx.array, q: mx.array) -> mx.array:
        """The distribution (unnormalised) of the target's token where a proposal was rejected."""
        residual = mx.maximum(p - q, 0)
        # In exact arithmetic a rejection implies mass where p > q; rounding can leave none.
        return mx.where(residual.sum() > 0, residual, p)


class TokenMatching(SamplingAcceptance):
    """Draw the target's token at every position from p_i, accept proposals while they equal
    those draws, then commit the target's draw at the first mismatch (or the bonus draw)."""

    def accept(self, proposals: mx.array, draft_logits: mx.array, target_logits: mx.array, state) -> List[int]:
        p, _, rates = self._distributions(proposals, draft_logits, target_logits)
        target_draws = mx.random.categorical(mx.log(p), key=state.next_key())
        mx.eval(target_draws, rates)
        target_draws, proposed = target_draws.tolist(), proposals.tolist()
        count = leading_true([x == y for x, y in zip(proposed, target_draws)])
        state.stats.acceptance_stats.record(rates.tolist(), accepted=count)
        return proposed[:count] + [target_draws[count]]


class ArgmaxProposals(SpeculativeSampling):
    """Propose the drafter's argmax with q one-hot on it: speculative sampling then accepts x_i
    with probability p_i(x_i) and corrects from max(0, p_i - q_i), p_i without x_i. Its recorded
    chances are both p_i(x_i), the rule's own acceptance chance."""

    def propose(self, draft_logits: mx.array, state) -> mx.array:
        return mx.argmax(draft_logits, axis=-1)

    def proposal_distribution(self, proposals: mx.array, draft_logits: mx.array) -> mx.array:
        return (mx.arange(draft_logits.shape[-1])[None] == proposals[:, None]).astype(mx.float32)


ACCEPTANCE_RULES = {"speculative": SpeculativeSampling, "match": TokenMatching, "argmax": ArgmaxProposals}


def make_acceptance(settings: SamplingSettings, rule: str = "speculative") -> Acceptance:
    """The acceptance rule for `settings`: greedy at temperature 0 (whatever `rule` says),
    otherwise `rule`, one of ACCEPTANCE_RULES."""
    check_rule(rule)
    if settings.greedy:
        return GreedyAcceptance()
    return ACCEPTANCE_RULES[rule](settings)


def check_rule(rule: str) -> None:
    if rule not in ACCEPTANCE_RULES:
        raise DFlashError(f"acceptance rule must be one of {sorted(ACCEPTANCE_RULES)}, got {rule!r}")
