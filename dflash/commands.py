"""What the commands share: the options that choose the models an Engine loads (dflash-mlx,
dflash-serve), and how every command ends on bad input, a closed stream, a ^C or a reader gone."""

import argparse
import os
import sys
from typing import Callable

from adapters.errors import DFlashError
from adapters.loading import DEQUANTIZE_CHOICES, DTYPE_CHOICES
from adapters.routing import DEFAULT_THRESHOLD, ROUTERS

from .block_size import AUTO
from .engine import Engine
from .loading import DRAFT_BITS
from .presets import DEFAULT_FAST, DEFAULT_ROUTER_PROBE, PRESETS


def block_size_option(text: str):
    return text if text == AUTO else int(text)


BLOCK_SIZE_DEFAULT = "default: auto for the offline default, else the preset's or the drafter's"


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """The options that say which models an Engine loads (shared with the server)."""
    models = parser.add_argument_group("models")
    models.add_argument("--target-model", help="mlx-lm target: local directory or Hugging Face repo id")
    models.add_argument("--draft-model", help="DFlash drafter: local directory or Hugging Face repo id")
    models.add_argument("--preset", choices=sorted(PRESETS), help="a published target/drafter pair (needs the hub)")
    models.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                        help="compute dtype; auto: float32 on the CPU backend (the BLAS path), the checkpoint's on Metal")
    models.add_argument("--dequantize", default="auto", choices=DEQUANTIZE_CHOICES,
                        help="a quantized target's weights; auto: dequantized on the CPU backend when they fit in "
                        "memory (its quantized matmuls over a block are slow), kept quantized on Metal")
    models.add_argument("--quantize-draft", type=int, choices=DRAFT_BITS, metavar="BITS",
                        help=f"quantize the drafter to BITS bits ({', '.join(map(str, DRAFT_BITS))}) when loading it")
    routing = parser.add_argument_group("routing")
    routing.add_argument("--fast-model", default=str(DEFAULT_FAST),
                         help="mlx-lm model for the fast route, sharing the target's tokenizer "
                         "(default: the shipped one)")
    routing.add_argument("--router", choices=ROUTERS, default="probe",
                         help="what decides under the guardrails with --route auto: probe (trained on the fast model's "
                         "hidden states, default), judge (the fast model, instruction-tuned, classifies the prompt) or "
                         "guardrails alone (no rule fires: fast)")
    routing.add_argument("--router-probe", default=str(DEFAULT_ROUTER_PROBE),
                         help="probe file from dflash-train-router (default: the shipped one, trained on the "
                         "shipped fast model)")
    routing.add_argument("--route-threshold", type=float, default=DEFAULT_THRESHOLD,
                         help=f"the probe or judge picks expert when P(expert) >= this (default {DEFAULT_THRESHOLD}: "
                         "when in doubt, expert)")


def engine_from(args, **settings) -> Engine:
    """The Engine of the model options in `args`, with the Engine `settings` a command adds
    (dflash-serve: the block size of requests that name none, the prefix cache)."""
    return Engine(args.target_model, args.draft_model, preset=args.preset, fast_model=args.fast_model,
                  router=args.router, router_probe=args.router_probe, route_threshold=args.route_threshold,
                  dtype=args.dtype, dequantize=args.dequantize, draft_bits=args.quantize_draft,
                  **settings)  # fmt: skip


def open_standard_streams() -> None:
    """Open /dev/null on any of fds 0-2 that the caller closed (`<&-`), so that no file the
    program opens takes their place and gets read or written as stdin, stdout or stderr."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # the lowest free descriptor: this one


def interrupted(prog: str, error: BaseException) -> int:
    """A user's ^C or a reader gone (`| head`): no traceback; the exit status says which."""
    if isinstance(error, KeyboardInterrupt):
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    # Python would complain again flushing the closed pipe at exit.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 141


def run_command(prog: str, body: Callable[[], int], errors: tuple = (DFlashError,)) -> int:
    """A command's exit status: `body`'s, or 2 with one line `PROG: error: ...` for the `errors`
    it raises (bad input, a file that is missing or does not fit), or `interrupted`'s."""
    open_standard_streams()
    try:
        return body()
    except errors as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, BrokenPipeError) as e:
        return interrupted(prog, e)
