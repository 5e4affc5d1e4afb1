import json
import socket
import sys
import types

import pytest

from adapters.errors import DFlashError
from eval.suites import HUB_SUITES, Prompt, load_suite, load_suites, suite_hash


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_offline_suite_covers_code_math_prose_chat():
    prompts = load_suite("offline")
    assert {p.category for p in prompts} == {"code", "math", "prose", "chat"}
    assert len({p.id for p in prompts}) == len(prompts)
    # Interleaved, so that --limit keeps a mix of categories.
    assert {p.category for p in load_suite("offline", limit=4)} == {"code", "math", "prose", "chat"}


def test_jsonl_suite_ids_default_to_line_numbers(tmp_path):
    path = write_lines(
        tmp_path / "mine.jsonl",
        [json.dumps({"prompt": "first", "id": "a"}), "", json.dumps({"prompt": "second", "category": "math"})],
    )
    prompts = load_suite(path)
    assert prompts == [Prompt("a", "mine", "first"), Prompt("3", "mine", "second", "math")]
    assert [p.group for p in prompts] == ["mine", "mine/math"]
    assert load_suite(path, limit=1) == prompts[:1]


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "line 2: not valid JSON"),
        ('["a list"]', "line 2: expected a JSON object"),
        ('{"id": "x"}', "line 2: 'prompt' must be a string"),
        ('{"prompt": "   "}', "line 2: the prompt is empty"),
    ],
)
def test_bad_jsonl_line_names_the_line(tmp_path, line, message):
    path = write_lines(tmp_path / "bad.jsonl", ['{"prompt": "fine"}', line])
    with pytest.raises(DFlashError, match=message):
        load_suite(path)


def test_missing_unknown_empty_and_duplicate_suites(tmp_path):
    with pytest.raises(DFlashError, match="not found"):
        load_suite(str(tmp_path / "missing.jsonl"))
    with pytest.raises(DFlashError, match="unknown suite 'gsm9k'"):
        load_suite("gsm9k")
    with pytest.raises(DFlashError, match="has no prompts"):
        load_suite(write_lines(tmp_path / "empty.jsonl", [""]))
    twice = write_lines(tmp_path / "twice.jsonl", ['{"prompt": "a", "id": 1}', '{"prompt": "b", "id": 1}'])
    with pytest.raises(DFlashError, match="two prompts with id '1'"):
        load_suites([twice])


def test_hub_suites_fail_with_one_line_offline(monkeypatch):
    assert set(HUB_SUITES) == {"gsm8k", "math500", "mbpp", "mt-bench"}
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def unreachable(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    with pytest.raises(DFlashError) as error:
        load_suite("gsm8k")
    assert "openai/gsm8k" in str(error.value) and "unreachable" in str(error.value)
    assert "\n" not in str(error.value)


def test_suite_hash_follows_the_prompts():
    prompts = load_suite("offline")
    assert suite_hash(prompts) == suite_hash(load_suite("offline"))
    changed = [Prompt(p.id, p.suite, p.prompt + "!", p.category) for p in prompts]
    assert suite_hash(changed) != suite_hash(prompts)


def test_hub_suite_field_mapping(monkeypatch):
    rows = [
        {"prompt": ["Write a haiku.", "Now a limerick."], "prompt_id": 81, "category": "writing"},
        {"prompt": ["Explain DNS.", "Shorter."], "prompt_id": 82, "category": "stem"},
    ]
    requests = []

    def load_dataset(name, config, split):
        requests.append((name, config, split))
        return rows

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # read the cache: no reachability check
    # A stand-in for the `datasets` package (slow to import) that serves two MT-Bench rows.
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    prompts = load_suite("mt-bench", limit=2)
    assert requests == [("HuggingFaceH4/mt_bench_prompts", None, "train[:2]")]
    assert prompts == [
        Prompt("81", "mt-bench", "Write a haiku.", "writing"),
        Prompt("82", "mt-bench", "Explain DNS.", "stem"),
    ]


def test_humaneval_loads_offline_from_its_package(monkeypatch):
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("HumanEval needs no network"))
    prompts = load_suite("humaneval")
    assert len(prompts) == 164 and len({p.id for p in prompts}) == 164
    assert prompts[0].id == "HumanEval/0" and prompts[0].prompt.startswith("from typing import List")
    assert load_suite("humaneval", limit=3) == prompts[:3]
