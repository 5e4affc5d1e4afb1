"""Stacking policies: the first that decides wins, and `make_router` builds the stacks the CLIs offer."""

import time
from dataclasses import replace
from typing import Optional, Sequence

from ..errors import DFlashError
from .decision import DEFAULT_THRESHOLD, EXPERT, FAST, ROUTES, RouteDecision, check_prompt
from .fast_model import FastModel
from .guardrails import Guardrails
from .judge import LLMJudge
from .probe import ProbePolicy, load_probe

ROUTERS = ("probe", "judge", "guardrails")  # what stacks under the guardrails


class Router:
    """Asks its policies in order; the first that decides wins. When every policy abstains the
    prompt goes to `fallback`."""

    def __init__(self, policies: Sequence, fallback: str = EXPERT):
        if not policies:
            raise DFlashError("a router needs at least one policy")
        if fallback not in ROUTES:
            raise DFlashError(f"unknown route '{fallback}'; choose one of {', '.join(ROUTES)}")
        self.policies, self.fallback = list(policies), fallback

    def route(self, prompt: str) -> RouteDecision:
        check_prompt(prompt)
        tic = time.perf_counter()
        decision = None
        for policy in self.policies:
            decision = policy.decide(prompt)
            if decision is not None:
                break
        if decision is None:
            names = " and ".join(p.name for p in self.policies)
            decision = RouteDecision(self.fallback, f"{names} found nothing that needs the expert", "fallback")
        return replace(decision, latency_s=time.perf_counter() - tic)


def make_router(
    kind: str, fast: Optional[FastModel] = None, probe_path=None, threshold: float = DEFAULT_THRESHOLD
) -> Router:
    """Guardrails stacked over a probe or a judge, or guardrails alone (whose fallback is fast:
    with no scoring policy, a prompt no rule flags goes to the fast model)."""
    if kind == "guardrails":
        return Router([Guardrails()], fallback=FAST)
    if fast is None:
        raise DFlashError(f"the {kind} router needs the fast model")
    if kind == "judge":
        return Router([Guardrails(), LLMJudge(fast, threshold)])
    if kind == "probe":
        return Router([Guardrails(), ProbePolicy(load_probe(probe_path), fast, threshold)])
    raise DFlashError(f"unknown router '{kind}'; choose one of {', '.join(ROUTERS)}")
