"""Argument types the `dflash-eval` subcommands share: a bad value is argparse's one-line error."""

import argparse
from typing import List


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
