"""Model files: directories written in the layout mlx-lm and `dflash.load_draft` read, so that a
reader (or a run killed half-way) never sees one half-written; and a file's content hash."""

import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import mlx.core as mx


@contextmanager
def atomic_directory(directory) -> Iterator[Path]:
    """Yield an empty sibling directory to fill; on success it replaces `directory` by renames.

    A leftover of an earlier interrupted write (`NAME.partial`) is removed first. The old
    directory, if any, is moved aside before the new one is renamed into place and deleted after,
    so at every moment either the old or the new directory is complete under `directory`'s name
    or its `.old` sibling."""
    directory = Path(directory)
    partial = directory.with_name(directory.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    yield partial
    if directory.exists():
        old = directory.with_name(directory.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(directory, old)
        os.replace(partial, directory)
        shutil.rmtree(old)
    else:
        os.replace(partial, directory)


def write_model(directory: Path, weights: dict, config: dict) -> None:
    """model.safetensors and config.json in `directory`, as mlx-lm and `dflash.load_draft` read them."""
    mx.save_safetensors(str(directory / "model.safetensors"), weights, metadata={"format": "mlx"})
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def file_sha256(path: Path) -> str:
    """The sha256 of a file's content, read a megabyte at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
