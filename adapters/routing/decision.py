"""Routes, the decision a policy returns, and the base of the policies that score P(expert)."""

from dataclasses import dataclass
from typing import Optional

from ..errors import DFlashError

FAST, EXPERT = "fast", "expert"
ROUTES = (FAST, EXPERT)
DEFAULT_THRESHOLD = 0.3  # P(expert) at or above which a scoring policy picks the expert


@dataclass(frozen=True)
class RouteDecision:
    route: str  # FAST or EXPERT
    reason: str
    policy: str  # the policy that decided, or "fallback"
    expert_probability: Optional[float] = None  # scoring policies only
    latency_s: float = 0.0  # filled in by Router.route


def check_prompt(prompt) -> None:
    if not isinstance(prompt, str) or not prompt.strip():
        raise DFlashError("the prompt is empty")


def check_threshold(threshold: float) -> None:
    if not 0.0 <= threshold <= 1.0:
        raise DFlashError(f"the routing threshold is a probability between 0 and 1, got {threshold}")


class ScoringPolicy:
    """Scores P(expert) for a prompt and always decides."""

    name = "scorer"

    def __init__(self, threshold: float = DEFAULT_THRESHOLD):
        check_threshold(threshold)
        self.threshold = threshold

    def expert_probability(self, prompt: str) -> float:
        raise NotImplementedError

    def decide(self, prompt: str) -> RouteDecision:
        check_prompt(prompt)
        p = self.expert_probability(prompt)
        route, comparison = (EXPERT, ">=") if p >= self.threshold else (FAST, "<")
        reason = f"{self.name}: P(expert) {p:.2f} {comparison} threshold {self.threshold:.2f}"
        return RouteDecision(route, reason, self.name, expert_probability=p)
