"""`dflash-eval prefix-cache`: time to first token over a multi-turn chat with a long system prompt,
with and without a prefix cache, side by side.

    dflash-eval prefix-cache --system-tokens 1500 --turns 4 --out benchmarks/prefix-cache

Turn t sends what a chat client sends: the system prompt, the first t user prompts of the chat
suite and the t - 1 answers so far. Every turn is generated twice in each repeat, in alternating
order: from empty caches ("cold"), and with a PrefixCache that has served the earlier turns of the
same repeat ("cached"; a fresh cache each repeat). The time to first token is the prompt's
processing up to the first token (GenerationStats.prompt_time); the answers of both ways must be
equal (greedy). Writes report.json and report.md.
"""

import shlex
from pathlib import Path
from typing import List

import dflash
from adapters.errors import DFlashError
from adapters.loading import DTYPE_CHOICES
from dflash.prefix_cache import DEFAULT_GB, PrefixCache

from .bench import spread
from .environment import environment
from .options import add_pair_arguments, at_least
from .report import write_files
from .suites import load_suites, suite_hash

WAYS = ("cold", "cached")


def add_prefix_cache(subcommands) -> None:
    parser = subcommands.add_parser("prefix-cache", help="time to first token of a multi-turn chat, with and without "
                                    "a prefix cache", description=__doc__.strip().splitlines()[0])  # fmt: skip
    add_pair_arguments(parser)
    parser.add_argument("--system-tokens", type=at_least(1), default=1500,
                        help="length of the system prompt in the target's tokens (default 1500)")  # fmt: skip
    parser.add_argument("--turns", type=at_least(1), default=4, help="user turns (default 4)")
    parser.add_argument("--max-tokens", type=at_least(1), default=64, help="new tokens per answer (default 64)")
    parser.add_argument("--repeats", type=at_least(1), default=3)
    parser.add_argument("--cache-gb", type=float, default=DEFAULT_GB, help=f"the cache's limit (default {DEFAULT_GB})")
    parser.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES)
    parser.add_argument("--out", type=Path, default=Path("runs/prefix-cache"))
    parser.set_defaults(run=run_prefix_cache)


def system_prompt(tokenizer, length: int, texts: List[str]) -> str:
    """Instructions followed by reference text (the suite's prompts, repeated), `length` tokens in all."""
    pieces, tokens = ["You are a helpful assistant. Use the reference notes below when they help."], 0
    while tokens < length:  # a piece at a time: no text much longer than needed goes to the tokenizer
        piece = texts[(len(pieces) - 1) % len(texts)]
        pieces.append(piece)
        tokens += len(tokenizer.encode(piece))
    return tokenizer.decode(tokenizer.encode("\n\n".join(pieces))[:length])


def run_prefix_cache(args, argv: List[str]) -> None:
    prompts = load_suites(["chat"], None)
    if args.turns > len(prompts):
        raise DFlashError(f"the chat suite has {len(prompts)} prompts, fewer than {args.turns} turns")
    model, tokenizer = dflash.load(args.target_model, args.draft_model, dtype=args.dtype)
    users = [p.prompt for p in prompts[: args.turns]]
    system = system_prompt(tokenizer, args.system_tokens, [p.prompt for p in prompts])
    dflash.generate(model, tokenizer, users[0], 8, chat=True)  # warm up
    runs = [[] for _ in users]  # per turn, per repeat: {way: result}, and the cache's bytes after it
    for repeat in range(args.repeats):
        cache = PrefixCache(args.cache_gb)
        messages = [{"role": "system", "content": system}]
        for turn, user in enumerate(users):
            messages.append({"role": "user", "content": user})
            results = {}
            for way in WAYS[:: 1 if (repeat + turn) % 2 == 0 else -1]:
                results[way] = dflash.generate(model, tokenizer, messages, args.max_tokens,
                                               prefix_cache=cache if way == "cached" else None)  # fmt: skip
            runs[turn].append((results, cache.stats()["bytes"]))
            messages.append({"role": "assistant", "content": results["cold"].text})
    rows = [turn_row(turn, repeats) for turn, repeats in enumerate(runs)]
    for row in rows:
        print(f"turn {row['turn']}: {row['prompt_tokens']} prompt tokens, {row['cached_tokens']} cached; first token "
              f"{row['cold_ms']['median']:.0f} ms cold, {row['cached_ms']['median']:.0f} ms cached "
              f"({row['speedup']:.2f}x); cache {row['cache_mb']:.1f} MB; identical: {row['exact']}",
              flush=True)  # fmt: skip
    report = {
        "config": {"command": shlex.join(["dflash-eval"] + argv), "target": args.target_model,
                   "draft": args.draft_model, "system_tokens": args.system_tokens, "max_tokens": args.max_tokens,
                   "repeats": args.repeats},
        "environment": environment({"target": args.target_model, "draft": args.draft_model}, model.dtype,
                                   suite_hash(prompts), 0),
        "rows": rows,
    }  # fmt: skip
    write_files(args.out, report, markdown(report))


def turn_row(turn: int, repeats: list) -> dict:
    first, _ = repeats[0]
    milliseconds = {way: spread([results[way].stats.prompt_time * 1000 for results, _ in repeats]) for way in WAYS}
    return {
        "turn": turn + 1,
        "prompt_tokens": first["cold"].stats.prompt_tokens,
        "cached_tokens": first["cached"].stats.cached_tokens,
        "cold_ms": milliseconds["cold"],
        "cached_ms": milliseconds["cached"],
        "speedup": milliseconds["cold"]["median"] / milliseconds["cached"]["median"],
        "cache_mb": max(size for _, size in repeats) / 1e6,
        "exact": all(results["cold"].tokens == results["cached"].tokens for results, _ in repeats),
    }


def markdown(report: dict) -> str:
    config = report["config"]
    lines = [
        "# Time to first token with a prefix cache",
        "",
        f"`{config['command']}`: a system prompt of {config['system_tokens']} tokens, {config['max_tokens']} new "
        f"tokens per answer, median (min-max) of {config['repeats']} repeats. Cached: the prompt tokens whose caches "
        "came from the cache. Cache: what it holds after the turn. Identical: the cached run's answer is the cold "
        "one's.",
        "",
        "| turn | prompt tokens | cached | first token, cold (ms) | first token, cached (ms) | speedup | cache (MB) "
        "| identical |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        cold, cached = row["cold_ms"], row["cached_ms"]
        lines.append(
            f"| {row['turn']} | {row['prompt_tokens']} | {row['cached_tokens']} | {cold['median']:.0f} "
            f"({cold['min']:.0f}-{cold['max']:.0f}) | {cached['median']:.0f} ({cached['min']:.0f}-{cached['max']:.0f}) "
            f"| {row['speedup']:.2f}x | {row['cache_mb']:.1f} | {'yes' if row['exact'] else 'NO'} |"
        )
    return "\n".join(lines) + "\n"
