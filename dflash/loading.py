"""Loading drafters (local directories or Hugging Face repo ids), quantizing them and binding them to their
target, saving drafters, and checking that a drafter fits its target."""

import glob
import json
from dataclasses import dataclass
from functools import cached_property, partial
from pathlib import Path
from typing import List, Optional, Tuple

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from adapters import DecoderAdapter, adapter_for
from adapters.errors import DFlashError
from adapters.loading import DTYPES, load_target, resolve_path

from .acceptance import ArgmaxProposals, GreedyAcceptance
from .files import atomic_directory, write_model
from .model import DFlashDraftModel, DraftConfig

DRAFT_BITS = (4, 6, 8)  # what a drafter can be quantized to
DRAFT_GROUP_SIZE = 32  # divides the widths of published drafters and of SmolLM2's (576, 1536)
# Rules that propose the drafter's argmax at every position take its best block
# (DFlashDraftModel.finish_block): its argmax, or a DFlash 2 drafter's selector path. Their accept
# is lossless whatever the proposals (greedy: the target's argmax decides; argmax: x accepted with
# probability p(x), the correction drawn from p without x). Rules that draw proposals from the
# drafter's marginals (their accept needs those q) or from elsewhere keep their own.
PROPOSES_THE_ARGMAX = (GreedyAcceptance.propose, ArgmaxProposals.propose)


@dataclass
class DFlashModel:
    """A target model, its adapter and a drafter bound to it."""

    target: nn.Module
    adapter: DecoderAdapter
    draft: DFlashDraftModel
    # A DFlash 2 drafter's rules that propose the argmax take its selector's path; False: its own
    # argmax, as a DFlash drafter's do (an ablation: what the selector adds).
    selector: bool = True

    @property
    def block_size(self) -> int:
        return self.draft.config.block_size

    @property
    def dtype(self) -> str:
        """The compute dtype (the drafter is cast to the dtype of the target's hidden states)."""
        return self.adapter.dtype

    @cached_property
    def draft_head(self):
        """The LM head the drafter's output goes through: the target's, restricted to the rows of
        the drafter's vocabulary where it has one (taken once: the target's head is frozen). A
        drafter that scales its logits itself scales what the head computes, as z-lab's reference
        does (a Muse Glimmer drafter repeats its target's multiplier and soft cap); any other takes
        the target's logits as the target finishes them (Gemma 4's soft cap)."""
        head = self.adapter.head_logits if self.draft.config.scales_logits else self.adapter.lm_head
        if not self.draft.config.draft_vocab_size:
            return head
        rows = self.adapter.head_rows(self.draft.draft_vocab)
        mx.eval(rows)
        return partial(head, rows=rows)

    @property
    def acceptance_rule(self) -> str:
        """The rule at temperature > 0 when a request names none: argmax for a DFlash 2 drafter,
        so that its selector's path is what is proposed (see PROPOSES_THE_ARGMAX), else speculative."""
        return "argmax" if self.draft.config.dflash2 else "speculative"

    def draft_block(self, lasts: List[int], block_size: int, context: mx.array, cache, acceptances: list,
                    states: list, block_offset=None, mask=None, sizes: Optional[List[int]] = None,
                    ) -> Tuple[mx.array, mx.array]:  # fmt: skip
        """Draft one block per row: embed [last committed token, mask, ..., mask], run the drafter
        (the batch's `block_offset` and `mask` as DraftAttention takes them), turn positions 1.. into
        logits; each row's rule proposes from them, or takes the drafter's best block (see
        PROPOSES_THE_ARGMAX). A row of a batch may draft a shorter block than the batch's, its
        `sizes` entry (its mask hides the positions past it): it proposes from its first positions
        alone, as it would drafting that block by itself. Returns (proposals [rows, block_size - 1],
        a shorter row's padded with its last, logits [rows, block_size - 1, V])."""
        sizes = sizes or [block_size] * len(lasts)
        tokens = [[last] + [self.draft.config.mask_token_id] * (block_size - 1) for last in lasts]
        batched = () if block_offset is None else (block_offset, mask)
        hidden = self.draft(self.adapter.embed(mx.array(tokens)), context, cache, *batched)[:, 1:]
        logits, best = self.draft.finish_block(hidden, self.draft_head, mx.array(lasts), self.selector)
        proposals = []
        for i, (rule, state, size) in enumerate(zip(acceptances, states, sizes)):
            if type(rule).propose in PROPOSES_THE_ARGMAX:
                proposed = best[i, : size - 1]
            else:
                proposed = rule.propose(logits[i, : size - 1], state)
            proposals.append(mx.pad(proposed, (0, block_size - size), mode="edge"))
        return mx.stack(proposals), logits


def read_weights(directory: Path, what: str) -> dict:
    files = sorted(glob.glob(str(directory / "*.safetensors")))
    if not files:
        raise DFlashError(f"{what} directory {directory} has no *.safetensors files")
    weights = {}
    for file in files:
        try:
            weights.update(mx.load(file))
        except Exception as e:
            raise DFlashError(f"cannot read {file}: {e}") from None
    return weights


