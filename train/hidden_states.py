"""The target's tapped hidden states for training: computed on the fly by default, or
precomputed once to safetensors shards when the target's forward pass is the expensive part.

A shard directory holds `meta.json` and `shard_00000.safetensors`, ...: one [S, n_taps * D]
tensor per sequence, keyed by the sequence's index. Shards are written whole and renamed
into place, so a killed precompute resumes at the first missing shard.
"""

import json
import os
from pathlib import Path
from typing import List, Optional, Sequence

import mlx.core as mx
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file
from tqdm import tqdm

from adapters.errors import DFlashError

from . import data

SHARD_DTYPES = {"float32": np.float32, "float16": np.float16}


def target_hidden(adapter, tokens: Sequence[int], layer_ids: List[int]) -> mx.array:
    """Outputs of the target's layers `layer_ids` at every position, concatenated: [1, S, n_taps * D]."""
    taps = adapter.verify(mx.array(tokens)[None], adapter.make_cache(), layer_ids).taps
    return mx.stop_gradient(taps)


def shard_meta(data_dir: str, layer_ids: List[int], max_length: int, dtype: str) -> dict:
    data_meta = json.loads((Path(data_dir) / "meta.json").read_text())
    return {"data": data_meta, "target_layer_ids": list(layer_ids), "max_length": max_length, "dtype": dtype}


def precompute(target: str, data_dir: str, out: str, draft_layers: int, layer_ids: Optional[List[int]],
               max_length: int, dtype: str = "float32", shard_size: int = 64,
               sequences: Optional[int] = None) -> Path:  # fmt: skip
    """Hidden states of the layers `layer_ids` (default: the published rule for `draft_layers`) for
    the first `sequences` sequences of the data (default: all)."""
    _, _, adapter = data.load_training_target(target)
    layer_ids = layer_ids or adapter.default_layer_ids(draft_layers)
    adapter.check_layer_ids(layer_ids, "target layer ids")
    directory = Path(out)
    data.read_meta_or_create(directory, shard_meta(data_dir, layer_ids, max_length, dtype))
    to_compute = data.load_sequences(data_dir, max_length, sequences)
    for start in tqdm(range(0, len(to_compute), shard_size), desc="precompute", unit="shard"):
        shard = directory / f"shard_{start // shard_size:05d}.safetensors"
        if shard.exists():
            continue
        tensors = {}
        for sequence in to_compute[start : start + shard_size]:
            hidden = target_hidden(adapter, sequence.tokens, layer_ids)[0]
            tensors[str(sequence.index)] = np.array(hidden.astype(mx.float32)).astype(SHARD_DTYPES[dtype])
        partial = shard.with_suffix(".partial")
        save_file(tensors, str(partial))
        os.replace(partial, shard)
    return directory


class HiddenStateShards:
    """Reads one sequence's precomputed hidden states at a time."""

    def __init__(self, directory: str, data_dir: str, layer_ids: List[int], max_length: int):
        self.directory = Path(directory)
        meta_file = self.directory / "meta.json"
        if not meta_file.exists():
            raise DFlashError(f"'{directory}' is not a hidden-state directory; make one with `dflash-train precompute`")
        meta = json.loads(meta_file.read_text())
        expected = shard_meta(data_dir, layer_ids, max_length, meta["dtype"])
        changed = sorted(k for k in expected if expected[k] != meta.get(k))
        if changed:
            raise DFlashError(f"hidden states in '{directory}' were made with other settings ({', '.join(changed)})")
        self.shard_of = {}
        for shard in sorted(self.directory.glob("shard_*.safetensors")):
            with safe_open(str(shard), framework="numpy") as f:
                self.shard_of.update({int(key): shard for key in f.keys()})

    def __call__(self, index: int) -> mx.array:
        if index not in self.shard_of:
            raise DFlashError(f"sequence {index} is missing from '{self.directory}'; rerun `dflash-train precompute`")
        with safe_open(str(self.shard_of[index]), framework="numpy") as f:
            return mx.array(f.get_tensor(str(index)).astype(np.float32))[None]
