"""Build the offline default models shipped in dflash/checkpoints/ from text that ships with Python.

    uv run python -m train.offline_default --stage all --out dflash/checkpoints

base: corpus (corpus.py) -> held-out prompts (train/data/heldout_prompts.jsonl) -> byte-level
BPE tokenizer (tokenizer.py) -> pretrain the "expert" target LM -> pretrain the "fast" LM
(pretrain.py). drafter: the expert answers training prompts (`dflash-train regenerate`),
its tapped hidden states are stored (`dflash-train precompute`), then its DFlash drafter trains
on those answers (`dflash-train run`), with DRAFTER_ARGS. Each model directory gets the
tokenizer files and a train_config.json with every setting and the run's results. Intermediate
state (tokenizer, metrics.jsonl, checkpoints) lives in --work-dir; rerunning the command resumes
an interrupted pretraining.

Step counts are fixed (not derived from a time budget) so the result depends only on the seed
and the Python version; they were chosen from measured throughput on a 2-core x86 CPU so the
expert trains in about 45 minutes and the fast model in a few.
"""

import argparse
import dataclasses
import json
import platform
import shutil
import sys
import time
from pathlib import Path

from tokenizers import Tokenizer

from dflash.files import atomic_directory  # first: `import dflash` loads OpenBLAS before mlx

from ..cli import main as dflash_train
from .corpus import build_corpus, heldout_prompts, write_heldout_prompts
from .pretrain import (
    PretrainConfig, build_model, count_parameters, llama_args, pretrain, save_model, token_stream, tokenize,
)  # fmt: skip
from .tokenizer import eos_token_ids, format_chat, save_tokenizer, train_tokenizer

VOCAB_SIZE = 4096
CONTEXT = 512

# Shipped weights (expert + fast + the expert's drafter) must stay under 30 MB in bfloat16.
# With 2K-token batches, lr 2e-3 and beta2 0.999 left the expert at the unigram loss (~6.2) for
# 180 steps; lr 1e-3 with beta2 0.95 gets past it within ~50 steps.
MODELS = {
    "expert": {
        "max_parameters": 9_500_000,
        "args": dict(hidden_size=320, num_hidden_layers=8, intermediate_size=736,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=80),
        "pretrain": dict(steps=360, batch_size=4, learning_rate=1e-3, adam_betas=(0.9, 0.95), warmup_steps=20),
    },
    "fast": {
        "max_parameters": 1_500_000,
        "args": dict(hidden_size=128, num_hidden_layers=4, intermediate_size=384,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=32),
        "pretrain": dict(steps=160, batch_size=4, learning_rate=1e-3, adam_betas=(0.9, 0.95), warmup_steps=10),
    },
}

# The expert's DFlash drafter: `dflash-train` arguments (after --target/--data/--out). Block size 8,
# not the published 16: it halves the training cost per anchor, and away from the expert's loops a
# drafter this small rarely gets past 8 tokens. The hidden states are precomputed once, since
# every epoch would otherwise rerun the target over every sequence.
DRAFTER_PROMPTS = 1280
TAPPED_LAYERS = "1,4,6"
REGENERATE_ARGS = ["--limit", str(DRAFTER_PROMPTS), "--max-tokens", "320", "--batch-size", "32"]
PRECOMPUTE_ARGS = ["--target-layer-ids", TAPPED_LAYERS, "--max-length", "512"]
DRAFTER_ARGS = [
    "--draft-layers", "2", "--target-layer-ids", TAPPED_LAYERS, "--block-size", "8", "--anchors", "64",
    "--epochs", "3", "--batch-size", "8", "--lr", "3e-3", "--eval-every", "100", "--eval-prompts", "8",
    "--eval-max-tokens", "96", "--save-every", "25", "--save-dtype", "bfloat16", "--max-length", "512",
]  # fmt: skip

# Prose (topics, module docstrings) is ~5% of the corpus; repeating it gives the models more of it.
KIND_REPEATS = {"topic": 3, "module": 2}


def build_tokenizer(corpus, tokenizer_dir: Path) -> Tokenizer:
    """Train once per work dir: a resumed run must tokenize exactly as the interrupted one."""
    if not tokenizer_dir.exists():
        texts = (format_chat(p, r) for p, r in zip(corpus["train"]["prompt"], corpus["train"]["response"]))
        with atomic_directory(tokenizer_dir) as partial:
            save_tokenizer(train_tokenizer(texts, VOCAB_SIZE), partial, CONTEXT)
    return Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=["base", "drafter", "all"], default="all",
                        help="base: corpus, tokenizer, expert and fast LMs; drafter: the expert's DFlash drafter")  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("dflash/checkpoints"))
    parser.add_argument("--work-dir", type=Path, default=Path("runs/offline_default"))
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    corpus = build_corpus(seed=args.seed)
    if args.stage in ("base", "all"):
        build_base_models(args, corpus)
    if args.stage in ("drafter", "all"):
        build_drafter(args, corpus)


