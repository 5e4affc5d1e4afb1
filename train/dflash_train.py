"""Train a DFlash drafter for a target with the recipe of the DFlash paper (Chen, Liang and Liu,
arXiv 2602.06036): the target is frozen and the drafter learns from the target's own answers,
with random anchors in each response, resampled every epoch (blocks.py); AdamW at lr 6e-4,
cosine decay after a 4% linear warmup, gradient norm clipped to 1.0, 6 epochs.

Each optimizer step takes `batch_size` regenerated sequences (split over the data-parallel
ranks). Per sequence: the frozen target computes its tapped hidden states, random anchors are
drawn in the response, and every block of the sequence trains in one drafter pass. The loss
is the weighted cross-entropy over all predicted block positions of the step's sequences.

With `dflash2` the drafter is a DFlash 2 drafter (dflash/dflash2.py), its convolutions starting
as the identity, and a selector loss joins the block loss (`selector_loss`). Saved in the
published DFlash 2 format.
"""

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_map, tree_unflatten
from tqdm import tqdm

from adapters.errors import DFlashError
from adapters.loading import DTYPES
from dflash.generate import generate
from dflash.loading import DFlashModel, check_pair, save_draft
from dflash.model import DFlashDraftModel, DraftConfig

from . import checkpoint
from .blocks import anchor_rng, default_gamma, make_blocks, sample_anchors, vocabulary_places
from .data import canonical, load_sequences, load_training_target, response_vocabulary, vocabulary_coverage
from .hidden_states import HiddenStateShards, target_hidden
from .logsumexp import cross_entropy
from .schedule import batch_of_step, learning_rate_schedule

MASK_TOKEN_NAMES = ("<|mask|>", "<|MASK|>", "<mask>", "[MASK]")
# A DFlash 2 run's drafter sizes and loss weight: recorded in its resume settings (only when on).
DFLASH2_SETTINGS = ("selector_rank", "selector_top_k", "conv_group_size", "conv_kernel_size", "selector_weight")
DRAFTER_DIR = "drafter"  # where a finished run saves its drafter (RUN/drafter)
# Settings a resumed run must share with the run it continues; the others may change.
TRAJECTORY_FIELDS = (
    "target", "data", "draft_layers", "block_size", "target_layer_ids", "mask_token_id", "anchors", "gamma",
    "max_length", "epochs", "batch_size", "lr", "warmup", "weight_decay", "grad_clip", "residual_init_scale", "seed",
    "eval_prompts",
)  # fmt: skip


@dataclass
class TrainConfig:
    target: str
    data: str
    out: str
    hidden_states: Optional[str] = None  # precomputed shards instead of running the target
    draft_layers: int = 1
    block_size: int = 16
    target_layer_ids: Optional[List[int]] = None  # default: the published rule
    mask_token_id: Optional[int] = None  # default: a mask token of the vocabulary, else the first unused id
    anchors: int = 512  # per sequence, resampled every epoch
    gamma: Optional[float] = None  # default: from the block size
    max_length: int = 3072
    sequences: Optional[int] = None  # the first N regenerated sequences (default all; the data may still grow)
    epochs: int = 6
    batch_size: int = 8  # sequences per optimizer step, over all ranks
    max_steps: Optional[int] = None  # stop early; the schedule still spans all epochs
    lr: float = 6e-4
    warmup: float = 0.04
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    residual_init_scale: float = 0.05  # see scale_residual_writes
    init_from_target: bool = False  # start the draft layers as the target's last layers (copy_target_layers)
    draft_vocab: Optional[int] = None  # the drafter proposes only the N most frequent tokens of the responses
    dflash2: bool = False  # a DFlash 2 drafter: convolutions and a path selector of these sizes
    selector_rank: int = 256
    selector_top_k: int = 16
    conv_group_size: int = 16
    conv_kernel_size: int = 2
    selector_weight: float = 1.0  # the selector loss's weight beside the block loss
    seed: int = 0
    save_every: int = 100
    keep_checkpoints: int = 2
    eval_every: int = 100
    eval_prompts: int = 8  # the last sequences of the data, held out
    eval_max_tokens: int = 128
    save_dtype: Optional[str] = None  # RUN/drafter in float32 (None), bfloat16 or float16; checkpoints stay float32
    wandb: str = "offline"  # offline | online | disabled
    wandb_project: str = "dflash-mlx"


