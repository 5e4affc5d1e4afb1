"""The router's fast model: a Llama-family target pruned to a few of its layers, healed by
distillation on the target's own regenerated answers, and saved small as an ordinary mlx-lm
checkpoint (config.json, model.safetensors, tokenizer) that `mlx_lm.load` and the project's
`load_fast_model` read.

Pruning drops one contiguous block of layers: the fast model keeps the target's first i and
last k - i layers. With k of L layers kept that is only k + 1 candidates, so i is chosen by
measurement: the KL(target || pruned) over the response positions of a few training sequences,
for every i, before any healing (RUN/pruning.json holds the figures).

The embedding (tied: the LM head too) is the target's, quantized as it ships (`--embedding-bits`,
bfloat16 scales) and frozen: training sees the values `load_fast_model` computes with, so the
healing makes up for the quantization. The kept layers and the final norm train on KL(target ||
fast) at every response position, the frozen target's logits computed on the fly, averaged over
the step's positions; AdamW with warmup and cosine decay, gradient clipping, the data order,
checkpoints, resuming and metrics of drafter training (schedule.py, checkpoint.py). The layers
are quantized to `--layer-bits` when the model is saved to RUN/fast-model.

    python -m train.fast_model --target FILE.gguf --data DATA --out RUN --layers 3
"""

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import List, Optional

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_map
from mlx_lm.models import llama
from tqdm import tqdm

from adapters.errors import DFlashError
from adapters.loading import load_target
from adapters.routing import load_fast_model
from dflash.commands import run_command
from dflash.files import atomic_directory, write_model

from . import checkpoint
from .cli import int_list, positive_int
from .data import canonical, load_sequences
from .dflash_train import start_wandb
from .logsumexp import logsumexp
from .schedule import batch_of_step, learning_rate_schedule

# Settings a resumed run must share with the run it continues; the others may change.
TRAJECTORY_FIELDS = (
    "target", "data", "layers", "sequences", "eval_sequences", "max_length", "epochs", "batch_size", "lr", "warmup",
    "weight_decay", "grad_clip", "embedding_bits", "group_size", "seed",
)  # fmt: skip
QUANTIZATION_BITS = (2, 3, 4, 5, 6, 8)  # MLX's affine quantization
# What a finished run leaves in its directory: the saved model, and its held-out figures.
FAST_MODEL_DIR, SUMMARY_FILE = "fast-model", "summary.json"


@dataclass
class FastModelConfig:
    target: str
    data: str
    out: str
    layers: int = 3  # k, the layers kept
    keep: Optional[List[int]] = None  # the kept layers' indices; default: measured (see choose_layers)
    sequences: Optional[int] = None  # the first N regenerated sequences (default all; the data may still grow)
    selection_sequences: int = 4  # training sequences the layer choice is measured on
    eval_sequences: int = 8  # the last sequences, held out
    max_length: int = 512  # prompt + response tokens
    epochs: int = 1
    batch_size: int = 8
    max_steps: Optional[int] = None  # stop early; the schedule still spans all epochs
    lr: float = 1e-3  # the better of 1e-3 and 3e-3 in a 24-step pilot on SmolLM2
    warmup: float = 0.04
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    embedding_bits: int = 4
    layer_bits: int = 4
    group_size: int = 64
    seed: int = 0
    save_every: int = 50
    keep_checkpoints: int = 2
    eval_every: int = 50
    wandb: str = "offline"  # offline | online | disabled
    wandb_project: str = "dflash-mlx"


def load_llama_target(path: str):
    """The frozen teacher, float32 and dequantized. Returns (model, tokenizer)."""
    model, tokenizer = load_target(path, "float32", dequantize="on")
    if not isinstance(model, llama.Model) or not model.args.tie_word_embeddings:
        raise DFlashError(f"the fast model is pruned from a Llama target with tied embeddings; '{path}' is not one")
    return model, tokenizer


def block_drop_candidates(num_layers: int, k: int) -> List[List[int]]:
    """The first i and last k - i layers, for i = 0..k."""
    if not 1 <= k < num_layers:
        raise DFlashError(f"cannot keep {k} of the target's {num_layers} layers (1 to {num_layers - 1})")
    return [list(range(i)) + list(range(num_layers - k + i, num_layers)) for i in range(k + 1)]