def load_draft(path_or_repo: str) -> DFlashDraftModel:
    directory = resolve_path(path_or_repo, "drafter")
    try:
        config = DraftConfig.from_dict(json.loads((directory / "config.json").read_text()))
        draft = DFlashDraftModel(config)
    except FileNotFoundError:
        raise DFlashError(f"drafter directory {directory} has no config.json") from None
    except (json.JSONDecodeError, ValueError, TypeError, KeyError) as e:
        raise DFlashError(f"bad drafter config {directory / 'config.json'}: {e}") from None
    weights = read_weights(directory, "drafter")
    weights = {k.removeprefix("model."): v for k, v in weights.items()}
    try:
        draft.load_weights(list(weights.items()), strict=True)
    except ValueError as e:
        reason = " ".join(str(e).split())  # mlx lists the names on lines of their own
        raise DFlashError(f"drafter weights in {directory} do not match its config.json: {reason}") from None
    mx.eval(draft.parameters())
    if config.draft_vocab_size:
        check_draft_vocab(draft.draft_vocab, config.vocab_size, directory)
    return draft


def check_draft_vocab(draft_vocab: mx.array, vocab_size: int, directory: Path) -> None:
    """Raise a DFlashError unless the draft vocabulary is ascending token ids of the vocabulary."""
    ids = draft_vocab.tolist()
    ascending = all(a < b for a, b in zip(ids, ids[1:]))
    if draft_vocab.dtype != mx.int32 or not ascending or ids[0] < 0 or ids[-1] >= vocab_size:
        raise DFlashError(f"drafter draft_vocab in {directory} is not ascending int32 token ids below {vocab_size}")


def save_draft(draft: DFlashDraftModel, directory, dtype: Optional[mx.Dtype] = None) -> None:
    """Write config.json + model.safetensors in the published format, atomically."""
    weights = dict(tree_flatten(draft.parameters()))
    if dtype is not None:
        weights = {k: v.astype(dtype) if mx.issubdtype(v.dtype, mx.floating) else v for k, v in weights.items()}
    with atomic_directory(directory) as partial:
        write_model(partial, weights, draft.config.to_dict())


def check_pair(adapter: DecoderAdapter, config: DraftConfig) -> None:
    """Raise a DFlashError naming the first way the drafter does not fit the target."""
    if config.hidden_size != adapter.hidden_size:
        raise DFlashError(
            f"drafter hidden size {config.hidden_size} does not match the target's {adapter.hidden_size}"
        )
    if config.vocab_size != adapter.vocab_size:
        raise DFlashError(f"drafter vocabulary {config.vocab_size} does not match the target's {adapter.vocab_size}")
    if config.num_target_layers != adapter.num_layers:
        raise DFlashError(
            f"drafter was trained for a {config.num_target_layers}-layer target; this target has {adapter.num_layers}"
        )
    adapter.check_layer_ids(config.target_layer_ids, "drafter taps target layers")
    if not 0 <= config.mask_token_id < adapter.vocab_size:
        raise DFlashError(f"drafter mask_token_id {config.mask_token_id} is outside the vocabulary")
    if config.block_size < 2:
        raise DFlashError(f"drafter block_size {config.block_size} is below 2")


def quantize_draft(draft: DFlashDraftModel, bits: int) -> None:
    """Quantize the drafter's linear layers in place (affine, groups of DRAFT_GROUP_SIZE)."""
    if bits not in DRAFT_BITS:
        raise DFlashError(f"a drafter can be quantized to {', '.join(map(str, DRAFT_BITS))} bits, not {bits}")

    def quantizable(_, module) -> bool:
        return isinstance(module, nn.Linear) and module.weight.shape[-1] % DRAFT_GROUP_SIZE == 0

    nn.quantize(draft, group_size=DRAFT_GROUP_SIZE, bits=bits, class_predicate=quantizable)
    mx.eval(draft.parameters())


def load(
    target: str,
    draft: str,
    dtype: Optional[str] = "auto",
    dequantize: str = "auto",
    draft_bits: Optional[int] = None,
) -> Tuple[DFlashModel, object]:
    """Load a target (mlx-lm checkpoint) and its DFlash drafter. Returns (model, tokenizer).

    dtype: "auto" (float32 on the CPU backend, the checkpoint's dtype elsewhere), None to keep
    the checkpoint's, or one of float32 / bfloat16 / float16.
    dequantize: for a quantized target, "auto" (dequantized on the CPU backend when it fits in
    memory), "on" or "off" (see `adapters.loading.dequantize_if_asked`).
    draft_bits: quantize the drafter to 4, 6 or 8 bits after loading it (None: keep it as is).
    """
    target_model, tokenizer = load_target(target, dtype, dequantize=dequantize)
    adapter = adapter_for(target_model)
    return DFlashModel(target_model, adapter, load_draft_for(adapter, draft, draft_bits)), tokenizer


def load_draft_for(adapter: DecoderAdapter, draft: str, draft_bits: Optional[int] = None) -> DFlashDraftModel:
    """The drafter at `draft`, checked against the target behind `adapter`, in the dtype of its
    hidden states, quantized to `draft_bits` when given."""
    draft_model = load_draft(draft)
    check_pair(adapter, draft_model.config)
    draft_model.set_dtype(DTYPES[adapter.dtype])
    if draft_bits is not None:
        quantize_draft(draft_model, draft_bits)
    return draft_model
