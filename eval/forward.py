"""What one target pass costs by the number of tokens in it, with the target kept quantized and
dequantized, and what a verify pass plus its rollback costs: a speculative verify pass of L
tokens pays off only if it costs far less than L one-token passes.

    uv run python -m eval.forward --target-model runs/quantized/expert-4bit [--target-model ...] [--repeats 20]

Each pass runs after a 128-token context in the KV cache, with the LM head over every position,
as a verify pass does; medians over the repeats. The second table verifies a block of
--block-size tokens through the adapter and commits all of it (full accept), half of it, or only
its first position (full reject), caches evaluated, each as a multiple of a one-token step:
recurrent (GatedDeltaNet) layers pay for a rollback by replaying the accepted positions, KV
caches only trim.
"""

import argparse
import statistics
import sys
import time

import mlx.core as mx
from mlx_lm.models.cache import make_prompt_cache, trim_prompt_cache

from adapters import adapter_for
from adapters.loading import DTYPE_CHOICES, load_target, quantized_layers
from dflash.commands import run_command
from dflash.presets import DEFAULT_TARGET

LENGTHS = (1, 4, 8, 16)
CONTEXT = 128


def pass_costs(model, repeats: int) -> dict:
    """Median milliseconds of one pass of L tokens, for every L in LENGTHS, the lengths
    interleaved in every round so that load drift hits them alike (the first round warms up)."""
    cache = make_prompt_cache(model)
    mx.eval(model(mx.array([[7] * CONTEXT]), cache=cache))
    times = {length: [] for length in LENGTHS}
    for _ in range(repeats + 1):
        for length in LENGTHS:
            tic = time.perf_counter()
            mx.eval(model(mx.array([[7] * length]), cache=cache))
            times[length].append(time.perf_counter() - tic)
            trim_prompt_cache(cache, length)
    return {length: 1e3 * statistics.median(seconds[1:]) for length, seconds in times.items()}


def timed(setup, run, repeats: int) -> float:
    """Median seconds of `run(setup())`, setup untimed; the first run warms up."""
    times = []
    for _ in range(repeats + 1):
        state = setup()
        tic = time.perf_counter()
        run(state)
        times.append(time.perf_counter() - tic)
    return statistics.median(times[1:])


def rollback_costs(model, block_size: int, repeats: int) -> dict:
    """A one-token step, and a verify of `block_size` tokens followed by each kind of commit, as
    multiples of the one-token step."""
    adapter = adapter_for(model)
    block = mx.random.randint(0, adapter.vocab_size, (1, block_size), key=mx.random.key(1))
    layer_ids = adapter.default_layer_ids(1)

    def prefilled():
        caches = adapter.make_cache()
        adapter.verify(mx.array([[7] * CONTEXT]), caches, layer_ids)
        mx.eval([c.state for c in caches])
        return caches

    def one_token(caches):
        mx.eval(adapter.lm_head(adapter.verify(block[:, :1], caches, layer_ids).hidden), [c.state for c in caches])

    def verify_and_commit(kept):
        def run(caches):
            verified = adapter.verify(block, caches, layer_ids)
            mx.eval(adapter.lm_head(verified.hidden), verified.taps)
            verified.commit(kept)
            mx.eval([c.state for c in caches])

        return run

    step = timed(prefilled, one_token, repeats)
    costs = {"step_ms": 1e3 * step}
    for name, kept in (("full accept", block_size), ("half accept", block_size // 2), ("full reject", 1)):
        costs[name] = timed(prefilled, verify_and_commit(kept), repeats) / step
    return costs


def run(argv) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--target-model", action="append", help="repeat for several (default: the shipped one)")
    parser.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--block-size", type=int, default=16, help="the verified block of the rollback table")
    args = parser.parse_args(argv)
    header = ["target", "as loaded"] + [f"{n} token{'s' * (n > 1)}" for n in LENGTHS]
    header += [f"{n} / 1" for n in LENGTHS[1:]]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for path in args.target_model or [str(DEFAULT_TARGET)]:
        for dequantize in ("off", "on"):
            model, _ = load_target(path, args.dtype, dequantize=dequantize)
            bits = sorted({layer.bits for layer in quantized_layers(model)})
            if bits:
                as_loaded = f"{'/'.join(map(str, bits))}-bit quantized"
            else:
                as_loaded = "dequantized" if dequantize == "on" else "unquantized"
            costs = pass_costs(model, args.repeats)
            row = [path, f"{as_loaded}, {adapter_for(model).dtype}"] + [f"{costs[n]:.2f} ms" for n in LENGTHS]
            row += [f"{costs[n] / costs[1]:.2f}x" for n in LENGTHS[1:]]
            print("| " + " | ".join(row) + " |", flush=True)
            if not bits and dequantize == "off":
                break  # an unquantized target loads the same either way

    print(f"\n| target | family | one-token step | verify {args.block_size} + commit all | commit half | commit 1 |")
    print("|---|---|---|---|---|---|")
    for path in args.target_model or [str(DEFAULT_TARGET)]:
        model, _ = load_target(path, args.dtype)
        costs = rollback_costs(model, args.block_size, args.repeats)
        print(f"| {path} | {adapter_for(model).family} | {costs['step_ms']:.2f} ms | {costs['full accept']:.2f}x | "
              f"{costs['half accept']:.2f}x | {costs['full reject']:.2f}x |", flush=True)
    return 0


def main(argv=None) -> int:
    return run_command("python -m eval.forward", lambda: run(argv))


if __name__ == "__main__":
    sys.exit(main())
