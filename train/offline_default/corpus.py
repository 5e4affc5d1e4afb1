"""Chat corpus for the offline default models, built from text that ships with Python.

Two sources, both present in every CPython install, so the models can be rebuilt offline:
- the standard library's source (`sysconfig.get_paths()["stdlib"]`, *.py): every top-level
  function and method becomes "Write the function `name` from the `module` module." -> its
  source, and every module docstring "Describe the Python module `module`." -> the docstring;
- the language reference topics of pydoc (`pydoc_data.topics.topics`): "Explain the Python
  topic 'assert'." -> the topic text.

A deterministic (seeded) set of whole modules and topics is held out: none of their samples is
trained on, and the held-out prompt list the benchmarks and the CLI use is drawn from them. The
corpus depends only on the seed and on the Python version whose stdlib is read.
"""

import ast
import json
import os
import random
import sysconfig
import textwrap
from pathlib import Path

import datasets
from pydoc_data.topics import topics as PYDOC_TOPICS

HELDOUT_PROMPTS_PATH = Path(__file__).parents[1] / "data" / "heldout_prompts.jsonl"

# Test suites are most of the stdlib's bytes but read like nothing users ask for; encodings/ is
# generated codec tables; pydoc_data/ holds the topics themselves (held-out topics would leak).
SKIPPED_DIRS = {"site-packages", "test", "tests", "idle_test", "__pycache__", "encodings", "pydoc_data"}

MIN_DOCSTRING_CHARS = 80


def function_prompt(module: str, name: str) -> str:
    kind = "method" if "." in name else "function"
    return f"Write the {kind} `{name}` from the `{module}` module."


def module_prompt(module: str) -> str:
    return f"Describe the Python module `{module}`."


def topic_prompt(topic: str) -> str:
    return f"Explain the Python topic '{topic}'."