def choose_mask_token(tokenizer, adapter, requested: Optional[int]) -> int:
    if requested is not None:
        return requested  # check_pair says if it is outside the vocabulary
    vocab = tokenizer.get_vocab()
    for name in MASK_TOKEN_NAMES:
        if name in vocab:
            return vocab[name]
    # The published Qwen3 drafters use the first embedding row that no token uses.
    unused = max(vocab.values()) + 1
    if unused < adapter.vocab_size:
        return unused
    raise DFlashError("the target's vocabulary has no mask token and no unused embedding row; pass --mask-token-id")


def make_draft_config(config: TrainConfig, adapter, tokenizer, draft_vocab_size: Optional[int] = None) -> DraftConfig:
    """Attention and MLP shapes follow the target, as in the published drafters."""
    args = adapter.args
    optional = {
        name: getattr(args, name)
        for name in ("head_dim", "rms_norm_eps", "rope_theta", "rope_scaling", "max_position_embeddings")
        if getattr(args, name, None) is not None
    }
    try:
        draft_config = make_config(config, adapter, tokenizer, {**optional, "draft_vocab_size": draft_vocab_size})
    except ValueError as e:  # DFlash 2 sizes that do not fit the target
        raise DFlashError(f"drafter settings: {e}") from None
    check_pair(adapter, draft_config)
    return draft_config


def make_config(config: TrainConfig, adapter, tokenizer, optional: dict) -> DraftConfig:
    args = adapter.args
    return DraftConfig(
        hidden_size=adapter.hidden_size,
        num_hidden_layers=config.draft_layers,
        num_attention_heads=args.num_attention_heads,
        num_key_value_heads=args.num_key_value_heads or args.num_attention_heads,
        intermediate_size=args.intermediate_size,
        vocab_size=adapter.vocab_size,
        block_size=config.block_size,
        num_target_layers=adapter.num_layers,
        target_layer_ids=config.target_layer_ids or adapter.default_layer_ids(config.draft_layers),
        mask_token_id=choose_mask_token(tokenizer, adapter, config.mask_token_id),
        **optional,
        **({name: getattr(config, name) for name in DFLASH2_SETTINGS[:4]} if config.dflash2 else {}),
    )


def scale_residual_writes(draft: DFlashDraftModel, scale: float) -> None:
    """Shrink the projections that write into the residual stream (attention out, MLP down).

    The block enters the drafter as target embeddings, which are small in trained LMs (rms
    0.034 in the former toy default's target), and the drafter's output goes through the target's tied
    LM head. With default init the fresh layers' writes are ~6x the embeddings and training
    sat on the most frequent token for the whole run; shrunk writes let it learn."""
    for layer in draft.layers:
        layer.self_attn.o_proj.weight = layer.self_attn.o_proj.weight * scale
        layer.mlp.down_proj.weight = layer.mlp.down_proj.weight * scale


def copy_target_layers(draft: DFlashDraftModel, adapter) -> None:
    """Start draft layer i as target layer L - n + i (n draft layers, L target layers): every
    parameter the two layers share by name and shape (attention projections, MLP, norms); the
    rest (say q_norm/k_norm under a Llama target, or the MLP under an MoE one) keeps its fresh
    init. The last target layers write what the target's final norm and LM head read, which is
    what the drafter's output goes through."""
    if len(draft.layers) > adapter.num_layers:
        raise DFlashError(f"--init-from-target: {len(draft.layers)} draft layers, the target has {adapter.num_layers}")
    for layer, source in zip(draft.layers, adapter.layers[-len(draft.layers) :]):
        own = dict(tree_flatten(layer.parameters()))
        shared = [(k, v) for k, v in tree_flatten(source.parameters()) if k in own and own[k].shape == v.shape]
        if not any(k.startswith("self_attn.") for k, _ in shared):
            raise DFlashError("--init-from-target: the target's attention layers differ in shape from the drafter's")
        layer.update(tree_unflatten(shared))


