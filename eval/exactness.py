"""Exactness: does a method reproduce plain greedy decoding token for token, and where it does
not, was the target nearly tied there (rounding of a batched pass can flip it) or not (a bug)?"""

from typing import List, Optional, Tuple

import mlx.core as mx

# Largest top-1/top-2 logit gap that the rounding differences between a batched verify pass and
# one-token decoding can plausibly flip, by activation dtype. Wider gaps mean a real bug.
TIE_GAP = {"float32": 0.01, "float16": 0.1, "bfloat16": 0.5}


def logit_gap(logits: mx.array) -> Tuple[int, int, float]:
    """The top-1 and top-2 tokens of `logits` [V] and the logit gap between them (>= 0)."""
    logits = logits.astype(mx.float32)
    top1, top2 = mx.argsort(-logits)[:2].tolist()
    return top1, top2, (logits[top1] - logits[top2]).item()


def first_divergence(reference: List[int], candidate: List[int]) -> Optional[int]:
    """The first position where the two token lists differ (one of them may have stopped
    there), or None when they are identical."""
    for position, (a, b) in enumerate(zip(reference, candidate)):
        if a != b:
            return position
    return None if len(reference) == len(candidate) else min(len(reference), len(candidate))


def divergence_record(
    target,
    tokenizer,
    prompt_ids: List[int],
    reference: List[int],
    candidate: List[int],
    stop_tokens: set,
    tie_gap: float,
) -> Optional[dict]:
    """Where `candidate` first leaves `reference` (plain decoding) and the target's top-1/top-2
    gap there, from a plain forward of the target over the prompt and the agreed prefix.
    None when the two are identical. A token of None means that sequence stopped there."""
    position = first_divergence(reference, candidate)
    if position is None:
        return None
    logits = target(mx.array([prompt_ids + reference[:position]]))[0, -1]
    top1, top2, gap = logit_gap(logits)
    reference_token = reference[position] if position < len(reference) else None
    candidate_token = candidate[position] if position < len(candidate) else None

    def chose(token, top):
        return top in stop_tokens if token is None else token == top

    swapped_top_two = (chose(reference_token, top1) and chose(candidate_token, top2)) or (
        chose(reference_token, top2) and chose(candidate_token, top1)
    )
    return {
        "position": position,
        "reference_token": reference_token,
        "candidate_token": candidate_token,
        "reference_text": token_text(tokenizer, reference_token),
        "candidate_text": token_text(tokenizer, candidate_token),
        "top1": top1,
        "top2": top2,
        "gap": gap,
        "verdict": "near-tie" if swapped_top_two and gap <= tie_gap else "mismatch",
    }


def token_text(tokenizer, token: Optional[int]) -> str:
    return "<stop>" if token is None else tokenizer.decode([token])
