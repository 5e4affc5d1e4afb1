"""Where the shipped models live, the default prompt, and the published target/drafter pairs."""

from pathlib import Path

CHECKPOINTS = Path(__file__).parent / "checkpoints"
DEFAULT_TARGET = CHECKPOINTS / "expert"
DEFAULT_DRAFT = CHECKPOINTS / "expert-dflash"
DEFAULT_FAST = CHECKPOINTS / "fast"
DEFAULT_ROUTER_PROBE = CHECKPOINTS / "router-probe.safetensors"
# A held-out prompt (train/data/heldout_prompts.jsonl): the shipped pair never trained on it.
DEFAULT_PROMPT = "Write the function `ismount` from the `ntpath` module."

# Published pairs: (target, drafter) Hugging Face repo ids.
PRESETS = {
    "qwen3-4b": ("Qwen/Qwen3-4B", "z-lab/Qwen3-4B-DFlash-b16"),
    "qwen3-8b": ("Qwen/Qwen3-8B", "z-lab/Qwen3-8B-DFlash-b16"),
    "llama3.1-8b": ("meta-llama/Llama-3.1-8B-Instruct", "z-lab/LLaMA3.1-8B-Instruct-DFlash-UltraChat"),
}
