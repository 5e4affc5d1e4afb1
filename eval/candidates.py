"""`dflash-eval candidates`: where the target's tokens rank among the drafter's candidates, and the
tau that a better choice among them would reach.

    dflash-eval candidates --suite humaneval --suite chat --limit 4 --out benchmarks/candidates

The drafter decodes every prompt greedily at its block size, exactly as `dflash-mlx` does, and
every step's proposals and top candidates are kept. Afterwards, knowing the target's tokens, each step
is scored by how many leading block positions a proposal would have had accepted: the drafter's
argmax, the DFlash 2 selector's path (what was proposed), and an oracle that takes the target's
token wherever it is among the top k candidates (k = 2, 4, ..., the selector's top-k). The oracle
bounds what a path selector choosing among those candidates (or a tree of k branches) could reach.
Each figure is 1 + the mean accepted count over the steps the real decoding took: an oracle's longer
steps would start elsewhere, so its tau is an estimate of the head-room, not a decoding's.
"""

import shlex
import statistics
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import List

import mlx.core as mx

import dflash
from dflash.engine import check_offline_default
from dflash.generate import encode_prompt
from dflash.loading import DFlashModel

from .environment import environment
from .options import add_pair_arguments, at_least
from .report import number, table, write_files
from .suites import DEFAULT_SUITES, load_suites, suite_hash

ORACLE_TOP_K = 16  # the widest oracle for a drafter without a selector: the published selectors' top-k


@dataclass
class KeepingDrafts(DFlashModel):
    """A DFlashModel that keeps every step's proposals and its candidates, best first."""

    top_k: int = ORACLE_TOP_K
    drafts: list = field(default_factory=list)  # (proposals [P], top-k candidates [P, k]) per step

    @classmethod
    def watching(cls, model: DFlashModel, top_k: int = ORACLE_TOP_K) -> "KeepingDrafts":
        """`model`, keeping its drafts."""
        return cls(*(getattr(model, f.name) for f in fields(DFlashModel)), top_k=top_k)

    def draft_block(self, lasts, block_size, *args, **kwargs):
        proposals, logits = super().draft_block(lasts, block_size, *args, **kwargs)
        top = mx.argpartition(-logits[0], self.top_k - 1, axis=-1)[:, : self.top_k]
        best_first = mx.argsort(-mx.take_along_axis(logits[0], top, axis=-1), axis=-1)
        self.drafts.append((proposals[0].tolist(), mx.take_along_axis(top, best_first, axis=-1).tolist()))
        return proposals, logits


def accepted(hits: List[bool]) -> int:
    """The leading run of hits: how many proposals a step accepts."""
    return next((i for i, hit in enumerate(hits) if not hit), len(hits))


def score_steps(drafts: list, lengths: List[int], tokens: List[int], block_size: int, ks: List[int]) -> dict:
    """Accepted counts of the steps that drafted a full block with a full block of the target's
    tokens after it: as decoded, and for the argmax, the proposals and each top-k oracle. `drafts`
    and `lengths` (the tokens each step committed) are per step; the first token came from the
    prompt's pass."""
    counts = {"decoded": [], "argmax": [], "proposed": [], **{f"top{k}": [] for k in ks}}
    start = 1
    for (proposals, ranked), length in zip(drafts, lengths):
        gold = tokens[start : start + block_size - 1]
        start += length
        if len(proposals) < block_size - 1 or len(gold) < block_size - 1:
            continue
        counts["decoded"].append(length - 1)
        counts["argmax"].append(accepted([row[0] == t for row, t in zip(ranked, gold)]))
        counts["proposed"].append(accepted([p == t for p, t in zip(proposals, gold)]))
        for k in ks:
            counts[f"top{k}"].append(accepted([t in row[:k] for row, t in zip(ranked, gold)]))
    return counts


def add_candidates(subcommands) -> None:
    parser = subcommands.add_parser("candidates", help="the target's tokens among the drafter's candidates",
                                    description=__doc__.strip().splitlines()[0])  # fmt: skip
    add_pair_arguments(parser)
    parser.add_argument("--suite", action="append",
                        help="prompt suites, as for bench (default: " + " and ".join(DEFAULT_SUITES) + ")")  # fmt: skip
    parser.add_argument("--limit", type=at_least(1), help="only the first N prompts of each suite")
    parser.add_argument("--max-tokens", type=at_least(1), default=256, help="new tokens per prompt (default: 256)")
    parser.add_argument("--out", type=Path, default=Path("runs/candidates"))
    parser.set_defaults(run=run_candidates)


def run_candidates(args, argv: List[str]) -> None:
    suites = args.suite or DEFAULT_SUITES
    prompts = load_suites(suites, args.limit)
    check_offline_default((args.target_model, args.draft_model), "pass --target-model and --draft-model")
    loaded, tokenizer = dflash.load(args.target_model, args.draft_model)
    top_k = loaded.draft.config.selector_top_k or ORACLE_TOP_K
    ks = sorted({k for k in (2, 4, top_k) if k <= top_k})
    model = KeepingDrafts.watching(loaded, top_k)
    counts = {suite: {} for suite in [*dict.fromkeys(p.suite for p in prompts), "all"]}
    for prompt in prompts:
        model.drafts.clear()
        prompt_ids = encode_prompt(model.adapter, tokenizer, prompt.prompt, chat=True)
        result = dflash.generate(model, tokenizer, prompt_ids, args.max_tokens, block_size=model.block_size)
        steps = score_steps(model.drafts, result.stats.acceptance_lengths, result.tokens, model.block_size, ks)
        for suite in (prompt.suite, "all"):
            for name, values in steps.items():
                counts[suite].setdefault(name, []).extend(values)
    report = {
        "config": {"command": shlex.join(["dflash-eval"] + argv), "target": args.target_model,
                   "draft": args.draft_model, "suites": suites, "limit": args.limit, "max_tokens": args.max_tokens,
                   "block_size": model.block_size, "dflash2": model.draft.config.dflash2},
        "environment": environment({"target": args.target_model, "draft": args.draft_model}, model.dtype,
                                   suite_hash(prompts), 0),
        "suites": {suite: {"steps": len(by_name["argmax"]),
                           **{f"tau_{name}": 1 + statistics.mean(values) if values else None
                              for name, values in by_name.items()}}
                   for suite, by_name in counts.items()},
    }  # fmt: skip
    write_files(args.out, report, markdown(report, ks))


def markdown(report: dict, ks: List[int]) -> str:
    config = report["config"]
    proposed = "the selector's path (proposed)" if config["dflash2"] else "proposed"
    header = ["suite", "full-block steps", "tau: argmax", proposed] + [f"oracle top-{k}" for k in ks]
    rows = [[suite, entry["steps"], number(entry["tau_argmax"]), number(entry["tau_proposed"])]
            + [number(entry[f"tau_top{k}"]) for k in ks] for suite, entry in report["suites"].items()]  # fmt: skip
    return (
        "# The target's tokens among the drafter's candidates\n\n"
        f"`{config['command']}`: greedy decoding at block {config['block_size']}, up to {config['max_tokens']} new "
        "tokens a prompt. Tau of each proposal, 1 + its accepted count averaged over the full-block steps the "
        "decoding took; an oracle takes the target's token wherever it is among the drafter's top k (an estimate of "
        "the head-room of a choice among those candidates).\n\n" + table(header, rows) + "\n"
    )
