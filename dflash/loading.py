"""Loading targets and drafters (local directories or Hugging Face repo ids), saving drafters,
and checking that a drafter fits its target."""

import glob
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Tuple

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten


from .errors import DFlashError
from .model import DFlashDraftModel, DraftConfig

if TYPE_CHECKING:
    from adapters import DecoderAdapter

DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}


@dataclass
class DFlashModel:
    """A target model, its adapter and a drafter bound to it."""

    target: nn.Module
    adapter: "DecoderAdapter"
    draft: DFlashDraftModel

    @property
    def block_size(self) -> int:
        return self.draft.config.block_size

    @property
    def dtype(self) -> str:
        """The compute dtype (the drafter is cast to the dtype of the target's hidden states)."""
        return str(self.draft.fc.weight.dtype).removeprefix("mlx.core.")


def default_dtype() -> str:
    # On the CPU backend only fp32 matmuls go through BLAS; on Metal keep the checkpoint's dtype.
    return "float32" if mx.default_device() == mx.cpu else None


def is_hub_id(name: str) -> bool:
    return not name.startswith((".", "/", "~")) and name.count("/") == 1 and not Path(name).exists()


def resolve_path(path_or_repo: str, what: str) -> Path:
    """A local directory, or a Hugging Face repo id downloaded (config and weights only)."""
    path = Path(path_or_repo).expanduser()
    if path.is_dir():
        return path
    if not is_hub_id(path_or_repo):
        raise DFlashError(f"{what} '{path_or_repo}' not found")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(path_or_repo, allow_patterns=["*.json", "*.safetensors", "*.jinja"]))
    except Exception as e:
        raise DFlashError(f"cannot fetch {what} '{path_or_repo}' from the Hugging Face hub: {type(e).__name__}: {e}") from None


def read_weights(directory: Path, what: str) -> dict:
    files = sorted(glob.glob(str(directory / "*.safetensors")))
    if not files:
        raise DFlashError(f"{what} directory {directory} has no *.safetensors files")
    weights = {}
    for file in files:
        try:
            weights.update(mx.load(file))
        except Exception as e:
            raise DFlashError(f"cannot read {file}: {e}") from None
    return weights


def load_draft(path_or_repo: str) -> DFlashDraftModel:
    directory = resolve_path(path_or_repo, "drafter")
    try:
        config = DraftConfig.from_dict(json.loads((directory / "config.json").read_text()))
    except FileNotFoundError:
        raise DFlashError(f"drafter directory {directory} has no config.json") from None
    except (json.JSONDecodeError, ValueError, TypeError) as e:
        raise DFlashError(f"bad drafter config {directory / 'config.json'}: {e}") from None
    draft = DFlashDraftModel(config)
    weights = read_weights(directory, "drafter")
    weights = {k.removeprefix("model."): v for k, v in weights.items()}
    try:
        draft.load_weights(list(weights.items()), strict=True)
    except ValueError as e:
        raise DFlashError(f"drafter weights in {directory} do not match its config.json: {e}") from None
    mx.eval(draft.parameters())
    return draft


def save_draft(draft: DFlashDraftModel, directory, dtype: Optional[mx.Dtype] = None) -> None:
    """Write config.json + model.safetensors in the published format, atomically."""
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    weights = dict(tree_flatten(draft.parameters()))
    if dtype is not None:
        weights = {k: v.astype(dtype) for k, v in weights.items()}
    mx.save_safetensors(str(tmp / "model.safetensors"), weights, metadata={"format": "mlx"})
    (tmp / "config.json").write_text(json.dumps(draft.config.to_dict(), indent=2) + "\n")
    if directory.exists():
        old = directory.with_name(directory.name + ".old")
        os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old)
    else:
        os.replace(tmp, directory)


def check_pair(adapter: "DecoderAdapter", config: DraftConfig) -> None:
    """Raise a DFlashError naming the first way the drafter does not fit the target."""
    if config.hidden_size != adapter.hidden_size:
        raise DFlashError(
            f"drafter hidden size {config.hidden_size} does not match the target's {adapter.hidden_size}"
        )
    if config.vocab_size != adapter.vocab_size:
        raise DFlashError(f"drafter vocabulary {config.vocab_size} does not match the target's {adapter.vocab_size}")
    if config.num_target_layers != adapter.num_layers:
        raise DFlashError(
            f"drafter was trained for a {config.num_target_layers}-layer target; this target has {adapter.num_layers}"
        )
    bad = [i for i in config.target_layer_ids if not 0 <= i < adapter.num_layers]
    if bad or not config.target_layer_ids:
        raise DFlashError(
            f"drafter taps target layers {config.target_layer_ids}; the target has layers 0..{adapter.num_layers - 1}"
        )
    if not 0 <= config.mask_token_id < adapter.vocab_size:
        raise DFlashError(f"drafter mask_token_id {config.mask_token_id} is outside the vocabulary")
    if config.block_size < 2:
        raise DFlashError(f"drafter block_size {config.block_size} is below 2")


def resolve_dtype(dtype: Optional[str]) -> Optional[str]:
    """"auto": float32 on the CPU backend, the checkpoint's dtype elsewhere; None keeps the checkpoint's."""
    if dtype == "auto":
        return default_dtype()
    if dtype is not None and dtype not in DTYPES:
        raise DFlashError(f"unknown dtype '{dtype}'; choose one of {', '.join(DTYPES)}")
    return dtype


def load_target(path_or_repo: str, dtype: Optional[str] = "auto", what: str = "target"):
    """Load an mlx-lm checkpoint (local directory or hub id) in `dtype`. Returns (model, tokenizer)."""
    from mlx_lm import load as mlx_lm_load

    dtype = resolve_dtype(dtype)
    if not Path(path_or_repo).expanduser().is_dir() and not is_hub_id(path_or_repo):
        raise DFlashError(f"{what} '{path_or_repo}' not found")
    try:
        model, tokenizer = mlx_lm_load(path_or_repo)
    except Exception as e:
        raise DFlashError(f"cannot load {what} '{path_or_repo}': {type(e).__name__}: {e}") from None
    if dtype is not None:
        model.set_dtype(DTYPES[dtype])
    return model, tokenizer


def load(target: str, draft: str, dtype: Optional[str] = "auto") -> Tuple[DFlashModel, object]:
    """Load a target (mlx-lm checkpoint) and its DFlash drafter. Returns (model, tokenizer).

    dtype: "auto" (float32 on the CPU backend, the checkpoint's dtype elsewhere), None to keep
    the checkpoint's, or one of float32 / bfloat16 / float16.
    """
    # Imported here: adapters/ imports dflash, which would otherwise import adapters back.
    from adapters import adapter_for

    target_model, tokenizer = load_target(target, dtype)
    adapter = adapter_for(target_model)
    draft_model = load_draft(draft)
    check_pair(adapter, draft_model.config)
    # The drafter computes in the dtype of the target's hidden states.
    draft_model.set_dtype(adapter.embed(mx.array([[0]])).dtype)
    return DFlashModel(target_model, adapter, draft_model), tokenizer
