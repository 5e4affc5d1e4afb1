"""The LLM judge: an instruction-tuned fast model classifies the prompt through the next-token
probabilities of the two labels of a classification request (no free text)."""

from typing import List

import mlx.core as mx

from ..errors import DFlashError
from .decision import DEFAULT_THRESHOLD, EXPERT, FAST, ScoringPolicy
from .fast_model import FastModel

JUDGE_MAX_CHARS = 2000  # the judge reads the first characters of a long prompt
JUDGE_LABELS = {FAST: "simple", EXPERT: "complex"}
JUDGE_PROMPT = (
    "Decide which assistant should answer the request below.\n"
    'Answer "simple" for greetings, small talk, simple facts, rewriting or translating a given text, '
    "short advice or light creative writing.\n"
    'Answer "complex" for programming, debugging, math, multi-step reasoning, puzzles or in-depth analysis.\n\n'
    'Request:\n"""\n{prompt}\n"""\n\nAnswer with one word: simple or complex.'
)


class LLMJudge(ScoringPolicy):
    """An instruction-tuned model classifies the prompt; P(expert) is the share of the next-token
    probability that goes to "complex" rather than "simple" (in their usual spellings)."""

    name = "judge"

    def __init__(self, fast: FastModel, threshold: float = DEFAULT_THRESHOLD):
        super().__init__(threshold)
        self.fast = fast
        self.label_tokens = {route: self.first_tokens(word) for route, word in JUDGE_LABELS.items()}
        # A token both labels start with (a lone space, a single letter) tells them apart from nothing.
        shared = self.label_tokens[FAST] & self.label_tokens[EXPERT]
        self.label_tokens = {route: sorted(ids - shared) for route, ids in self.label_tokens.items()}
        if not all(self.label_tokens.values()):
            raise DFlashError(
                "the judge's tokenizer cannot tell the labels 'simple' and 'complex' apart by their first token"
            )

    def first_tokens(self, word: str) -> set:
        variants = (word, word.capitalize(), " " + word, " " + word.capitalize())
        return {ids[0] for ids in (self.fast.tokenizer.encode(v, add_special_tokens=False) for v in variants) if ids}

    def judge_tokens(self, prompt: str) -> List[int]:
        request = JUDGE_PROMPT.format(prompt=prompt[:JUDGE_MAX_CHARS])
        tokenizer = self.fast.tokenizer
        if getattr(tokenizer, "chat_template", None) is None:
            return tokenizer.encode(request + "\nAnswer:")
        return tokenizer.encode(self.fast.adapter.apply_chat_template(tokenizer, request), add_special_tokens=False)

    def expert_probability(self, prompt: str) -> float:
        logits = self.fast.model(mx.array(self.judge_tokens(prompt))[None])[0, -1].astype(mx.float32)
        probabilities = mx.softmax(logits)
        fast_mass = probabilities[mx.array(self.label_tokens[FAST])].sum()
        expert_mass = probabilities[mx.array(self.label_tokens[EXPERT])].sum()
        return (expert_mass / (fast_mass + expert_mass)).item()
