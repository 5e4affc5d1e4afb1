"""Training checkpoints, for drafter and fast-model training alike.

RUN/checkpoints/step_00000100/ holds the model as its loader reads it: config.json and
model.safetensors (float32). A drafter's checkpoint is thus a drafter in the published format,
which `dflash.load_draft` reads as is. The optimizer's state (AdamW moments, step, learning
rate) and state.json (the run's settings and what the trainer needs back) sit apart in
training/, since loaders read every *.safetensors file of a model directory.

Checkpoints are written with `atomic_directory`, so a run killed at any moment leaves only
complete ones behind; the newest is resumed and the newest `keep` are kept. The settings that
a run's trajectory depends on are stored with it: resuming with other settings is refused.
"""

import json
import shutil
from pathlib import Path
from typing import Optional

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from adapters.errors import DFlashError
from dflash.files import atomic_directory, write_model

PREFIX = "step_"


def as_saved(value):
    """`value` as it reads back from JSON (tuples become lists), to compare with what was saved."""
    return json.loads(json.dumps(value))


def complete_checkpoints(run_dir) -> list:
    """The checkpoints a save finished, oldest first."""
    directory = Path(run_dir) / "checkpoints"
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.name.startswith(PREFIX) and p.name[len(PREFIX) :].isdigit())


def save_checkpoint(run_dir, step: int, model, model_config: dict, optimizer, state: dict, keep: int) -> Path:
    """Write the checkpoint of `step`; `state` must hold the run's "settings"."""
    path = Path(run_dir) / "checkpoints" / f"{PREFIX}{step:08d}"
    with atomic_directory(path) as partial:
        write_model(partial, dict(tree_flatten(model.parameters())), model_config)
        (partial / "training").mkdir()
        mx.save_safetensors(str(partial / "training" / "optimizer.safetensors"), dict(tree_flatten(optimizer.state)))
        (partial / "training" / "state.json").write_text(json.dumps({**state, "step": step}, indent=2) + "\n")
    for old in complete_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old)
    return path


def resume(run_dir, model, model_config: dict, optimizer, settings: dict) -> Optional[dict]:
    """Restore the newest complete checkpoint of `run_dir` into `model` and `optimizer` and return
    its state.json, or None when there is none. Leftovers of interrupted saves are removed."""
    complete = complete_checkpoints(run_dir)
    for leftover in set((Path(run_dir) / "checkpoints").glob("*")) - set(complete):
        shutil.rmtree(leftover)
    if not complete:
        return None
    path = complete[-1]
    state = json.loads((path / "training" / "state.json").read_text())
    saved, settings = state["settings"], as_saved(settings)
    changed = sorted(k for k in saved.keys() | settings.keys() if saved.get(k) != settings.get(k))
    if changed:
        raise DFlashError(
            f"{run_dir} holds a run with other settings ({', '.join(changed)}); use another run directory"
        )
    if json.loads((path / "config.json").read_text()) != as_saved(model_config):
        raise DFlashError(f"checkpoint {path} is of another model configuration; use another run directory")
    model.load_weights(str(path / "model.safetensors"), strict=True)
    optimizer.state = tree_unflatten(list(mx.load(str(path / "training" / "optimizer.safetensors")).items()))
    mx.eval(model.parameters(), optimizer.state)
    return state


def keep_metrics_until(metrics_file: Path, step: int) -> None:
    """A resumed run keeps its metrics history up to the checkpoint's step; the lines after it came
    from steps it redoes."""
    if metrics_file.exists():
        kept = [line for line in metrics_file.read_text().splitlines(True) if json.loads(line)["step"] <= step]
        metrics_file.write_text("".join(kept))