def prune(target: llama.Model, keep: List[int]) -> llama.Model:
    """A Llama with the target's layers `keep`, in order, its embedding and its final norm (the
    target's own arrays)."""
    layers = target.args.num_hidden_layers
    if not keep or list(keep) != sorted(set(keep)) or keep[0] < 0 or keep[-1] >= layers:
        raise DFlashError(f"layers to keep {keep}: expected increasing indices in 0..{layers - 1}")
    args = replace(target.args, num_hidden_layers=len(keep), layer_types=[target.args.layer_types[i] for i in keep])
    pruned = llama.Model(args)
    source = target.parameters()["model"]
    pruned.update({"model": {"embed_tokens": source["embed_tokens"], "norm": source["norm"],
                             "layers": [source["layers"][i] for i in keep]}})  # fmt: skip
    return pruned


def check_quantization(config: FastModelConfig, args: llama.ModelArgs) -> None:
    for bits in (config.embedding_bits, config.layer_bits):
        if bits not in QUANTIZATION_BITS:
            raise DFlashError(f"cannot quantize to {bits} bits; choose one of {', '.join(map(str, QUANTIZATION_BITS))}")
    widths = (args.hidden_size, args.intermediate_size, args.num_attention_heads * (args.head_dim or 0))
    if any(width % config.group_size for width in widths if width):
        raise DFlashError(f"quantization groups of {config.group_size} do not divide the layers' widths {widths}")


def shipped_embedding(embedding: nn.Embedding, bits: int, group_size: int) -> nn.QuantizedEmbedding:
    """The embedding as the fast model ships it: quantized from bfloat16, so its scales are bfloat16."""
    bf16 = nn.Embedding(*embedding.weight.shape)
    bf16.weight = embedding.weight.astype(mx.bfloat16)
    return nn.QuantizedEmbedding.from_embedding(bf16, group_size, bits)


def as_computed(quantized: nn.QuantizedEmbedding) -> nn.Embedding:
    """`quantized` as `load_fast_model` computes with it on the CPU backend: scales cast to float32,
    then dequantized."""
    embedding = nn.Embedding(*quantized.weight.shape)  # shape only; the weight is replaced
    scales, biases = quantized.scales.astype(mx.float32), quantized.biases.astype(mx.float32)
    embedding.weight = mx.dequantize(quantized.weight, scales, biases, quantized.group_size, quantized.bits)
    embedding.freeze()
    return embedding


def student_of(target: llama.Model, keep: List[int], embedding: nn.QuantizedEmbedding) -> llama.Model:
    student = prune(target, keep)
    student.model.embed_tokens = as_computed(embedding)
    mx.eval(student.parameters())
    return student


def response_logits(model: llama.Model, tokens: mx.array, start: int) -> mx.array:
    """Logits at the positions that predict the response (tokens from `start` on)."""
    hidden = model.model(tokens[None])[0, start - 1 : -1]
    return model.model.embed_tokens.as_linear(hidden)


def log_softmax(logits: mx.array) -> mx.array:
    return logits - logsumexp(logits)[..., None]


def distillation_loss(student, tokens: mx.array, start: int, teacher: mx.array):
    """Summed over the response positions: KL(teacher || student) (the loss), the cross-entropy
    on the regenerated tokens, and the positions where the two models' top tokens agree.
    `teacher` holds the target's log-probabilities there."""
    logprobs = log_softmax(response_logits(student, tokens, start))
    kl = (mx.exp(teacher) * (teacher - logprobs)).sum()
    ce = -mx.take_along_axis(logprobs, tokens[start:, None], axis=-1).sum()
    agree = (logprobs.argmax(-1) == teacher.argmax(-1)).sum()
    return kl, ce, agree


def distillation_metrics(target, students: list, sequences) -> List[dict]:
    """Per-position means of KL(target || student), cross-entropy and top-1 agreement, per student."""
    totals, positions = [mx.zeros(3) for _ in students], 0
    for sequence in sequences:
        tokens, start = mx.array(sequence.tokens), len(sequence.prompt_ids)
        teacher = log_softmax(response_logits(target, tokens, start))
        for i, student in enumerate(students):
            totals[i] = totals[i] + mx.stack(distillation_loss(student, tokens, start, teacher))
            mx.eval(totals[i])
        positions += len(sequence.response_ids)
    return [dict(zip(("kl", "ce", "agreement"), (t / positions).tolist())) for t in totals]


