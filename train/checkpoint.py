"""Training checkpoints, written atomically.

RUN/checkpoints/step_00000100/ is a drafter in the published format (config.json,
model.safetensors; `dflash.load_draft` reads it as is) plus training/optimizer.safetensors
(AdamW moments, step, learning rate) and training/state.json (step, seed, config, wandb
run id). It is assembled as step_00000100.partial and renamed into place, so a run killed at
any moment leaves only complete checkpoints behind; the newest complete one is resumed.
"""

import json
import os
import shutil
from pathlib import Path
from typing import Optional

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from adapters.errors import DFlashError
from dflash.loading import save_draft

PREFIX = "step_"


def complete_checkpoints(run_dir: Path) -> list:
    directory = Path(run_dir) / "checkpoints"
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.name.startswith(PREFIX) and p.name[len(PREFIX) :].isdigit())


def remove_partial_checkpoints(run_dir: Path) -> None:
    """Leftovers of a save that a kill interrupted."""
    directory = Path(run_dir) / "checkpoints"
    if directory.is_dir():
        for path in directory.iterdir():
            if not path.name[len(PREFIX) :].isdigit():
                shutil.rmtree(path)


def save_checkpoint(run_dir: Path, step: int, draft, optimizer, state: dict, keep: int) -> Path:
    final = Path(run_dir) / "checkpoints" / f"{PREFIX}{step:08d}"
    partial = final.with_name(final.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    save_draft(draft, partial)
    (partial / "training").mkdir()
    mx.save_safetensors(str(partial / "training" / "optimizer.safetensors"), dict(tree_flatten(optimizer.state)))
    (partial / "training" / "state.json").write_text(json.dumps(state, indent=2) + "\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)
    for old in complete_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old)
    return final


def load_checkpoint(path: Path, draft, optimizer) -> dict:
    """Restore the drafter's weights and the optimizer state in place; return state.json."""
    saved_config = json.loads((path / "config.json").read_text())
    if saved_config != draft.config.to_dict():
        raise DFlashError(f"checkpoint {path} is for another drafter configuration; use another --out")
    draft.load_weights(str(path / "model.safetensors"), strict=True)
    optimizer.state = tree_unflatten(list(mx.load(str(path / "training" / "optimizer.safetensors")).items()))
    return json.loads((path / "training" / "state.json").read_text())


def latest_checkpoint(run_dir: Path) -> Optional[Path]:
    checkpoints = complete_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None
