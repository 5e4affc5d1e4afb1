"""Arguments the `dflash-eval` subcommands share: the pair they run (the offline default unless
told) and argument types whose bad values are argparse's one-line error."""

import argparse
from typing import List

from dflash.presets import DEFAULT_DRAFT, DEFAULT_TARGET


def add_pair_arguments(parser: argparse.ArgumentParser, drafter: bool = True) -> None:
    """--target-model and, with `drafter`, --draft-model."""
    parser.add_argument(
        "--target-model", default=str(DEFAULT_TARGET),
        help="target: mlx-lm checkpoint directory, GGUF file or hub id (default: the offline default, SmolLM2)",
    )  # fmt: skip
    if drafter:
        parser.add_argument(
            "--draft-model", default=str(DEFAULT_DRAFT),
            help="DFlash drafter: directory or hub id (default: the shipped one)",
        )  # fmt: skip


def at_least(minimum: int):
    def integer(text: str) -> int:  # argparse names the function in its "invalid integer value" error
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return integer


def positive_ints(text: str) -> List[int]:
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers of at least 1, got '{text}'")
    return values
