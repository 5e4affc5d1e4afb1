"""dflash-train-router: train the router's probe on a labeled JSONL of prompts.

    dflash-train-router --data eval/suites/routing_train.jsonl --fast-model dflash/checkpoints/fast \\
        --out dflash/checkpoints/router-probe.safetensors

Each prompt runs once through the fast model; its pooled hidden states (the mean over positions of
the final normed states and of the --layers) are the features of a logistic regression, with
classes weighted to balance and an L2 penalty picked by cross-validation on the training data.
Writes the probe (safetensors, configuration in its metadata) and, next to it, a JSON summary of
the training run. Measure it on held-out prompts with `dflash-eval router --data ...`.
"""

import argparse
import json
import sys
from pathlib import Path
from typing import List, Sequence, Tuple

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np

from adapters.errors import DFlashError
from adapters.loading import DTYPE_CHOICES
from adapters.routing import (
    CANARY_PROMPT,
    EXPERT,
    FastModel,
    LabeledPrompt,
    Probe,
    load_fast_model,
    pooled_features,
    read_labeled_prompts,
)
from dflash.commands import run_command
from dflash.presets import DEFAULT_FAST, DEFAULT_ROUTER_PROBE

DEFAULT_DATA = Path(__file__).resolve().parent.parent / "eval" / "suites" / "routing_train.jsonl"
L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def extract_features(
    fast: FastModel, examples: Sequence[LabeledPrompt], layer_ids: List[int]
) -> Tuple[mx.array, mx.array]:
    """Features [N, F] and labels [N] (1.0 for expert)."""
    features = []
    for example in examples:
        features.append(pooled_features(fast, example.prompt, layer_ids))
        mx.eval(features[-1])
    labels = mx.array([1.0 if e.label == EXPERT else 0.0 for e in examples])
    return mx.stack(features), labels


def standardisation(features: mx.array) -> Tuple[mx.array, mx.array]:
    mean, std = features.mean(axis=0), features.std(axis=0)
    return mean, mx.where(std > 1e-6, std, 1.0)


def fit_logistic(features: mx.array, labels: mx.array, l2: float, steps: int, lr: float) -> Tuple[mx.array, mx.array]:
    """Class-balanced, L2-penalised logistic regression on standardised features by full-batch Adam."""
    positives = labels.sum().item()
    if positives in (0, labels.size):
        raise DFlashError("the probe needs both fast and expert examples to learn from")
    sample_weights = mx.where(labels > 0, labels.size / (2 * positives), labels.size / (2 * (labels.size - positives)))
    params = {"weight": mx.zeros((features.shape[1],)), "bias": mx.zeros((1,))}

    def loss_fn(params):
        logits = features @ params["weight"] + params["bias"][0]
        losses = nn.losses.binary_cross_entropy(logits, labels, with_logits=True, reduction="none")
        return (sample_weights * losses).mean() + l2 * (params["weight"] ** 2).sum()

    optimizer = optim.Adam(learning_rate=lr)
    loss_and_grad = mx.value_and_grad(loss_fn)
    for _ in range(steps):
        _, grads = loss_and_grad(params)
        params = optimizer.apply_gradients(grads, params)
        mx.eval(params, optimizer.state)
    return params["weight"], params["bias"]


def cross_validate(features: mx.array, labels: mx.array, folds: int, steps: int, lr: float, seed: int) -> dict:
    """Mean held-out log-loss and accuracy of every L2 strength in L2_GRID."""
    fold_of = np.random.default_rng(seed).permutation(labels.size) % folds
    scores = {}
    for l2 in L2_GRID:
        losses, correct = [], 0
        for fold in range(folds):
            train_rows, held_rows = mx.array(np.flatnonzero(fold_of != fold)), mx.array(np.flatnonzero(fold_of == fold))
            mean, std = standardisation(features[train_rows])
            weight, bias = fit_logistic((features[train_rows] - mean) / std, labels[train_rows], l2, steps, lr)
            logits = ((features[held_rows] - mean) / std) @ weight + bias[0]
            losses.append(nn.losses.binary_cross_entropy(logits, labels[held_rows], with_logits=True, reduction="sum"))
            correct += ((logits > 0) == (labels[held_rows] > 0)).sum().item()
        scores[l2] = {"log_loss": (sum(losses) / labels.size).item(), "accuracy": correct / labels.size}
    return scores


