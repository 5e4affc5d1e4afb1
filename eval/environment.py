"""Where a benchmark ran: versions, device, BLAS, dtype, commit, and hashes of what it ran on."""

import datetime
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Dict, Optional

import mlx.core as mx

from adapters.loading import resolve_path
from dflash import blas
from dflash.files import file_sha256
from dflash.presets import CHECKOUT


def environment(checkpoints: Dict[str, Optional[str]], dtype: str, suite_hash: str, seed: int) -> dict:
    """`checkpoints` maps a role (target, draft, mlx_draft) to a path or hub id, or None."""
    device = mx.default_device()
    info = mx.device_info() if hasattr(mx, "device_info") else {}
    commit, dirty = git_state()
    return {
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mlx": mx.__version__,
        "mlx_lm": importlib.metadata.version("mlx-lm"),
        "dflash_mlx": importlib.metadata.version("dflash-mlx"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": "cpu" if device.type == mx.cpu else "gpu",
        "device_name": info.get("device_name", platform.processor()),
        "cpu_count": os.cpu_count(),
        # The OpenBLAS library dflash loaded, "system" (Accelerate) or MLX's bundled reference.
        "blas": blas.loaded or "reference",
        "dtype": dtype,
        "git_commit": commit,
        "git_dirty": dirty,
        "checkpoints": {
            role: {"path": path, "sha256": checkpoint_hashes(path, role)}
            for role, path in checkpoints.items()
            if path is not None
        },
        "suite_hash": suite_hash,
        "seed": seed,
    }


def git_state():
    """(commit, whether the working tree has uncommitted changes), or (None, None) outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=CHECKOUT, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain"], cwd=CHECKOUT, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None, None
    return commit, bool(status.strip())


def checkpoint_hashes(path_or_repo: str, role: str) -> Dict[str, str]:
    """sha256 of the config.json and *.safetensors files of a checkpoint directory, or of a
    single-file checkpoint (GGUF)."""
    if Path(path_or_repo).expanduser().is_file():
        files = [Path(path_or_repo).expanduser()]
    else:
        directory = resolve_path(path_or_repo, role)
        files = sorted(directory.glob("*.safetensors")) + [directory / "config.json"]
    return {file.name: file_sha256(file) for file in files if file.is_file()}