def stdlib_modules(stdlib_dir: str | None = None) -> dict[str, Path]:
    """Dotted module name -> source path, for the stdlib's *.py files outside SKIPPED_DIRS."""
    root = Path(stdlib_dir or sysconfig.get_paths()["stdlib"])
    modules = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_DIRS)
        for filename in sorted(filenames):
            if not filename.endswith(".py"):
                continue
            parts = list(Path(dirpath, filename).relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if parts and all(p.isidentifier() for p in parts):
                modules[".".join(parts)] = Path(dirpath, filename)
    return modules


def definition_source(lines: list[str], node: ast.AST) -> str:
    """Source of a def with its decorators, dedented (methods are indented in their class)."""
    start = min([node.lineno] + [d.lineno for d in node.decorator_list])
    return textwrap.dedent("\n".join(lines[start - 1 : node.end_lineno])).strip()


def module_samples(module: str, source: str) -> list[dict]:
    """The module's docstring sample and one sample per top-level function and method."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    lines = source.splitlines()
    samples = []
    docstring = ast.get_docstring(tree)
    if docstring and len(docstring) >= MIN_DOCSTRING_CHARS:
        samples.append(
            {"id": f"module:{module}", "kind": "module", "source": module,
             "prompt": module_prompt(module), "response": docstring.strip()}
        )
    functions = (ast.FunctionDef, ast.AsyncFunctionDef)
    for node in tree.body:
        named = []
        if isinstance(node, functions):
            named.append((node.name, node))
        elif isinstance(node, ast.ClassDef):
            named += [(f"{node.name}.{n.name}", n) for n in node.body if isinstance(n, functions)]
        for name, definition in named:
            samples.append(
                {"id": f"function:{module}:{name}", "kind": "function", "source": module,
                 "prompt": function_prompt(module, name), "response": definition_source(lines, definition)}
            )
    return samples


def topic_samples() -> list[dict]:
    return [
        {"id": f"topic:{topic}", "kind": "topic", "source": topic,
         "prompt": topic_prompt(topic), "response": text.strip()}
        for topic, text in sorted(PYDOC_TOPICS.items())
    ]


def all_samples(stdlib_dir: str | None = None) -> list[dict]:
    samples = []
    for module, path in stdlib_modules(stdlib_dir).items():
        samples += module_samples(module, path.read_text(encoding="utf-8", errors="replace"))
    samples += topic_samples()
    # Some names are defined twice in one module (platform-specific branches): keep the first.
    unique = {}
    for sample in samples:
        unique.setdefault(sample["id"], sample)
    return list(unique.values())


def heldout_sources(samples: list[dict], seed: int, heldout_module_fraction: float, heldout_topics: int) -> set[str]:
    """Whole modules and topics to hold out, drawn by a seeded RNG from sorted name lists."""
    rng = random.Random(seed)
    function_counts: dict[str, int] = {}
    for s in samples:
        if s["kind"] == "function":
            function_counts[s["source"]] = function_counts.get(s["source"], 0) + 1
    # Only modules with a few functions, so each held-out module can contribute code prompts.
    candidates = sorted(m for m, n in function_counts.items() if n >= 3)
    modules = rng.sample(candidates, round(heldout_module_fraction * len(function_counts)))
    topics = rng.sample(sorted(s["source"] for s in samples if s["kind"] == "topic"), heldout_topics)
    return set(modules) | set(topics)


def build_corpus(
    seed: int = 0,
    heldout_module_fraction: float = 0.05,
    heldout_topics: int = 12,
    stdlib_dir: str | None = None,
) -> datasets.DatasetDict:
    """DatasetDict with "train" (shuffled) and "heldout" splits of chat samples.

    Columns: id, kind ("function", "module" or "topic"), source (module or topic name),
    prompt (the user turn), response (the assistant turn). Training samples whose response is
    identical to a held-out one (helpers copied between modules) are dropped as well.
    """
    samples = all_samples(stdlib_dir)
    heldout_names = heldout_sources(samples, seed, heldout_module_fraction, heldout_topics)
    heldout = [s for s in samples if s["source"] in heldout_names]
    heldout_responses = {s["response"] for s in heldout}
    train = [s for s in samples if s["source"] not in heldout_names and s["response"] not in heldout_responses]
    random.Random(seed).shuffle(train)
    return datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(train), "heldout": datasets.Dataset.from_list(heldout)}
    )


def heldout_prompts(
    heldout: datasets.Dataset,
    seed: int = 0,
    n_functions: int = 24,
    n_modules: int = 4,
    n_topics: int = 12,
    max_function_lines: int = 30,
) -> list[dict]:
    """A fixed mix of held-out code and prose requests: {"id", "prompt"} dicts.

    Functions are drawn round-robin over the held-out modules so no module dominates, and kept
    short enough (in lines) that a reference answer fits a benchmark's generation length.
    """
    rng = random.Random(seed)
    by_module: dict[str, list[dict]] = {}
    for s in heldout:
        if s["kind"] == "function" and 3 <= s["response"].count("\n") + 1 <= max_function_lines:
            by_module.setdefault(s["source"], []).append(s)
    for candidates in by_module.values():
        rng.shuffle(candidates)
    module_order = sorted(by_module)
    rng.shuffle(module_order)
    functions = []
    while len(functions) < n_functions and any(by_module.values()):
        for module in module_order:
            if by_module[module] and len(functions) < n_functions:
                functions.append(by_module[module].pop())
    modules = [s for s in heldout if s["kind"] == "module"]
    topics = [s for s in heldout if s["kind"] == "topic"]
    chosen = (
        functions
        + rng.sample(modules, min(n_modules, len(modules)))
        + rng.sample(topics, min(n_topics, len(topics)))
    )
    return [{"id": s["id"], "prompt": s["prompt"]} for s in chosen]


def write_heldout_prompts(prompts: list[dict], path: Path = HELDOUT_PROMPTS_PATH) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for p in prompts:
            f.write(json.dumps(p) + "\n")


def load_heldout_prompts(path: Path = HELDOUT_PROMPTS_PATH) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
