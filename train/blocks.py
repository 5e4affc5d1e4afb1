"""How one sequence becomes a batch of training blocks, as in the DFlash paper (Chen, Liang and
Liu, arXiv 2602.06036).

Anchors are drawn at random inside the response, anew every epoch. Each anchor starts a block:
the anchor token is given, the B - 1 positions after it are masks whose labels are the
sequence's next tokens. A block sees the target's context features at the positions strictly
before its anchor and its whole own block, bidirectionally; blocks never see each other. All
blocks of a sequence run in one drafter pass, blocks on the batch axis. Predicted position k
(1..B-1) of a block weighs w_k = exp(-(k - 1) / gamma) in the loss.
"""

from dataclasses import dataclass
from typing import Optional

import mlx.core as mx
import numpy as np


def default_gamma(block_size: int) -> float:
    """The paper's loss-weight decay: 4 for B=8, 5 for B=10, 7 for B=16; linear between and beyond."""
    if block_size <= 10:
        return 4.0 + (block_size - 8) / 2
    return 5.0 + (block_size - 10) / 3


def loss_weights(block_size: int, gamma: float) -> np.ndarray:
    """w_k = exp(-(k - 1) / gamma) for the predicted block positions k = 1..B-1."""
    return np.exp(-np.arange(block_size - 1) / gamma).astype(np.float32)


def sample_anchors(rng: np.random.Generator, prompt_len: int, seq_len: int, count: int) -> np.ndarray:
    """Up to `count` distinct sorted anchors in the response, each with at least one label after it."""
    candidates = np.arange(prompt_len, seq_len - 1)
    if len(candidates) <= count:
        return candidates
    return np.sort(rng.choice(candidates, size=count, replace=False))


@dataclass
class Blocks:
    tokens: mx.array  # [N, B] anchor token then mask tokens
    anchors: mx.array  # [N] position of each block's first token
    mask: mx.array  # [N * B, S + N * B] what each block position may attend to (blocks side by side)
    labels: mx.array  # [N, B - 1] the tokens after each anchor
    weights: mx.array  # [N, B - 1] loss weight, 0 past the end of the sequence (and outside a draft vocabulary)
    vocab_labels: mx.array  # [N, B - 1] the labels' places in the drafter's vocabulary (the labels without one)


def vocabulary_places(draft_vocab: np.ndarray, vocab_size: int) -> np.ndarray:
    """Each token's place in the draft vocabulary `draft_vocab`, -1 for the tokens outside it: [V]."""
    places = np.full(vocab_size, -1, dtype=np.int32)
    places[draft_vocab] = np.arange(len(draft_vocab), dtype=np.int32)
    return places


def make_blocks(tokens: np.ndarray, anchors: np.ndarray, block_size: int, mask_token_id: int, gamma: float,
                vocab_places: Optional[np.ndarray] = None) -> Blocks:  # fmt: skip
    """The blocks at `anchors` of a sequence; with `vocab_places` (vocabulary_places) of a draft
    vocabulary, the labels outside it get no weight: the drafter cannot propose them."""
    seq_len, n = len(tokens), len(anchors)
    positions = anchors[:, None] + np.arange(block_size)[None]  # [N, B]
    block_tokens = np.full((n, block_size), mask_token_id, dtype=np.int32)
    block_tokens[:, 0] = tokens[anchors]
    label_positions = positions[:, 1:]
    inside = label_positions < seq_len
    labels = tokens[np.minimum(label_positions, seq_len - 1)]
    weights = loss_weights(block_size, gamma)[None] * inside
    vocab_labels = labels
    if vocab_places is not None:
        vocab_labels = vocab_places[labels]
        weights = weights * (vocab_labels >= 0)
        vocab_labels = np.maximum(vocab_labels, 0)
    context_visible = np.arange(seq_len)[None] < anchors[:, None]  # [N, S]
    same_block = np.kron(np.eye(n, dtype=bool), np.ones((block_size, block_size), dtype=bool))  # [N*B, N*B]
    mask = np.concatenate([np.repeat(context_visible, block_size, axis=0), same_block], axis=-1)
    return Blocks(
        tokens=mx.array(block_tokens),
        anchors=mx.array(anchors.astype(np.int32)),
        mask=mx.array(mask),
        labels=mx.array(labels.astype(np.int32)),
        weights=mx.array(weights.astype(np.float32)),
        vocab_labels=mx.array(vocab_labels.astype(np.int32)),
    )


def anchor_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """Anchors depend only on (seed, epoch, sequence): resampled every epoch, identical after a
    resume and on whichever rank the sequence lands."""
    return np.random.default_rng([seed, epoch, index])
