"""What one request's decoding measures: tokens, acceptance lengths, times, memory, and for the
sampling rules the accepted and expected proposal counts."""

from dataclasses import dataclass, field
from typing import List, Optional


def mean_acceptance(acceptance_lengths: List[int]) -> Optional[float]:
    """tau: the mean tokens committed per draft-and-verify step, over one request's steps or many
    requests' together; None before any step."""
    return sum(acceptance_lengths) / len(acceptance_lengths) if acceptance_lengths else None


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


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    cached_tokens: int = 0  # of the prompt's, those whose caches came from a prefix cache
    generated_tokens: int = 0
    acceptance_lengths: List[int] = field(default_factory=list)  # tokens committed per draft step
    block_sizes: List[int] = field(default_factory=list)  # block size of each draft step
    prompt_time: float = 0.0
    generation_time: float = 0.0
    draft_time: float = 0.0
    verify_time: float = 0.0
    peak_memory_gb: float = 0.0
    acceptance_stats: Optional[AcceptanceStats] = None  # sampling rules only (temperature > 0)

    @property
    def mean_acceptance(self) -> float:
        return mean_acceptance(self.acceptance_lengths) or 0.0

    @property
    def prompt_tps(self) -> float:
        return self.prompt_tokens / self.prompt_time if self.prompt_time else 0.0

    @property
    def generation_tps(self) -> float:
        return self.generated_tokens / self.generation_time if self.generation_time else 0.0
