"""Prompts from local files, chat formatting, regeneration by the target with its on-disk
cache and mid-way resume."""

import importlib
import json
import os
import shutil
from dataclasses import fields
from pathlib import Path

import pytest

import dflash  # noqa: F401  (OpenBLAS before mlx)
from adapters.errors import DFlashError
from dflash.generate import generate
from tests.helpers import make_tiny_data
from train import data
from train.cli import build_parser, main
from train.dflash_train import TrainConfig
from train.data import load_prompts, load_sequences, regenerate


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_data(tmp_path_factory.mktemp("data"))


def test_prompts_from_local_files(tmp_path):
    (tmp_path / "chats.jsonl").write_text(
        json.dumps({"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]}) + "\n"
        + json.dumps({"conversations": [{"from": "human", "value": "hello"}]}) + "\n"
    )  # fmt: skip
    assert load_prompts(str(tmp_path / "chats.jsonl")) == ["hi", ""]  # column "messages" found first
    (tmp_path / "alpaca.jsonl").write_text(json.dumps({"instruction": "Sum", "input": "1 2", "output": "3"}) + "\n")
    assert load_prompts(str(tmp_path / "alpaca.jsonl")) == ["Sum\n\n1 2"]
    text_dir = tmp_path / "texts"
    text_dir.mkdir()
    (text_dir / "a.txt").write_text("one\ntwo\n")
    (text_dir / "b.txt").write_text("three\n")
    assert load_prompts(str(text_dir), limit=2) == ["one", "two"]
    with pytest.raises(DFlashError, match="no column 'question'"):
        load_prompts(str(tmp_path / "alpaca.jsonl"), field="question")
    with pytest.raises(DFlashError, match="not found|cannot load"):
        load_prompts(str(tmp_path / "missing.jsonl"))


def test_responses_are_the_targets_greedy_answers(tiny):
    target, data_dir = tiny
    meta = json.loads((data_dir / "meta.json").read_text())
    assert meta["chat"] and meta["temperature"] == 0.0
    model, tokenizer, adapter = data.load_training_target(str(target))
    stops = adapter.stop_tokens(tokenizer)
    sequences = load_sequences(str(data_dir))
    assert len(sequences) >= 20
    for sequence in sequences[:3]:
        # The chat template's own text, as `dflash.generate(..., chat=True)` formats it.
        assert tokenizer.decode(sequence.prompt_ids).startswith("<|begin_of_text|><|user|>")
        plain = generate(adapter, tokenizer, sequence.prompt_ids, 40).tokens
        stopped = sequence.response_ids[-1] in stops
        assert sequence.response_ids == plain + sequence.response_ids[-1:] * stopped


def test_rerun_reuses_the_cache_and_resumes_a_killed_run(tiny, tmp_path, monkeypatch):
    target, data_dir = tiny
    meta = json.loads((data_dir / "meta.json").read_text())
    complete = (data_dir / "responses.jsonl").read_text()

    # A run killed after its first batch, in the middle of writing the second.
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    (resumed / "meta.json").write_text(json.dumps(meta))
    lines = complete.splitlines(True)
    (resumed / "responses.jsonl").write_text("".join(lines[:8]) + lines[8][:20])
    regenerate(str(target), meta["prompts"], str(resumed), max_tokens=40, batch_size=8)
    assert (resumed / "responses.jsonl").read_text() == complete

    # A run over the first 8 prompts, extended to all of them by a rerun without the limit.
    extended = tmp_path / "extended"
    regenerate(str(target), meta["prompts"], str(extended), limit=8, max_tokens=40, batch_size=8)
    assert (extended / "responses.jsonl").read_text() == "".join(lines[:8])
    regenerate(str(target), meta["prompts"], str(extended), max_tokens=40, batch_size=8)
    assert (extended / "responses.jsonl").read_text() == complete

    monkeypatch.setattr(importlib.import_module("mlx_lm.generate"), "BatchGenerator", None)  # no generating
    regenerate(str(target), meta["prompts"], str(data_dir), max_tokens=40, batch_size=8)
    assert (data_dir / "responses.jsonl").read_text() == complete

    with pytest.raises(DFlashError, match="other settings .*max_tokens"):
        regenerate(str(target), meta["prompts"], str(data_dir), max_tokens=50, batch_size=8)


def test_sampled_responses(tiny, tmp_path):
    target, data_dir = tiny
    prompts = json.loads((data_dir / "meta.json").read_text())["prompts"]
    sampled = regenerate(
        str(target), prompts, str(tmp_path / "sampled"), limit=8, max_tokens=20, temperature=1.0, seed=3
    )
    greedy = {s.index: s.response_ids for s in load_sequences(str(data_dir))}
    answers = {s.index: s.response_ids for s in load_sequences(str(sampled))}
    assert any(answers[i] != greedy[i][: len(answers[i])] for i in answers)


def test_bad_input_is_a_one_line_error(tiny, tmp_path, capsys):
    target, data_dir = tiny
    missing = tmp_path / "nothing"
    assert main(["run", "--target", str(target), "--data", str(missing), "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.splitlines() == [f"dflash-train: error: '{missing}' is not a data directory; "
                                                    "make one with `dflash-train regenerate`"]  # fmt: skip
    arguments = ["run", "--target", str(target), "--data", str(data_dir), "--out", str(tmp_path), "--batch-size", "64"]
    assert main(arguments + ["--wandb", "disabled"]) == 2
    assert "do not fill one batch of 64" in capsys.readouterr().err


def test_a_single_file_target_is_fingerprinted_by_its_file(tmp_path):
    weights = tmp_path / "model.gguf"
    weights.write_bytes(b"GGUF" + bytes(16))
    before = data.target_fingerprint(str(weights))
    assert before != str(weights)
    weights.write_bytes(b"GGUF" + bytes(32))
    changed = data.target_fingerprint(str(weights))
    assert changed != before
    # The same file installed elsewhere, at another time: the same target.
    copy = tmp_path / "elsewhere" / "model.gguf"
    copy.parent.mkdir()
    copy.write_bytes(weights.read_bytes())
    os.utime(copy, ns=(0, 0))
    assert data.target_fingerprint(str(copy)) == changed


def test_data_made_from_moved_copies_of_its_target_and_prompts_resumes(tiny, tmp_path):
    target, data_dir = tiny
    meta = json.loads((data_dir / "meta.json").read_text())
    moved_prompts = tmp_path / "moved" / Path(meta["prompts"]).name
    moved_prompts.parent.mkdir()
    shutil.copy(meta["prompts"], moved_prompts)
    moved_target = shutil.copytree(target, tmp_path / "moved-target")
    for file in Path(moved_target).iterdir():  # the same files, so the same times: only the place differs
        shutil.copystat(Path(target) / file.name, file)
    complete = (data_dir / "responses.jsonl").read_text()
    regenerate(str(moved_target), str(moved_prompts), str(data_dir), max_tokens=40, batch_size=8)
    assert (data_dir / "responses.jsonl").read_text() == complete
    moved_prompts.write_text(moved_prompts.read_text() + json.dumps({"prompt": "one more"}) + "\n")
    with pytest.raises(DFlashError, match="other settings .*prompts_fingerprint"):
        regenerate(str(moved_target), str(moved_prompts), str(data_dir), max_tokens=40, batch_size=8)


def test_every_training_setting_has_its_run_option():
    argv = ["run", "--target", "t", "--data", "d", "--out", "o", "--dflash2", "--selector-top-k", "8"]
    options = {k: v for k, v in vars(build_parser().parse_args(argv)).items() if k != "command"}
    assert options.keys() == {f.name for f in fields(TrainConfig)}
    config = TrainConfig(**options)
    assert config.dflash2 and config.selector_top_k == 8
