"""Freshly initialised DFlash and DFlash 2 drafters for SmolLM2 in the drafter pilot's shape (2 layers,
block 8, mask id 16; DFlash 2 with the default selector and convolution sizes), saved to DIR/dflash
and DIR/dflash2: step costs do not depend on the weights.

    uv run python benchmarks/steps-smollm2/make_drafters.py DIR
"""

import argparse
from pathlib import Path

import dflash  # noqa: F401  (first: loads OpenBLAS before mlx)
import mlx.core as mx

from dflash.loading import save_draft
from dflash.model import DFlashDraftModel
from dflash.presets import DEFAULT_TARGET
from train.data import load_training_target
from train.dflash_train import TrainConfig, make_draft_config

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("out", type=Path, help="directory for the two drafters")
out = parser.parse_args().out
_, tokenizer, adapter = load_training_target(str(DEFAULT_TARGET))
for name, dflash2 in (("dflash", False), ("dflash2", True)):
    mx.random.seed(0)
    config = TrainConfig(target="", data="", out="", draft_layers=2, block_size=8, mask_token_id=16, dflash2=dflash2)
    save_draft(DFlashDraftModel(make_draft_config(config, adapter, tokenizer)), out / name)
