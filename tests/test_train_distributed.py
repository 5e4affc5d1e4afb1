"""Data parallel training: two ring-backend ranks on localhost, launched with mlx.launch,
train the same drafter as one rank with the same global batch."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import pytest

import dflash  # noqa: F401  (OpenBLAS before mlx)
from tests.helpers import REPO, make_tiny_data, metrics, tiny_config, weights
from train.dflash_train import train


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_ranks_match_one_rank(tmp_path):
    target, data_dir = make_tiny_data(tmp_path, "llama")
    config = tiny_config(target, data_dir, tmp_path / "one-rank", max_steps=4, eval_prompts=2)
    one_rank = train(config)

    two_rank_dir = tmp_path / "two-ranks"
    launcher = Path(sys.executable).parent / "mlx.launch"
    command = [str(launcher), "--backend", "ring", "--hosts", "127.0.0.1", "-n", "2",
               "--starting-port", str(free_port()), "--env", "OPENBLAS_NUM_THREADS=1", "--cwd", str(REPO), "--",
               sys.executable, "-m", "train.cli", "run", "--target", str(target), "--data", str(data_dir),
               "--out", str(two_rank_dir), "--draft-layers", "2", "--block-size", "8", "--anchors", "64",
               "--epochs", "3", "--batch-size", "4", "--lr", "3e-3", "--eval-prompts", "2", "--eval-every", "1000",
               "--eval-max-tokens", "24", "--wandb", "disabled", "--max-steps", "4"]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]

    one, two = metrics(tmp_path / "one-rank"), metrics(two_rank_dir)
    assert [(m["step"], m["ranks"]) for m in two] == [(1, 2), (2, 2), (3, 2), (4, 2)]
    for a, b in zip(one, two):
        assert abs(a["loss"] - b["loss"]) < 1e-4 * a["loss"] and a["accuracy"] == pytest.approx(b["accuracy"], abs=1e-3)
    a, b = weights(one_rank), weights(two_rank_dir / "drafter")
    max_difference = max(mx.abs(a[k] - b[k]).max().item() for k in a)
    print(f"1-rank vs 2-rank: max |weight difference| {max_difference:.3g} after 4 steps")
    (tmp_path / "difference.json").write_text(json.dumps({"max_weight_difference": max_difference}))
    assert max_difference < 1e-4