def choose_layers(target, embedding, k: int, sequences) -> dict:
    """The block-drop candidate whose pruned model is closest to the target (lowest KL) on `sequences`."""
    candidates = block_drop_candidates(target.args.num_hidden_layers, k)
    measured = distillation_metrics(target, [student_of(target, c, embedding) for c in candidates], sequences)
    scores = [{"keep": c, **m} for c, m in zip(candidates, measured)]
    return {"keep": min(scores, key=lambda s: s["kl"])["keep"], "candidates": scores,
            "selection_sequences": [s.index for s in sequences]}  # fmt: skip


def save_fast_model(student, embedding, tokenizer, directory, layer_bits: int, group_size: int) -> Path:
    """RUN/fast-model: the layers quantized from bfloat16 to `layer_bits`, the embedding as it trained."""
    model = llama.Model(student.args)
    model.update(student.parameters())
    model.set_dtype(mx.bfloat16)
    nn.quantize(model, group_size, layer_bits, class_predicate=lambda _, module: isinstance(module, nn.Linear))
    model.model.embed_tokens = embedding
    quantization = {"group_size": group_size, "bits": layer_bits,
                    "model.embed_tokens": {"group_size": embedding.group_size, "bits": embedding.bits}}  # fmt: skip
    config = {**asdict(student.args), "quantization": quantization, "eos_token_id": sorted(tokenizer.eos_token_ids)}
    with atomic_directory(directory) as partial:
        write_model(partial, dict(tree_flatten(model.parameters())), config)
        tokenizer._tokenizer.save_pretrained(str(partial))
        # Without indentation: 1.6 MB instead of 3.5 for a 49k-token vocabulary.
        tokenizer._tokenizer.backend_tokenizer.save(str(partial / "tokenizer.json"), pretty=False)
    return Path(directory)


def directory_bytes(directory: Path) -> int:
    return sum(f.stat().st_size for f in Path(directory).iterdir() if f.is_file())


def layer_choice(config: FastModelConfig, target, embedding, sample) -> List[int]:
    """`config.keep`, else the choice RUN/pruning.json records, else a new measured choice (recorded)."""
    record = Path(config.out) / "pruning.json"
    if config.keep is not None:
        return list(config.keep)
    if record.exists():
        return json.loads(record.read_text())["keep"]
    choice = choose_layers(target, embedding, config.layers, sample)
    partial = record.with_name(record.name + ".partial")
    partial.write_text(json.dumps(choice, indent=2) + "\n")
    os.replace(partial, record)
    return choice["keep"]


