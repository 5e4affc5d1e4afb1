"""`dflash-eval loops`: how much of the target's own greedy output falls into cycles, per suite.

    dflash-eval loops --suite humaneval --suite chat --max-tokens 256 --out benchmarks/loops-smollm2

Exact greedy decoding reproduces the target's output, its loops included, so the target's own
cycle share (eval/loops.py) is the floor of any exact method's: read a bench's loop share against
it. The prompts go through mlx-lm's batched greedy decoding of the target alone (fast); a row of a
batch can differ from one-at-a-time decoding where the top two logits nearly tie, so the figure
describes the target, not one method's outputs token for token.
"""

import shlex
from pathlib import Path
from typing import List

from mlx_lm.generate import batch_generate

from adapters import adapter_for
from adapters.loading import DEQUANTIZE_CHOICES, DTYPE_CHOICES, load_target
from dflash.engine import check_offline_default
from dflash.generate import encode_prompt, within_window

from .environment import environment
from .loops import MAX_PERIOD, MIN_RUN, loop_figures
from .options import add_pair_arguments, at_least
from .report import number, table, write_files
from .suites import DEFAULT_SUITES, load_suites, suite_hash


def add_loops(subcommands) -> None:
    parser = subcommands.add_parser("loops", help="how much of the target's own greedy output loops",
                                    description=__doc__.strip().splitlines()[0])  # fmt: skip
    add_pair_arguments(parser, drafter=False)
    parser.add_argument("--suite", action="append",
                        help="prompt suites, as for bench (default: " + " and ".join(DEFAULT_SUITES) + ")")  # fmt: skip
    parser.add_argument("--limit", type=at_least(1), help="only the first N prompts of each suite")
    parser.add_argument("--max-tokens", type=at_least(1), default=256, help="new tokens per prompt (default: 256)")
    parser.add_argument("--batch-size", type=at_least(1), default=32, help="rows decoded at once (default: 32)")
    parser.add_argument("--no-chat", dest="chat", action="store_false", help="feed prompts raw")
    parser.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES)
    parser.add_argument("--dequantize", default="auto", choices=DEQUANTIZE_CHOICES)
    parser.add_argument("--out", type=Path, default=Path("runs/loops"), help="report directory (default: runs/loops)")
    parser.set_defaults(run=run_loops)


def run_loops(args, argv: List[str]) -> None:
    suites = args.suite or DEFAULT_SUITES
    prompts = load_suites(suites, args.limit)
    check_offline_default((args.target_model,), "pass --target-model")
    target, tokenizer = load_target(args.target_model, args.dtype, dequantize=args.dequantize)
    adapter = adapter_for(target)
    prompt_ids = [encode_prompt(adapter, tokenizer, p.prompt, chat=args.chat) for p in prompts]
    outputs = batch_generate(
        target, tokenizer, prompt_ids, max_tokens=[within_window(adapter, ids, args.max_tokens) for ids in prompt_ids],
        return_token_ids=True, prefill_batch_size=args.batch_size, completion_batch_size=args.batch_size,
    ).token_ids  # fmt: skip
    names = dict.fromkeys(prompt.suite for prompt in prompts)
    by_suite = {name: [out for prompt, out in zip(prompts, outputs) if prompt.suite == name] for name in names}
    report = {
        "config": {"command": shlex.join(["dflash-eval"] + argv), "target": args.target_model, "suites": suites,
                   "limit": args.limit, "max_tokens": args.max_tokens, "chat": args.chat},
        "environment": environment({"target": args.target_model}, adapter.dtype, suite_hash(prompts), 0),
        "suites": {suite: {"prompts": len(outs), "tokens": sum(map(len, outs)), **loop_figures(outs)}
                   for suite, outs in {**by_suite, "all": outputs}.items()},
    }  # fmt: skip
    write_files(args.out, report, markdown(report))


def markdown(report: dict) -> str:
    rows = [[suite, str(entry["prompts"]), str(entry["tokens"]), number(entry["cycle_share"], ".1%"),
             f"{entry['prompts_looping']} ({entry['prompts_looping'] / entry['prompts']:.0%})",
             number(entry["first_cycle_median"], ".0f")]
            for suite, entry in report["suites"].items()]  # fmt: skip
    return (
        "# The target's own loops\n\n"
        f"`{report['config']['command']}`: plain greedy decoding of the target (mlx-lm batch_generate), at most "
        f"{report['config']['max_tokens']} new tokens a prompt. A cycle: a pattern of 1 to {MAX_PERIOD} tokens "
        f"occurring at least three times in a row, its repeats spanning at least {MIN_RUN} tokens (eval/loops.py). "
        "Exact decoding reproduces these outputs, so their cycle share is the floor of an exact method's.\n\n"
        + table(["suite", "prompts", "tokens", "cycle share", "prompts looping", "first cycle (median)"], rows)
        + "\n"
    )