def train_probe(
    fast: FastModel,
    examples: Sequence[LabeledPrompt],
    layer_ids: List[int],
    *,
    folds: int = 5,
    steps: int = 300,
    lr: float = 0.05,
    seed: int = 0,
) -> Tuple[Probe, dict]:
    """Returns the probe and a summary of how it was trained."""
    adapter = fast.adapter
    adapter.check_layer_ids(layer_ids, "--layers", model="fast model")
    if len(examples) < 2 * folds:
        raise DFlashError(f"{len(examples)} labeled prompts are too few for {folds}-fold cross-validation")
    features, labels = extract_features(fast, examples, layer_ids)
    scores = cross_validate(features, labels, folds, steps, lr, seed)
    l2 = min(L2_GRID, key=lambda value: scores[value]["log_loss"])
    mean, std = standardisation(features)
    weight, bias = fit_logistic((features - mean) / std, labels, l2, steps, lr)
    canary = pooled_features(fast, CANARY_PROMPT, layer_ids)
    probe = Probe(
        weight, bias, mean, std, canary, list(layer_ids), adapter.hidden_size, adapter.num_layers, adapter.vocab_size
    )
    train_accuracy = ((probe.logits(features) > 0) == (labels > 0)).mean().item()
    summary = {
        "fast_model": fast.path,
        "examples": len(examples),
        "expert_examples": int(labels.sum().item()),
        "layer_ids": list(layer_ids),
        "features": probe.num_features,
        "l2": l2,
        "cross_validation": {"folds": folds, "by_l2": {str(k): v for k, v in scores.items()}},
        "cv_accuracy": scores[l2]["accuracy"],
        "train_accuracy": train_accuracy,
        "steps": steps,
        "lr": lr,
        "seed": seed,
    }
    return probe, summary


def layer_list(text: str) -> List[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer ids, got '{text}'") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dflash-train-router", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data",
        default=str(DEFAULT_DATA),
        help='JSONL of {"prompt": ..., "label": "fast" | "expert"} (default: the shipped train split)',
    )
    parser.add_argument("--fast-model", default=str(DEFAULT_FAST), help="mlx-lm checkpoint the probe reads")
    parser.add_argument("--out", default=str(DEFAULT_ROUTER_PROBE), help="probe file to write (.safetensors)")
    parser.add_argument(
        "--layers",
        type=layer_list,
        help="fast-model layers pooled besides the final states (default: the middle layer)",
    )
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds for the L2 strength")
    parser.add_argument("--steps", type=int, default=300, help="full-batch optimiser steps per fit")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES)
    return parser


def train_and_save(args) -> int:
    examples = read_labeled_prompts(args.data)
    fast = load_fast_model(args.fast_model, args.dtype)
    layer_ids = args.layers if args.layers is not None else [fast.adapter.num_layers // 2]
    probe, summary = train_probe(
        fast, examples, layer_ids, folds=args.folds, steps=args.steps, lr=args.lr, seed=args.seed
    )
    out = Path(args.out)
    summary["data"] = args.data
    probe.save(out)
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"{summary['examples']} prompts, {summary['features']} features, L2 {summary['l2']}: "
        f"cross-validated accuracy {summary['cv_accuracy']:.3f}, training accuracy {summary['train_accuracy']:.3f}"
    )
    print(f"wrote {out} and {out.with_suffix('.json')}")
    return 0


def main(argv=None) -> int:
    return run_command("dflash-train-router", lambda: train_and_save(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