def build_drafter(args, corpus) -> None:
    """Regenerate training answers with the shipped expert, train its drafter, ship it."""
    expert, work = args.out / "expert", args.work_dir / "drafter"
    work.mkdir(parents=True, exist_ok=True)
    prompts_file = work / "prompts.parquet"
    if not prompts_file.exists():
        corpus["train"].to_parquet(str(prompts_file))  # shuffled train split: held-out prompts never appear
    data, hidden, run = work / "data", work / "hidden", work / "run"
    commands = [
        ["regenerate", "--target", str(expert), "--prompts", str(prompts_file), "--out", str(data), *REGENERATE_ARGS],
        ["precompute", "--target", str(expert), "--data", str(data), "--out", str(hidden), *PRECOMPUTE_ARGS],
        ["run", "--target", str(expert), "--data", str(data), "--hidden-states", str(hidden), "--out", str(run),
         "--seed", str(args.seed), *DRAFTER_ARGS],
    ]  # fmt: skip
    tic = time.time()
    for command in commands:
        if dflash_train(command) != 0:
            raise SystemExit(f"dflash-train {command[0]} failed")
    ship_drafter(run, args.out / "expert-dflash", commands, time.time() - tic)


def ship_drafter(run: Path, shipped: Path, commands, seconds: float) -> None:
    """Copy the run's finished drafter to `shipped`, with the commands and results beside it."""
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_config = {
        "command": " ".join(["python -m train.offline_default"] + sys.argv[1:]),
        "dflash_train": [" ".join(["dflash-train", *command]) for command in commands],
        "results": {"final": metrics[-1], "tau": [m["tau"] for m in metrics if "tau" in m],
                    "wall_seconds": seconds},
    }  # fmt: skip
    with atomic_directory(shipped) as partial:
        shutil.copytree(run / "drafter", partial, dirs_exist_ok=True)
        (partial / "train_config.json").write_text(json.dumps(train_config, indent=2) + "\n")
    print(json.dumps(train_config["results"], indent=2), flush=True)


def build_base_models(args, corpus) -> None:
    prompts = heldout_prompts(corpus["heldout"], seed=args.seed)
    write_heldout_prompts(prompts)
    tokenizer_dir = args.work_dir / "tokenizer"
    tokenizer = build_tokenizer(corpus, tokenizer_dir)
    train_stream = token_stream(tokenize(corpus["train"], tokenizer), corpus["train"]["kind"], args.seed, KIND_REPEATS)
    heldout_stream = token_stream(tokenize(corpus["heldout"], tokenizer), corpus["heldout"]["kind"], args.seed)
    corpus_info = {
        "python_version": platform.python_version(),
        "train_samples": len(corpus["train"]),
        "heldout_samples": len(corpus["heldout"]),
        "heldout_prompts": len(prompts),
        "kind_repeats": KIND_REPEATS,
        "train_stream_tokens": len(train_stream),
        "heldout_stream_tokens": len(heldout_stream),
    }

    for name in args.models:
        margs = llama_args(tokenizer.get_vocab_size(), CONTEXT, **MODELS[name]["args"])
        n_params = count_parameters(build_model(margs, args.seed))
        if n_params > MODELS[name]["max_parameters"]:
            raise ValueError(f"{name} has {n_params} parameters, over its cap of {MODELS[name]['max_parameters']}")
        cfg = PretrainConfig(seed=args.seed, seq_len=CONTEXT, **MODELS[name]["pretrain"])
        print(f"{name}: {n_params / 1e6:.2f}M parameters, {cfg.steps} steps of {cfg.batch_size}x{cfg.seq_len} tokens", flush=True)
        tic = time.time()
        model, summary = pretrain(margs, cfg, train_stream, heldout_stream, args.work_dir / name)
        train_config = {
            "command": " ".join(["python -m train.offline_default"] + sys.argv[1:]),
            "seed": args.seed,
            "corpus": corpus_info,
            "tokenizer": {"type": "byte-level BPE", "vocab_size": tokenizer.get_vocab_size()},
            "model_args": dataclasses.asdict(margs),
            "pretrain_config": dataclasses.asdict(cfg),
            "loss": "next-token cross-entropy on all tokens of packed chat-formatted samples",
            "results": {**summary, "wall_seconds_this_session": time.time() - tic},
        }
        save_model(model, margs, args.out / name, tokenizer_dir, eos_token_ids(tokenizer), train_config)
        print(json.dumps(train_config["results"], indent=2), flush=True)


if __name__ == "__main__":
    main()