def block_loss(draft, adapter, head, blocks, hidden, selector_weight: float = 1.0):
    """The loss: the sum of weighted cross-entropies over the blocks' predicted positions (over the
    drafter's vocabulary: `head` is DFlashModel.draft_head), plus a DFlash 2 drafter's selector
    loss times `selector_weight`. With it [correct top-1 predictions among the positions with a
    label, the selector loss, the selector's correct choices]."""
    out = draft(adapter.embed(blocks.tokens), hidden, block_offset=blocks.anchors, mask=blocks.mask)[:, 1:]
    logits = draft.vocab_logits(out, head)
    loss = (cross_entropy(logits, blocks.vocab_labels) * blocks.weights).sum()
    correct = ((logits.argmax(-1) == blocks.vocab_labels) * (blocks.weights > 0)).sum()
    chose, chose_right = mx.array(0.0), mx.array(0)
    if draft.config.dflash2:
        chose, chose_right = selector_loss(draft.candidate_selector, out, logits, blocks, draft.vocab_token_ids)
    return loss + selector_weight * chose, mx.stack([correct, chose, chose_right])


def with_gold(candidates: mx.array, logits: mx.array, labels: mx.array) -> mx.array:
    """The top-k candidates [N, P, k] with the gold token `labels` [N, P] in place of the least
    likely one where it is missing, so that the selector always has the right answer to choose."""
    present = (candidates == labels[..., None]).any(axis=-1, keepdims=True)
    weakest = mx.argmin(mx.take_along_axis(logits, candidates, axis=-1), axis=-1, keepdims=True)
    replace = (mx.arange(candidates.shape[-1]) == weakest) & ~present
    return mx.where(replace, labels[..., None], candidates)


def selector_loss(selector, hidden, logits, blocks, draft_vocab: Optional[mx.array] = None):
    """The path selector's loss (our training objective; the public DFlash 2 descriptions name
    only its parts): at every predicted position, cross-entropy of the selector's scores over its
    candidates (the gold token among them) after the gold previous token (the anchor at the first),
    weighted as the block loss. It trains the selector alone: the drafter's states and logits enter
    it without a gradient, so the block loss alone shapes them (on a tiny run that kept the block
    loss at 3.11 instead of 3.54, with the same selector accuracy and tau). `logits` are over the
    drafter's vocabulary, whose token ids are `draft_vocab` where it has one. Returns (loss, correct choices)."""
    hidden, logits = mx.stop_gradient(hidden), mx.stop_gradient(logits)
    labels = blocks.vocab_labels
    candidates = with_gold(selector.candidates(logits), logits, labels)  # places in the drafter's vocabulary
    unary = mx.take_along_axis(logits, candidates, axis=-1)
    tokens = candidates if draft_vocab is None else draft_vocab[candidates]
    predecessors = mx.concatenate([blocks.tokens[:, :1], blocks.labels[:, :-1]], axis=1)[..., None]
    scores = selector.scores(hidden, unary, tokens, predecessors)[:, :, 0]  # [N, P, k]
    gold = mx.argmax(candidates == labels[..., None], axis=-1)
    loss = (cross_entropy(scores, gold) * blocks.weights).sum()
    return loss, ((scores.argmax(-1) == gold) * (blocks.weights > 0)).sum()


def broadcast_from_rank0(tree, group):
    if group.size() == 1:
        return tree
    return tree_map(lambda x: mx.distributed.all_sum(x if group.rank() == 0 else mx.zeros_like(x), group=group), tree)


def evaluate_tau(model: DFlashModel, tokenizer, sequences, max_tokens: int) -> float:
    """Mean acceptance length of the real decode loop on held-out prompts (greedy)."""
    lengths = []
    for sequence in sequences:
        lengths += generate(model, tokenizer, sequence.prompt_ids, max_tokens).stats.acceptance_lengths
    return sum(lengths) / max(len(lengths), 1)


