"""The training prompt set for the offline default target: prompts composed from hand-written
templates and subjects (topics.py, math.py) by a seeded generator, in five categories.

    uv run python -m train.prompts          # rewrites train/data/prompts/train.jsonl

The file ships with the project (train/data/prompts/README.md says how it was made); building it
again with the same seed gives the same file. Prompts are shuffled across categories, so the
first N of them (`dflash-train regenerate --limit N`) are a mix of all five.
"""

import json
import random
from pathlib import Path
from typing import Dict, List

from . import topics
from .math import math_prompt

PROMPT_FILE = Path(__file__).resolve().parent.parent / "data" / "prompts" / "train.jsonl"
SEED = 0
COUNTS = {"chat": 1000, "explanation": 1600, "writing": 1300, "code": 1300, "math": 1200}

AUDIENCES = ["", " Keep it simple.", " Explain it to a ten-year-old.", " Use an everyday analogy.",
             " Answer in three bullet points.", " Keep it under 100 words.", " Give one concrete example.",
             " Write it for a beginner.", " Be precise and brief."]  # fmt: skip
EXPLAIN = ["Explain {c}.", "What is {c}?", "How does {c} work?", "Why does {c} matter?", "Can you explain {c}?",
           "Give me a short introduction to {c}.", "What are the key ideas behind {c}?",
           "What are common misconceptions about {c}?", "Describe {c} in a few sentences.",
           "What should everyone know about {c}?", "Summarise {c} and how it affects daily life.",
           "I keep hearing about {c}. What is it?"]  # fmt: skip
WRITE = ["Write {form} about {subject}.", "Write {form} about {subject} in a {tone} tone.",
         "Compose {form} about {subject}.", "Can you write {form} about {subject}? Make it {tone}.",
         "Please write {form} about {subject}, no more than 150 words.", "Draft {form} about {subject}."]  # fmt: skip
CODE = ["Write a {lang} function that {task}.", "In {lang}, write code that {task}.",
        "Show me a {lang} program that {task}, with comments.", "How would I write a {lang} function that {task}?",
        "Write a {lang} function that {task}, and give an example of calling it.",
        "Write a {lang} function that {task}. Explain how it works."]  # fmt: skip
CODE_EXPLAIN = ["Explain {t} in {lang} with a short example.", "What are {t} and when should I use them?",
                "Give a simple example of {t} in {lang}.", "What are common mistakes with {t}?",
                "How do {t} work in {lang}?"]  # fmt: skip
PROS_CONS = ["What are the pros and cons of {c}?", "Is {c} worth learning about? Why?",
             "Give me three tips about {c}.", "What is a good first step for {c}?",
             "My friend says {c} is overrated. What do you think?", "What's one thing about {c} that surprised people?",
             "How can I get better at {c}?", "Tell me something interesting about {c}."]  # fmt: skip
CHOOSE = ["Should I choose {a} or {b}?", "What are the differences between {a} and {b}?",
          "I can't decide between {a} and {b}. Help me think it through.", "{a} or {b}: which would you pick and why?"]


def capitalised(text: str) -> str:
    return text[0].upper() + text[1:]


def chat(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.45:
        return capitalised(rng.choice(topics.CHAT_REQUESTS).format(situation=rng.choice(topics.CHAT_SITUATIONS)))
    if kind < 0.55:
        return rng.choice(topics.SMALL_TALK)
    if kind < 0.75:
        a, b = rng.choice(topics.CHOICES)
        return capitalised(rng.choice(CHOOSE).format(a=a, b=b))
    return rng.choice(PROS_CONS).format(c=rng.choice(topics.CONCEPTS["everyday"] + topics.CONCEPTS["society"]))


def explanation(rng: random.Random) -> str:
    concept = rng.choice(topics.CONCEPTS[rng.choice(sorted(topics.CONCEPTS))])
    return capitalised(rng.choice(EXPLAIN).format(c=concept) + rng.choice(AUDIENCES))


def writing(rng: random.Random) -> str:
    return rng.choice(WRITE).format(
        form=rng.choice(topics.WRITING_FORMS), subject=rng.choice(topics.WRITING_SUBJECTS),
        tone=rng.choice(topics.WRITING_TONES),
    )  # fmt: skip


def code(rng: random.Random) -> str:
    lang = rng.choice(topics.LANGUAGES)
    if rng.random() < 0.8:
        return rng.choice(CODE).format(lang=lang, task=rng.choice(topics.CODE_TASKS))
    return capitalised(rng.choice(CODE_EXPLAIN).format(t=rng.choice(topics.CODE_TOPICS), lang=lang))


def math(rng: random.Random) -> str:
    return math_prompt(rng)


COMPOSERS = {"chat": chat, "explanation": explanation, "writing": writing, "code": code, "math": math}


def build_prompts(seed: int = SEED, counts: Dict[str, int] = COUNTS) -> List[dict]:
    """`counts[category]` distinct prompts per category, shuffled together:
    [{"id": "category-N", "category", "prompt"}]."""
    rng = random.Random(seed)
    rows, seen = [], set()
    for category, count in counts.items():
        made, tries = 0, 0
        while made < count:
            tries += 1
            if tries > 50 * count:
                raise ValueError(f"the {category} templates give fewer than {count} distinct prompts")
            text = COMPOSERS[category](rng)
            if text not in seen:
                seen.add(text)
                made += 1
                rows.append({"id": f"{category}-{made}", "category": category, "prompt": text})
    rng.shuffle(rows)
    return rows


def read_prompts(path: Path = PROMPT_FILE) -> List[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write_prompts(rows: List[dict], path: Path = PROMPT_FILE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path
