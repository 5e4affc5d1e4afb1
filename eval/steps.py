"""`dflash-eval steps`: what one plain step, one draft and one verify cost after prompts of given
lengths, and what bounding the drafter's context to a window saves.

    dflash-eval steps --prompt-lengths 512,2048,8192 --draft-window 256 --out benchmarks/steps

After a random prompt of each length (through the real prefill), every round times, interleaved:
a plain decoding step (one token through the target, its argmax), a draft (a block of
--block-size tokens with the context features of NEW_CONTEXT newly committed positions, the
drafter's KV cache holding the rest; its proposals' argmax), with the full drafter context and with
--draft-window, and a verify (a block through the target with its LM head and taps, then rolled
back). Medians (min–max) over the rounds after the first. Break-even tau = (draft + verify) /
plain step: the tokens a step must commit to match plain decoding.

A DFlash 2 drafter is also timed without its convolutions and path selector (the same weights
otherwise, drafting its argmax), and its selector alone on one draft's output: what they add,
as shares of a step (draft + verify).
"""

import shlex
import statistics
import time
from dataclasses import replace
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten
from mlx_lm.models.cache import make_prompt_cache

import dflash
from adapters.loading import DTYPE_CHOICES
from dflash import decode
from dflash.acceptance import GreedyAcceptance
from dflash.loading import DFlashModel
from dflash.model import DFlashDraftModel

from .environment import environment
from .options import add_pair_arguments, at_least, positive_ints
from .report import number, table, write_files

NEW_CONTEXT = 4  # context positions a step hands the drafter: about what a step commits


def step_costs(model, prompt_length: int, block_size: int, draft_window, repeats: int) -> dict:
    """Seconds of each pass per round (the first round warms up and is dropped)."""
    adapter, config = model.adapter, model.draft.config
    prompt = mx.random.randint(10, adapter.vocab_size - 10, (prompt_length,), key=mx.random.key(prompt_length))
    windows = {"draft": None, "draft_window": draft_window} if draft_window else {"draft": None}
    states = {}
    for name, window in windows.items():
        states[name] = decode.start(model, max_tokens=prompt_length, block_size=block_size, draft_window=window)
        decode.prefill(model, states[name], prompt)
        mx.eval(model.draft_block([0], block_size, states[name].context, states[name].draft_cache, [GreedyAcceptance()],
                                  [states[name]])[0])  # fmt: skip
    plain_cache = make_prompt_cache(model.target)
    mx.eval(model.target(prompt[None], cache=plain_cache))
    context = states["draft"].context[:, -NEW_CONTEXT:]
    verify_state = states["draft"]
    drafters = {name: model for name in windows}
    if config.dflash2:
        # Its context keys and values are the DFlash 2 drafter's (the convolutions touch only the
        # block), so the backbone drafts from the same cache.
        drafters["draft_backbone"] = DFlashModel(model.target, adapter, backbone(model.draft))
        states["draft_backbone"] = states["draft"]
        selector_inputs = selector_sample(model, block_size, context, states["draft"].draft_cache)

    times = {name: [] for name in ["plain", *drafters, "verify"] + (["selector"] if config.dflash2 else [])}
    for _ in range(repeats + 1):
        tic = time.perf_counter()
        mx.eval(mx.argmax(model.target(mx.array([[7]]), cache=plain_cache)[0, -1]))
        times["plain"].append(time.perf_counter() - tic)
        for layer_cache in plain_cache:
            layer_cache.trim(1)
        for name, drafter in drafters.items():
            tic = time.perf_counter()
            mx.eval(drafter.draft_block([7], block_size, context, states[name].draft_cache, [GreedyAcceptance()],
                                        [states[name]])[0])  # fmt: skip
            times[name].append(time.perf_counter() - tic)
            if name != "draft_window":  # a window drops the oldest positions by itself
                for layer_cache in states[name].draft_cache:
                    layer_cache.trim(NEW_CONTEXT)
        if config.dflash2:
            tic = time.perf_counter()
            mx.eval(model.draft.candidate_selector(*selector_inputs))
            times["selector"].append(time.perf_counter() - tic)
        tic = time.perf_counter()
        verified = adapter.verify(mx.array([[7] * block_size]), verify_state.target_cache, config.target_layer_ids)
        mx.eval(mx.argmax(adapter.lm_head(verified.hidden)[0], axis=-1), verified.taps)
        times["verify"].append(time.perf_counter() - tic)
        verified.commit(0)
    return {name: seconds[1:] for name, seconds in times.items()}


def backbone(draft: DFlashDraftModel) -> DFlashDraftModel:
    """The DFlash 2 drafter without its convolutions and selector: the DFlash drafter it extends."""
    plain = DFlashDraftModel(replace(draft.config, conv_kernel_size=None, conv_group_size=None, selector_rank=None,
                                     selector_top_k=None))  # fmt: skip
    plain.load_weights([(name, value) for name, value in tree_flatten(draft.parameters())
                        if "conv." not in name and not name.startswith("candidate_selector.")])  # fmt: skip
    return plain