def heal(config: FastModelConfig) -> Path:
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    config.target, config.data = canonical(config.target), canonical(config.data)
    target, tokenizer = load_llama_target(config.target)
    sequences = load_sequences(config.data, config.max_length, config.sequences)
    train_sequences = sequences[: len(sequences) - config.eval_sequences]
    eval_sequences = sequences[len(sequences) - config.eval_sequences :]
    steps_per_epoch = len(train_sequences) // config.batch_size
    if config.eval_sequences < 1 or steps_per_epoch == 0:
        raise DFlashError(f"{len(sequences)} sequences: need at least one held out and a batch of "
                          f"{config.batch_size} to train on")  # fmt: skip
    total_steps = config.epochs * steps_per_epoch
    last_step = min(total_steps, config.max_steps or total_steps)

    check_quantization(config, target.args)
    embedding = shipped_embedding(target.model.embed_tokens, config.embedding_bits, config.group_size)
    keep = layer_choice(config, target, embedding, train_sequences[: config.selection_sequences])
    if len(keep) != config.layers:
        raise DFlashError(f"{len(keep)} layers to keep ({keep}) but --layers {config.layers}")
    student = student_of(target, keep, embedding)
    schedule = learning_rate_schedule(config.lr, round(config.warmup * total_steps), total_steps)
    optimizer = optim.AdamW(learning_rate=schedule, weight_decay=config.weight_decay)
    optimizer.init(student.trainable_parameters())
    settings = {**{k: asdict(config)[k] for k in TRAJECTORY_FIELDS}, "keep": keep, "num_sequences": len(sequences)}
    model_config = asdict(student.args)
    state = checkpoint.resume(out, student, model_config, optimizer, settings)
    step, run_id = (state["step"], state["wandb_run_id"]) if state else (0, None)
    metrics_file = out / "metrics.jsonl"
    checkpoint.keep_metrics_until(metrics_file, step if step else -1)  # without a checkpoint, step 0 is redone
    run = start_wandb(config, run_id)
    run_id = run.id if run is not None else None

    def log(record: dict) -> None:
        with open(metrics_file, "a") as f:
            f.write(json.dumps(record) + "\n")
        if run is not None:
            run.log(record, step=record["step"])

    if step == 0:  # the pruned model before any healing
        log({"step": 0, **prefixed("heldout", distillation_metrics(target, [student], eval_sequences)[0])})
    loss_and_grad = nn.value_and_grad(student, distillation_loss)
    progress = tqdm(total=last_step, initial=step, desc="heal", unit="step")
    while step < last_step:
        tic = time.perf_counter()
        epoch, batch = batch_of_step(config.seed, step, len(train_sequences), config.batch_size)
        grads, totals = None, mx.zeros(4)  # KL, cross-entropy, agreement, positions
        for i in batch:
            sequence = train_sequences[i]
            tokens, start = mx.array(sequence.tokens), len(sequence.prompt_ids)
            teacher = log_softmax(response_logits(target, tokens, start))
            (kl, ce, agree), sequence_grads = loss_and_grad(student, tokens, start, teacher)
            grads = sequence_grads if grads is None else tree_map(mx.add, grads, sequence_grads)
            totals = totals + mx.stack([kl, ce, agree, mx.array(len(sequence.response_ids))])
            mx.eval(grads, totals)
        grads, grad_norm = optim.clip_grad_norm(tree_map(lambda g: g / totals[3], grads), config.grad_clip)
        optimizer.update(student, grads)
        mx.eval(student.parameters(), optimizer.state, grad_norm)
        step += 1

        kl, ce, agree, positions = totals.tolist()
        seconds = time.perf_counter() - tic
        record = {"step": step, "epoch": epoch, "kl": kl / positions, "ce": ce / positions,
                  "agreement": agree / positions, "lr": optimizer.learning_rate.item(), "grad_norm": grad_norm.item(),
                  "step_time": seconds, "positions_per_s": positions / seconds}  # fmt: skip
        if step % config.eval_every == 0 or step == last_step:
            record.update(prefixed("heldout", distillation_metrics(target, [student], eval_sequences)[0]))
        log(record)
        if step % config.save_every == 0 or step == last_step:
            state = {"settings": settings, "wandb_run_id": run_id}
            checkpoint.save_checkpoint(out, step, student, model_config, optimizer, state, config.keep_checkpoints)
        progress.set_postfix(kl=f"{record['kl']:.3f}", agree=f"{record['agreement']:.2f}")
        progress.update(1)
    progress.close()

    saved = save_fast_model(student, embedding, tokenizer, out / FAST_MODEL_DIR, config.layer_bits, config.group_size)
    shipped = distillation_metrics(target, [load_fast_model(str(saved)).model], eval_sequences)[0]
    summary = {"keep": keep, "step": step, "bytes": directory_bytes(saved), **prefixed("heldout_shipped", shipped)}
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    if run is not None:
        run.summary.update(summary)
        run.finish()
    return saved


def prefixed(prefix: str, values: dict) -> dict:
    return {f"{prefix}_{k}": v for k, v in values.items()}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train.fast_model", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--target", required=True, help="Llama target: GGUF file, mlx-lm directory or hub id")
    parser.add_argument("--data", required=True, help="data directory from `dflash-train regenerate`")
    parser.add_argument("--out", required=True, help="run directory (resumed if it has checkpoints)")
    parser.add_argument("--keep", type=int_list, default=None, help="layers to keep, e.g. 0,1,29 (default: measured)")
    parser.add_argument("--wandb", choices=["offline", "online", "disabled"],
                        default=os.environ.get("WANDB_MODE", "offline"))  # fmt: skip
    defaults = FastModelConfig(target="", data="", out="")
    for name, value in asdict(defaults).items():
        if isinstance(value, (int, float)) and name not in ("keep", "wandb"):
            kind = positive_int if isinstance(value, int) and name != "seed" else type(value)
            parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=value)
    parser.add_argument("--sequences", type=positive_int, default=None, help="the first N sequences (default all)")
    parser.add_argument("--max-steps", type=positive_int, default=None, help="stop early; schedule unchanged")
    parser.add_argument("--wandb-project", default=defaults.wandb_project)
    return parser


def heal_and_report(args) -> int:
    saved = heal(FastModelConfig(**vars(args)))
    print(f"wrote {saved} ({directory_bytes(saved) / 1e6:.1f} MB)")
    return 0


def main(argv=None) -> int:
    return run_command("python -m train.fast_model", lambda: heal_and_report(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
