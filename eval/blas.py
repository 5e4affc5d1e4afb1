"""fp32 matmul and target-forward speed with and without OpenBLAS, side by side.

    uv run python -m eval.blas [--target-model DIR] [--repeats 5]

Each setting runs in its own process (OpenBLAS must be loaded before mlx, so it cannot be
switched off in a process that has it); DFLASH_OPENBLAS=0 gives MLX's bundled reference BLAS.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def timed(fn, repeats: int) -> list:
    fn()  # warmup
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return times


def measure(target_model, repeats: int) -> dict:
    from dflash import blas  # loads OpenBLAS unless DFLASH_OPENBLAS=0, before mlx
    import mlx.core as mx
    from mlx_lm import load

    a, b = mx.random.normal((1024, 1024)), mx.random.normal((1024, 1024))
    mx.eval(a, b)
    matmul = statistics.median(timed(lambda: mx.eval(a @ b), repeats))

    model, _ = load(target_model)
    model.set_dtype(mx.float32)
    results = {"blas": blas.loaded or "reference", "matmul_1024_gflops": 2 * 1024**3 / matmul / 1e9}
    for name, length in [("forward_1_token_ms", 1), ("forward_16_tokens_ms", 16), ("forward_128_tokens_ms", 128)]:
        tokens = mx.array([[7] * length])
        results[name] = 1e3 * statistics.median(timed(lambda: mx.eval(model(tokens)), repeats))
    return results


def run(argv) -> int:
    from dflash.presets import DEFAULT_TARGET

    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--target-model", default=str(DEFAULT_TARGET))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.target_model, args.repeats)))
        return 0
    rows = []
    for setting in ("1", "0"):
        env = dict(os.environ, DFLASH_OPENBLAS=setting) if setting == "0" else dict(os.environ)
        out = subprocess.run(
            [sys.executable, "-m", "eval.blas", "--child", "--target-model", args.target_model,
             "--repeats", str(args.repeats)],
            env=env, check=True, capture_output=True, text=True,
        ).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print("| BLAS | fp32 matmul 1024^3 | forward 1 token | forward 16 tokens | forward 128 tokens |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {os.path.basename(row['blas'])} | {row['matmul_1024_gflops']:.1f} GFLOP/s | "
              f"{row['forward_1_token_ms']:.2f} ms | {row['forward_16_tokens_ms']:.2f} ms | "
              f"{row['forward_128_tokens_ms']:.2f} ms |")
    return 0


def main(argv=None) -> int:
    from dflash.commands import run_command

    return run_command("python -m eval.blas", lambda: run(argv))


if __name__ == "__main__":
    sys.exit(main())
