"""Labeled prompts: the JSONL files the probe trains on and the router is evaluated on."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from ..errors import DFlashError
from .decision import ROUTES


@dataclass(frozen=True)
class LabeledPrompt:
    prompt: str
    label: str  # FAST or EXPERT
    category: Optional[str] = None


def read_labeled_prompts(path) -> List[LabeledPrompt]:
    """A JSONL file of {"prompt": ..., "label": "fast" | "expert", "category": optional}."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DFlashError(f"cannot read labeled prompts {path}: {type(e).__name__}: {e}") from None
    examples = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            example = LabeledPrompt(row["prompt"], row["label"], row.get("category"))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise DFlashError(
                f'{path}:{number}: expected {{"prompt": ..., "label": ...}}: {type(e).__name__}: {e}'
            ) from None
        if example.label not in ROUTES:
            raise DFlashError(f"{path}:{number}: label '{example.label}' is not one of {', '.join(ROUTES)}")
        if not isinstance(example.prompt, str) or not example.prompt.strip():
            raise DFlashError(f"{path}:{number}: the prompt is empty")
        examples.append(example)
    if not examples:
        raise DFlashError(f"{path} has no labeled prompts")
    return examples
