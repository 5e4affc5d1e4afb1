"""Next-token pretraining of an mlx-lm `llama` model on the chat corpus (corpus.py).

Samples are rendered with the chat template, tokenized, shuffled and concatenated into one
token stream that is cut into fixed-length chunks (packed sequences; a chunk can span several
samples, each starting with <|begin_of_text|>). The loss is taken on every token, prompts and
template tokens included: the prompts are short and templated, so masking them would only
throw away signal in a run that sees each sample about once.

Training is fp32 AdamW with linear warmup then cosine decay, and grad-norm clipping; every
epoch walks a new seeded permutation of the chunks. The schedule, the data order and the
checkpoints are those of drafter training (train/schedule.py, train/checkpoint.py): metrics go
to a JSONL file and the run resumes from its newest checkpoint. The exported model directory holds config.json,
model.safetensors in bfloat16 and the tokenizer files, and loads with `mlx_lm.load(dir)`.
"""

import dataclasses
import json
import math
import shutil
import time
from pathlib import Path

import datasets
import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_map_with_path
from mlx_lm.models.llama import Model, ModelArgs
from tokenizers import Tokenizer
from tqdm import tqdm

from dflash.files import atomic_directory, write_model

from .. import checkpoint
from ..schedule import batch_of_step, learning_rate_schedule
from .tokenizer import TOKENIZER_FILES, format_chat

# Settings a resumed run must share with the run it continues; the others may change.
TRAJECTORY_FIELDS = (
    "steps", "seq_len", "batch_size", "learning_rate", "adam_betas", "warmup_steps", "min_lr_ratio", "weight_decay",
    "grad_clip", "seed",
)  # fmt: skip


@dataclasses.dataclass
class PretrainConfig:
    steps: int
    seq_len: int = 512
    batch_size: int = 4
    learning_rate: float = 1e-3
    adam_betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 30
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_batches: int = 8
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    seed: int = 0


def llama_args(vocab_size: int, context: int, **shape) -> ModelArgs:
    """A llama with tied embeddings, `shape` giving its sizes."""
    return ModelArgs(
        model_type="llama",
        vocab_size=vocab_size,
        max_position_embeddings=context,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        **shape,
    )


def count_parameters(model: nn.Module) -> int:
    return sum(v.size for _, v in tree_flatten(model.parameters()))


def build_model(args: ModelArgs, seed: int) -> Model:
    """A llama Model with GPT-2 style init: N(0, 0.02) weights, residual output projections
    scaled by 1/sqrt(2 * layers). mlx's default N(0, 1) embedding gives huge initial logits when
    the embedding is tied to the LM head."""
    mx.random.seed(seed)
    model = Model(args)
    residual_std = 0.02 / math.sqrt(2 * args.num_hidden_layers)

    def init(path, w):
        if path.endswith("norm.weight"):
            return mx.ones_like(w)
        std = residual_std if path.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
        return std * mx.random.normal(w.shape)

    model.update(tree_map_with_path(init, model.parameters()))
    mx.eval(model.parameters())
    return model


def tokenize(dataset: datasets.Dataset, tokenizer: Tokenizer) -> list[np.ndarray]:
    """Token ids of each sample, rendered as one chat exchange."""
    texts = [format_chat(p, r) for p, r in zip(dataset["prompt"], dataset["response"])]
    return [np.array(e.ids, dtype=np.int32) for e in tokenizer.encode_batch(texts, add_special_tokens=False)]


def token_stream(samples: list[np.ndarray], kinds: list[str], seed: int, kind_repeats: dict[str, int] | None = None) -> np.ndarray:
    """Shuffled concatenation of the samples; kinds in kind_repeats occur that many times
    (to raise the share of prose, which is a small part of the corpus)."""
    kind_repeats = kind_repeats or {}
    order = [i for i, kind in enumerate(kinds) for _ in range(kind_repeats.get(kind, 1))]
    np.random.default_rng(seed).shuffle(order)
    return np.concatenate([samples[i] for i in order])


def chunk_count(stream: np.ndarray, seq_len: int) -> int:
    return (len(stream) - 1) // seq_len


def chunks(stream: np.ndarray, indices: np.ndarray, seq_len: int) -> tuple[mx.array, mx.array]:
    """Inputs and next-token targets of the given chunks."""
    rows = np.stack([stream[i * seq_len : i * seq_len + seq_len + 1] for i in indices])
    return mx.array(rows[:, :-1]), mx.array(rows[:, 1:])


def lm_loss(model: Model, inputs: mx.array, targets: mx.array) -> mx.array:
    return nn.losses.cross_entropy(model(inputs), targets, reduction="mean")


