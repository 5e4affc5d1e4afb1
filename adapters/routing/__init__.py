"""The router: send each prompt to the fast model alone or to the expert (the big target with its
DFlash drafter), with a human-readable reason.

Policies stack in a `Router`: the first policy that decides wins. `Guardrails` go first: they
only ever say "expert" (code, debugging, math, multi-step reasoning) and abstain otherwise, so
they override the scoring policy after them:

- `ProbePolicy`: a logistic-regression probe on the fast model's pooled hidden states, trained
  with `dflash-train-router`; works for any model the adapters support.
- `LLMJudge`: an instruction-tuned fast model's next-token probabilities of the two labels of a
  classification prompt (no free text).

Scoring policies send a prompt to the expert when P(expert) >= threshold. The default threshold
is below one half: when in doubt, expert.
"""

from .decision import (
    DEFAULT_THRESHOLD,
    EXPERT,
    FAST,
    ROUTES,
    RouteDecision,
    ScoringPolicy,
    check_prompt,
    check_threshold,
)
from .fast_model import FastModel, load_fast_model
from .guardrails import RULES, Guardrails, Rule
from .judge import LLMJudge
from .labeled import LabeledPrompt, read_labeled_prompts
from .probe import CANARY_PROMPT, PROBE_FORMAT, Probe, ProbePolicy, load_probe, pooled_features
from .router import ROUTERS, Router, make_router

__all__ = [
    "CANARY_PROMPT", "DEFAULT_THRESHOLD", "EXPERT", "FAST", "FastModel", "Guardrails", "LLMJudge", "LabeledPrompt",
    "PROBE_FORMAT", "Probe", "ProbePolicy", "ROUTERS", "ROUTES", "RULES", "RouteDecision", "Router", "Rule",
    "ScoringPolicy", "check_prompt", "check_threshold", "load_fast_model", "load_probe", "make_router",
    "pooled_features", "read_labeled_prompts",
]  # fmt: skip