def start_wandb(config: TrainConfig, run_id: Optional[str]):
    if config.wandb == "disabled":
        return None
    import wandb

    return wandb.init(
        project=config.wandb_project, dir=config.out, mode=config.wandb, config=asdict(config),
        id=run_id, resume="allow",
    )  # fmt: skip


def train(config: TrainConfig) -> Path:
    group = mx.distributed.init()
    rank, world = group.rank(), group.size()
    if config.batch_size % world:
        raise DFlashError(f"batch size {config.batch_size} does not split evenly over {world} ranks")
    out = Path(config.out)
    config.target, config.data = canonical(config.target), canonical(config.data)
    target, tokenizer, adapter = load_training_target(config.target)
    sequences = load_sequences(config.data, config.max_length, config.sequences)
    if len(sequences) <= config.eval_prompts:
        raise DFlashError(f"{len(sequences)} sequences leave none to train on after {config.eval_prompts} held out")
    train_sequences = sequences[: len(sequences) - config.eval_prompts]
    eval_sequences = sequences[len(sequences) - config.eval_prompts :]
    steps_per_epoch = len(train_sequences) // config.batch_size
    if steps_per_epoch == 0:
        raise DFlashError(f"{len(train_sequences)} training sequences do not fill one batch of {config.batch_size}")
    total_steps = config.epochs * steps_per_epoch
    last_step = min(total_steps, config.max_steps or total_steps)

    draft_vocab = response_vocabulary(train_sequences, config.draft_vocab) if config.draft_vocab else None
    draft_config = make_draft_config(config, adapter, tokenizer, None if draft_vocab is None else len(draft_vocab))
    config.target_layer_ids, config.mask_token_id = draft_config.target_layer_ids, draft_config.mask_token_id
    config.gamma = config.gamma or default_gamma(config.block_size)
    layer_ids = draft_config.target_layer_ids
    shards = None
    if config.hidden_states:
        shards = HiddenStateShards(config.hidden_states, config.data, layer_ids, config.max_length)

    def hidden_states_of(sequence):
        return shards(sequence.index) if shards else target_hidden(adapter, sequence.tokens, layer_ids)

    mx.random.seed(config.seed)
    draft = DFlashDraftModel(draft_config)
    vocab_places = None
    if draft_vocab is not None:
        draft.draft_vocab = mx.array(draft_vocab)
        vocab_places = vocabulary_places(draft_vocab, adapter.vocab_size)
    if config.init_from_target:
        copy_target_layers(draft, adapter)
    else:
        scale_residual_writes(draft, config.residual_init_scale)
    schedule = learning_rate_schedule(config.lr, round(config.warmup * total_steps), total_steps)
    optimizer = optim.AdamW(learning_rate=schedule, weight_decay=config.weight_decay)
    optimizer.init(draft.trainable_parameters())
    settings = {**{k: asdict(config)[k] for k in TRAJECTORY_FIELDS}, "num_sequences": len(sequences)}
    if config.init_from_target:  # recorded only when on, so that runs from before the option still resume
        settings["init_from_target"] = True
    if config.draft_vocab:  # as init_from_target
        settings["draft_vocab"] = config.draft_vocab
    if config.dflash2:  # as init_from_target
        settings.update(dflash2=True, **{name: getattr(config, name) for name in DFLASH2_SETTINGS})

    step, run_id = 0, None
    if rank == 0:
        state = checkpoint.resume(out, draft, draft_config.to_dict(), optimizer, settings)
        if state is not None:
            step, run_id = state["step"], state["wandb_run_id"]
            print(f"resuming {out} at step {step}")
    # Only rank 0 reads the checkpoint (other machines need not have it); every rank starts from its state.
    draft.update(broadcast_from_rank0(draft.parameters(), group))
    optimizer.state = broadcast_from_rank0(optimizer.state, group)
    step = int(broadcast_from_rank0(mx.array(step), group).item())
    mx.eval(draft.parameters(), optimizer.state)

    metrics_file, run = out / "metrics.jsonl", None
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        checkpoint.keep_metrics_until(metrics_file, step)
        run = start_wandb(config, run_id)
        run_id = run.id if run is not None else None
        if draft_vocab is not None and eval_sequences:
            coverage = vocabulary_coverage(eval_sequences, draft_vocab)
            print(f"draft vocabulary: {len(draft_vocab)} tokens, {coverage:.1%} of the held-out responses' tokens")
    eval_model = DFlashModel(target, adapter, draft)
    loss_and_grad = nn.value_and_grad(draft, block_loss)

    progress = tqdm(total=last_step, initial=step, desc="train", unit="step", disable=rank != 0)
    while step < last_step:
        tic = time.perf_counter()
        epoch, batch = batch_of_step(config.seed, step, len(train_sequences), config.batch_size)

        # weighted loss, weight, correct, labelled positions, selector loss, selector's correct choices
        grads, totals = None, mx.zeros(6)
        for i in batch[rank::world]:
            sequence = train_sequences[i]
            tokens = np.array(sequence.tokens)
            rng = anchor_rng(config.seed, epoch, sequence.index)
            anchors = sample_anchors(rng, len(sequence.prompt_ids), len(tokens), config.anchors)
            blocks = make_blocks(tokens, anchors, config.block_size, draft_config.mask_token_id, config.gamma,
                                 vocab_places)  # fmt: skip
            (loss, counts), seq_grads = loss_and_grad(draft, adapter, eval_model.draft_head, blocks,
                                                      hidden_states_of(sequence), config.selector_weight)  # fmt: skip
            grads = seq_grads if grads is None else tree_map(mx.add, grads, seq_grads)
            loss = loss - config.selector_weight * counts[1]  # the block loss alone, comparable with DFlash's
            totals = totals + mx.stack([loss, blocks.weights.sum(), counts[0], (blocks.weights > 0).sum(), *counts[1:]])
            mx.eval(grads, totals)

        totals = mx.distributed.all_sum(totals, group=group) if world > 1 else totals
        # average_gradients divides the ranks' sum by `world`; scaling first makes the result
        # the gradient of the loss averaged over every weighted position of the global batch.
        grads = nn.average_gradients(tree_map(lambda g: g * (world / totals[1]), grads), group=group)
        grads, grad_norm = optim.clip_grad_norm(grads, config.grad_clip)
        optimizer.update(draft, grads)
        mx.eval(draft.parameters(), optimizer.state, grad_norm)
        step += 1

        loss, weight, correct, labelled, chose, chose_right = totals.tolist()
        record = {"step": step, "epoch": epoch, "loss": loss / weight, "accuracy": correct / labelled,
                  "lr": optimizer.learning_rate.item(), "grad_norm": grad_norm.item(), "ranks": world,
                  "step_time": time.perf_counter() - tic}  # fmt: skip
        if config.dflash2:
            record.update(selector_loss=chose / weight, selector_accuracy=chose_right / labelled)
        if rank == 0:
            if config.eval_prompts and (step % config.eval_every == 0 or step == last_step):
                record["tau"] = evaluate_tau(eval_model, tokenizer, eval_sequences, config.eval_max_tokens)
            with open(metrics_file, "a") as f:
                f.write(json.dumps(record) + "\n")
            if run is not None:
                run.log(record, step=step)
            if step % config.save_every == 0 or step == last_step:
                state = {"settings": settings, "wandb_run_id": run_id}
                checkpoint.save_checkpoint(
                    out, step, draft, draft_config.to_dict(), optimizer, state, config.keep_checkpoints
                )
            progress.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['accuracy']:.2f}")
            progress.update(1)
    progress.close()

    drafter_dir = out / DRAFTER_DIR
    if rank == 0:
        save_draft(draft, drafter_dir, DTYPES[config.save_dtype] if config.save_dtype else None)
        if run is not None:
            run.finish()
    return drafter_dir