def evaluate(model: Model, stream: np.ndarray, cfg: PretrainConfig) -> float:
    """Mean loss over the first eval_batches batches of consecutive chunks of the stream."""
    n = min(chunk_count(stream, cfg.seq_len), cfg.eval_batches * cfg.batch_size)
    losses = []
    for start in range(0, n - cfg.batch_size + 1, cfg.batch_size):
        inputs, targets = chunks(stream, np.arange(start, start + cfg.batch_size), cfg.seq_len)
        losses.append(lm_loss(model, inputs, targets).item())
    return float(np.mean(losses))


def pretrain(
    model_args: ModelArgs,
    cfg: PretrainConfig,
    train_stream: np.ndarray,
    heldout_stream: np.ndarray,
    work_dir: Path,
) -> tuple[Model, dict]:
    """Train (or resume) a model; returns it and a summary of the run (losses, throughput).

    work_dir receives metrics.jsonl and checkpoints/.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    model = build_model(model_args, cfg.seed)
    final_lr = cfg.learning_rate * cfg.min_lr_ratio
    schedule = learning_rate_schedule(cfg.learning_rate, cfg.warmup_steps, cfg.steps, final_lr)
    optimizer = optim.AdamW(learning_rate=schedule, betas=list(cfg.adam_betas), weight_decay=cfg.weight_decay)
    optimizer.init(model.trainable_parameters())
    model_config = dataclasses.asdict(model_args)
    settings = {**{k: getattr(cfg, k) for k in TRAJECTORY_FIELDS}, "train_stream_tokens": len(train_stream)}
    state = checkpoint.resume(work_dir, model, model_config, optimizer, settings)
    start_step = state["step"] if state else 0
    checkpoint.keep_metrics_until(work_dir / "metrics.jsonl", start_step)

    loss_and_grad = nn.value_and_grad(model, lm_loss)

    def train_step(inputs, targets):
        loss, grads = loss_and_grad(model, inputs, targets)
        grads, grad_norm = optim.clip_grad_norm(grads, cfg.grad_clip)
        optimizer.update(model, grads)
        return loss, grad_norm

    n_chunks = chunk_count(train_stream, cfg.seq_len)
    tokens_per_step = cfg.batch_size * cfg.seq_len
    summary = {"parameters": count_parameters(model), "train_tokens_available": len(train_stream), "resumed_from_step": start_step}
    train_seconds, losses = 0.0, []
    with open(work_dir / "metrics.jsonl", "a") as metrics, tqdm(total=cfg.steps, initial=start_step, desc=work_dir.name) as bar:
        for step in range(start_step, cfg.steps):
            done = step + 1
            _, indices = batch_of_step(cfg.seed, step, n_chunks, cfg.batch_size)
            inputs, targets = chunks(train_stream, indices, cfg.seq_len)
            tic = time.perf_counter()
            loss, grad_norm = train_step(inputs, targets)
            mx.eval(loss, grad_norm, model.parameters(), optimizer.state)
            seconds = time.perf_counter() - tic
            train_seconds += seconds
            losses.append(loss.item())
            record = {
                "step": done,
                "loss": losses[-1],
                "grad_norm": grad_norm.item(),
                "learning_rate": optimizer.learning_rate.item(),
                "tokens_per_s": tokens_per_step / seconds,
            }
            if done % cfg.eval_every == 0 or done == cfg.steps:
                record["heldout_loss"] = evaluate(model, heldout_stream, cfg)
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()
            bar.set_postfix(loss=f"{losses[-1]:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
            bar.update(1)
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                checkpoint.save_checkpoint(
                    work_dir, done, model, model_config, optimizer, {"settings": settings}, cfg.keep_checkpoints
                )

    trained_steps = cfg.steps - start_step
    summary.update(
        train_loss_last_50_steps=float(np.mean(losses[-50:])) if losses else None,
        heldout_loss=evaluate(model, heldout_stream, cfg),
        train_tokens_seen=cfg.steps * tokens_per_step,
        tokens_per_s=trained_steps * tokens_per_step / train_seconds if train_seconds else None,
        train_seconds_this_session=train_seconds,
    )
    return model, summary


def save_model(model: Model, model_args: ModelArgs, out_dir: Path, tokenizer_dir: Path, eos_token_ids: list[int], train_config: dict) -> None:
    """Export a directory that `mlx_lm.load` reads like a hub checkpoint (bfloat16 weights)."""
    weights = {k: v.astype(mx.bfloat16) for k, v in tree_flatten(model.parameters())}
    config = {**dataclasses.asdict(model_args), "eos_token_id": eos_token_ids, "torch_dtype": "bfloat16"}
    with atomic_directory(out_dir) as partial:
        write_model(partial, weights, config)
        (partial / "train_config.json").write_text(json.dumps(train_config, indent=2) + "\n")
        for name in TOKENIZER_FILES:
            shutil.copy(Path(tokenizer_dir) / name, partial / name)