def selector_sample(model: DFlashModel, block_size: int, context, cache) -> tuple:
    """What the selector takes from one draft (its drafter output, logits, anchor and vocabulary), computed once."""
    embedded = model.adapter.embed(mx.array([[7] + [model.draft.config.mask_token_id] * (block_size - 1)]))
    hidden = model.draft(embedded, context, cache)[:, 1:]
    for layer_cache in cache:
        layer_cache.trim(NEW_CONTEXT)
    logits = model.draft.vocab_logits(hidden, model.draft_head)
    mx.eval(hidden, logits)
    return hidden, logits, mx.array([7]), model.draft.vocab_token_ids


def figures(times: dict) -> dict:
    ms = {name: 1e3 * statistics.median(seconds) for name, seconds in times.items()}
    result = {name: {"median_ms": ms[name], "min_ms": 1e3 * min(s), "max_ms": 1e3 * max(s)} for name, s in times.items()}
    for name in times:
        if name != "plain":
            result[name]["over_plain"] = ms[name] / ms["plain"]
    result["break_even_tau"] = (ms["draft"] + ms["verify"]) / ms["plain"]
    if "draft_window" in ms:
        result["break_even_tau_window"] = (ms["draft_window"] + ms["verify"]) / ms["plain"]
    if "selector" in ms:  # DFlash 2: what its modules add to a step (draft + verify)
        step = ms["draft"] + ms["verify"]
        result["dflash2_added_share"] = (ms["draft"] - ms["draft_backbone"]) / step
        result["selector_share"] = ms["selector"] / step
        result["convolutions_share"] = (ms["draft"] - ms["draft_backbone"] - ms["selector"]) / step
    return result


def add_steps(subcommands) -> None:
    parser = subcommands.add_parser("steps", help="cost of one plain step, one draft and one verify by prompt length",
                                    description=__doc__.strip().splitlines()[0])  # fmt: skip
    add_pair_arguments(parser)
    parser.add_argument("--prompt-lengths", type=positive_ints, default=[128], help="comma-separated (default: 128)")
    parser.add_argument("--block-size", type=int, help="default: the drafter's")
    parser.add_argument("--draft-window", type=at_least(1),
                        help="also draft with the drafter's context kept to this window")
    parser.add_argument("--repeats", type=at_least(1), default=20)
    parser.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES)
    parser.add_argument("--out", type=Path, default=Path("runs/steps"))
    parser.set_defaults(run=steps)


def steps(args, argv) -> None:
    model, _ = dflash.load(args.target_model, args.draft_model, dtype=args.dtype)
    block_size = args.block_size or model.block_size
    lengths = args.prompt_lengths
    results = {}
    for length in lengths:
        results[str(length)] = figures(step_costs(model, length, block_size, args.draft_window, args.repeats))
        print(f"prompt {length}: break-even tau {results[str(length)]['break_even_tau']:.2f}", flush=True)
    checkpoints = {"target": args.target_model, "draft": args.draft_model}
    report = {
        "config": {"command": shlex.join(["dflash-eval"] + argv), "block_size": block_size,
                   "draft_window": args.draft_window, "repeats": args.repeats, "new_context": NEW_CONTEXT},
        "environment": environment(checkpoints, model.dtype, "", 0),
        "prompt_lengths": results,
    }  # fmt: skip
    write_files(args.out, report, markdown(report))


def markdown(report: dict) -> str:
    config, window = report["config"], report["config"]["draft_window"]
    header = ["prompt", "plain step ms", f"draft {config['block_size']} ms", f"verify {config['block_size']} ms",
              "draft / plain", "verify / plain", "break-even tau"]  # fmt: skip
    if window:
        header += [f"draft ms, window {window}", "draft / plain, window", "break-even tau, window"]
    dflash2 = all("selector" in result for result in report["prompt_lengths"].values())
    if dflash2:
        header += ["backbone draft ms", "selector ms", "DFlash 2 added / step", "selector / step",
                   "convolutions / step"]  # fmt: skip
    rows = []
    for length, result in report["prompt_lengths"].items():
        row = [length] + [cell(result[name]) for name in ("plain", "draft", "verify")]
        row += [number(result["draft"]["over_plain"], ".2f", "x"), number(result["verify"]["over_plain"], ".2f", "x"),
                number(result["break_even_tau"])]  # fmt: skip
        if window:
            row += [cell(result["draft_window"]), number(result["draft_window"]["over_plain"], ".2f", "x"),
                    number(result["break_even_tau_window"])]  # fmt: skip
        if dflash2:
            row += [cell(result["draft_backbone"]), cell(result["selector"])]
            row += [number(100 * result[name], ".1f", "%")
                    for name in ("dflash2_added_share", "selector_share", "convolutions_share")]  # fmt: skip
        rows.append(row)
    environment = report["environment"]
    return (
        f"# Step costs\n\n```\n{config['command']}\n```\n\n"
        f"{environment['device_name']}, {environment['dtype']}, mlx {environment['mlx']}, {config['repeats']} rounds; "
        f"a draft hands the drafter {config['new_context']} new context positions. Median (min–max) ms.\n\n"
        + table(header, rows) + "\n"
    )


def cell(figure: dict) -> str:
    return f"{figure['median_ms']:.2f} ({figure['min_ms']:.2f}–{figure['max_ms']:.2f})"
