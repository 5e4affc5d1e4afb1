"""What the tests share: tiny random targets and drafters saved to disk and loaded through the
real loaders, random prompts, an oracle proposer, tiny regenerated training data, and DFlash 2
drafters in the published format.

    uv run python -m tests.helpers OUT_DIR [FAMILY [CONFIG_JSON]]   # writes OUT_DIR/{target,draft}
"""

import importlib
import json
import random
import sys
from collections import defaultdict
from pathlib import Path

import dflash  # noqa: F401  (OpenBLAS before mlx)
import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten, tree_map
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from adapters import default_target_layer_ids
from dflash.acceptance import GreedyAcceptance
from dflash.loading import save_draft
from dflash.model import DFlashDraftModel, DraftConfig
from dflash.presets import CHECKOUT
from train.data import regenerate
from train.dflash_train import TrainConfig

REPO = CHECKOUT

VOCAB_SIZE = 512
DRAFT_VOCAB = tuple(sorted(random.Random(0).sample(range(VOCAB_SIZE), VOCAB_SIZE // 4)))  # a draft vocabulary
SPECIAL_TOKENS = ["<|begin_of_text|>", "<|eot_id|>", "<|mask|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
TEXT = (
    "The quick brown fox jumps over the lazy dog. def add(a, b): return a + b\n"
    "Speculative decoding drafts a block of tokens and the target verifies them in one pass. "
    "for i in range(10): print(i * i)\nA small model proposes; the large model disposes. 0123456789"
)


def write_tokenizer(directory: Path) -> None:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - 16,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([TEXT] * 4, trainer)
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>",
        "chat_template": CHAT_TEMPLATE,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config))


MOE = {"num_experts": 4, "num_experts_per_tok": 2, "decoder_sparse_step": 1, "mlp_only_layers": [],
       "moe_intermediate_size": 64, "norm_topk_prob": True}  # fmt: skip
GATED_DELTA = {"linear_num_value_heads": 4, "linear_num_key_heads": 2, "linear_key_head_dim": 16,
               "linear_value_head_dim": 16, "linear_conv_kernel_dim": 4, "full_attention_interval": 3}  # fmt: skip
# What each family needs beyond the Llama-style fields: MoE MLPs, GatedDeltaNet layers (every third
# layer full attention), partial rotary embeddings, sliding windows of 8 positions.
FAMILY_FIELDS = {
    "llama": {},
    "qwen3": {},
    "qwen3_moe": MOE,
    "qwen3_next": {**MOE, **GATED_DELTA, "shared_expert_intermediate_size": 64, "partial_rotary_factor": 0.5},
    "qwen3_5": {**GATED_DELTA, "rope_parameters": {"type": "default", "rope_theta": 10000.0,
                                                   "partial_rotary_factor": 0.25}},
    "qwen3_5_moe": {**MOE, **GATED_DELTA, "shared_expert_intermediate_size": 64,
                    "rope_parameters": {"type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25}},
    "gpt_oss": {"num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": 8,
                "layer_types": ["sliding_attention", "full_attention"] * 3},
    # Gemma 4's small-model layout: per-layer input embeddings, the last two layers reading the keys
    # and values of the last sliding and the last global layer before them, wider global heads. An
    # untied head: with the tied one, random weights echo the current token (its embedding, scaled by
    # sqrt(hidden), outweighs what the layers add), so greedy decoding repeats one token.
    "gemma4_text": {"sliding_window": 8, "layer_types": ["sliding_attention"] * 2 + ["full_attention"]
                    + ["sliding_attention"] * 2 + ["full_attention"], "num_kv_shared_layers": 2,
                    "global_head_dim": 32, "hidden_size_per_layer_input": 8, "vocab_size_per_layer_input": VOCAB_SIZE,
                    "tie_word_embeddings": False},
    # Muse Glimmer: three sliding layers to one global layer without RoPE, the published untied head.
    "muse_glimmer": {"sliding_window": 8, "layer_types": ["sliding_attention"] * 3 + ["full_attention"]
                     + ["sliding_attention"] * 2, "tie_word_embeddings": False},
}  # fmt: skip


FLOAT32_EPS = float(np.finfo(np.float32).eps)


def rounding_bound(adapter, positions: int, reference: mx.array, extra_layers: int = 0) -> float:
    """How far two float32 evaluations of the same pass through `adapter`'s target may differ
    when their sums run in different orders (a batch of rows against one row, a block against
    one token at a time, another BLAS kernel on another CPU). A sum of n terms is exact to
    n * eps of its terms' magnitude (Higham's gamma_n); a value at the end of the network ends a
    chain of such sums, per layer one over the hidden size, one over the MLP's width and one
    over the `positions` attended to or recurred over. Scaled by the largest magnitude in
    `reference`. `extra_layers` adds the drafter's layers for what it computes from the taps.
    A wrong value (another row's state, a position too many) differs by far more."""
    args = adapter.args
    width = max(getattr(args, name, 0) or 0 for name in ("intermediate_size", "moe_intermediate_size"))
    chain = (adapter.num_layers + extra_layers) * (adapter.hidden_size + width + positions)
    return chain * FLOAT32_EPS * max(1.0, mx.abs(reference).max().item())


def assert_same_up_to_rounding(actual: mx.array, expected: mx.array, bound: float) -> None:
    difference = mx.abs(actual.astype(mx.float32) - expected.astype(mx.float32)).max().item()
    assert actual.shape == expected.shape and difference <= bound, f"max difference {difference:.3g} > {bound:.3g}"


def target_config(family: str = "llama", *, tied: bool = True, kv_heads: int = 2, layers: int = 6, **overrides) -> dict:
    config = {
        "model_type": family,
        "hidden_size": 64,
        "num_hidden_layers": layers,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": kv_heads,
        "head_dim": 16,
        "rms_norm_eps": 1e-5,
        "vocab_size": VOCAB_SIZE,
        "rope_theta": 10000.0,
        "max_position_embeddings": 1024,
        "tie_word_embeddings": tied,
        **FAMILY_FIELDS[family],
    }
    config.update(overrides)
    return config


def save_target(directory, config: dict, seed: int = 0) -> Path:
    """Build a random mlx-lm model from `config` and save it as an mlx-lm checkpoint."""
    family = importlib.import_module(f"mlx_lm.models.{config['model_type']}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    mx.random.seed(seed)
    model = family.Model(family.ModelArgs.from_dict(config))
    # Larger-than-default weights keep logits far from ties, so greedy choices are clear-cut.
    model.update(tree_map(lambda w: w * 2.0 if w.ndim == 2 else w, model.parameters()))
    mx.save_safetensors(str(directory / "model.safetensors"), dict(tree_flatten(model.parameters())))
    (directory / "config.json").write_text(json.dumps(config))
    write_tokenizer(directory)
    return directory


def draft_config(target: dict, *, layers: int = 2, block_size: int = 16, **overrides) -> DraftConfig:
    fields = {
        "hidden_size": target["hidden_size"],
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "intermediate_size": 128,
        "vocab_size": target["vocab_size"],
        "block_size": block_size,
        "num_target_layers": target["num_hidden_layers"],
        "target_layer_ids": default_target_layer_ids(target["num_hidden_layers"], layers),
        "mask_token_id": SPECIAL_TOKENS.index("<|mask|>"),
        "rope_theta": target["rope_theta"],
        "max_position_embeddings": target["max_position_embeddings"],
    }
    fields.update(overrides)
    return DraftConfig(**fields)


def save_random_draft(directory, config: DraftConfig, seed: int = 1, draft_vocab=None) -> Path:
    """A drafter with random weights (and the draft vocabulary `draft_vocab`, ascending ids, if given)."""
    mx.random.seed(seed)
    draft = DFlashDraftModel(config)
    if draft_vocab is not None:
        draft.draft_vocab = mx.array(draft_vocab, dtype=mx.int32)
    mx.eval(draft.parameters())
    save_draft(draft, directory)
    return Path(directory)


def prompt_of(length, seed=0):
    return mx.random.randint(3, 500, (length,), key=mx.random.key(seed)).tolist()


class OracleProposals(GreedyAcceptance):
    """Stands in for a well-trained drafter: proposes the reference continuation, with a wrong
    token wherever (position % miss_every) == miss_every - 1, so blocks are accepted in part,
    in full, and rejected at every offset."""

    def __init__(self, reference, vocab_size, miss_every=7):
        self.reference, self.vocab_size, self.miss_every = reference, vocab_size, miss_every

    def propose(self, draft_logits, state):
        proposals = []
        for i in range(draft_logits.shape[0]):
            at = len(state.tokens) + i
            token = self.reference[at] if at < len(self.reference) else 0
            if at % self.miss_every == self.miss_every - 1:
                token = (token + 1) % self.vocab_size
            proposals.append(token)
        return mx.array(proposals)


class DraftLog(GreedyAcceptance):
    """Greedy, and keeps every row's draft logits, by prompt length."""

    def __init__(self):
        self.logits = defaultdict(list)

    def propose(self, draft_logits, state):
        self.logits[state.stats.prompt_tokens].append(draft_logits)
        return super().propose(draft_logits, state)


def decode_alone(model, prompt: list, max_tokens: int, acceptance) -> tuple:
    """Each step's committed tokens of one sequence decoded alone, and its target caches after."""
    single = dflash.decode.start(model, max_tokens=max_tokens, acceptance=acceptance)
    steps = [dflash.decode.prefill(model, single, mx.array(prompt))]
    while not single.finished:
        steps.append(single.step(model))
    return steps, single.target_cache


def write_prompts(path: Path, count: int, seed: int = 0) -> Path:
    words = TEXT.split()
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(count):
            start = rng.randrange(len(words) - 8)
            f.write(json.dumps({"prompt": " ".join(words[start : start + rng.randrange(3, 8)])}) + "\n")
    return path


def make_tiny_data(directory: Path, family: str = "llama", prompts: int = 24, max_tokens: int = 40) -> tuple:
    """A tiny random target of `family` and its regenerated data. Returns (target, data) paths."""
    target = save_target(directory / f"{family}-target", target_config(family))
    prompts_file = write_prompts(directory / "prompts.jsonl", prompts)
    data_dir = regenerate(
        str(target), str(prompts_file), str(directory / f"{family}-data"), max_tokens=max_tokens, batch_size=8
    )
    return target, data_dir


def tiny_config(target, data_dir, out, **overrides) -> TrainConfig:
    settings = dict(
        target=str(target), data=str(data_dir), out=str(out), draft_layers=2, block_size=8, anchors=64,
        epochs=3, batch_size=4, lr=3e-3, eval_prompts=2, eval_every=1000, eval_max_tokens=24, wandb="disabled",
    )  # fmt: skip
    settings.update(overrides)
    return TrainConfig(**settings)


def metrics(run_dir: Path) -> list:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def weights(directory: Path) -> dict:
    return mx.load(str(directory / "model.safetensors"))


SMALL_VOCAB = 8  # a random DFlash 2 drafter's proposals are then often what the target would say


def small_prompt(length, seed=0):
    """Token ids of a prompt for a target of SMALL_VOCAB tokens (ids 0-2 are special)."""
    return np.random.default_rng(seed).integers(3, SMALL_VOCAB, length).tolist()


# DFlash 2 drafters as the published ones are written: z-lab's config fields, safetensors names and
# shapes, sharded.


def published_config(target: dict, *, layers=2, block_size=8, top_k=4, rank=8, group=16, **overrides) -> dict:
    """config.json as the published DFlash 2 drafters have it (z-lab's fixture's fields)."""
    config = {
        "architectures": ["DFlash2DraftModel"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "is_causal": False,
        "dflash_config": {
            "block_size": block_size, "conv_group_size": group, "conv_kernel_size": 2, "mask_token_id": 2,
            "selector_rank": rank, "selector_top_k": top_k,
            "target_layer_ids": default_target_layer_ids(target["num_hidden_layers"], layers),
        },
        "dtype": "float32", "head_dim": 16, "hidden_act": "silu", "hidden_size": target["hidden_size"],
        "intermediate_size": 96, "layer_types": ["full_attention"] * layers, "max_position_embeddings": 1024,
        "model_type": "qwen3", "num_attention_heads": 4, "num_hidden_layers": layers, "num_key_value_heads": 2,
        "num_target_layers": target["num_hidden_layers"], "rms_norm_eps": 1e-5,
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}, "sliding_window": None,
        "tie_word_embeddings": False, "use_cache": False, "use_sliding_window": False,
        "vocab_size": target["vocab_size"],
    }  # fmt: skip
    dflash_overrides = {k: overrides.pop(k) for k in list(overrides) if k in config["dflash_config"] or
                        k in ("output_multiplier", "final_logit_softcapping", "input_embedding_scale")}  # fmt: skip
    config["dflash_config"].update(dflash_overrides)
    config.update(overrides)
    return config


def published_weights(config: dict, seed: int) -> dict:
    """Random weights under the published names and shapes (z-lab's safetensors header)."""
    rng = np.random.default_rng(seed)
    d, inner, hd = config["hidden_size"], config["intermediate_size"], config["head_dim"]
    heads, kv = config["num_attention_heads"] * hd, config["num_key_value_heads"] * hd
    dc = config["dflash_config"]
    taps, kernel = len(dc["target_layer_ids"]), dc["conv_kernel_size"]
    vocab, rank = config["vocab_size"], dc["selector_rank"]

    def matrix(rows, cols):
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    def scale(n):
        return (1 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    weights = {"fc.weight": matrix(d, taps * d), "hidden_norm.weight": scale(d), "norm.weight": scale(d),
               "candidate_selector.hidden_projection.weight": matrix(rank, d),
               "candidate_selector.predecessor_codebook": rng.standard_normal((vocab, rank)).astype(np.float32),
               "candidate_selector.successor_codebook": rng.standard_normal((vocab, rank)).astype(np.float32),
               }  # fmt: skip
    for i in range(config["num_hidden_layers"]):
        p = f"layers.{i}."
        weights.update({
            p + "input_layernorm.weight": scale(d), p + "post_attention_layernorm.weight": scale(d),
            p + "self_attn.q_proj.weight": matrix(heads, d), p + "self_attn.k_proj.weight": matrix(kv, d),
            p + "self_attn.v_proj.weight": matrix(kv, d), p + "self_attn.o_proj.weight": matrix(d, heads),
            p + "self_attn.q_norm.weight": scale(hd), p + "self_attn.k_norm.weight": scale(hd),
            p + "mlp.gate_proj.weight": matrix(inner, d), p + "mlp.up_proj.weight": matrix(inner, d),
            p + "mlp.down_proj.weight": matrix(d, inner),
        })  # fmt: skip
        for conv in ("attention_conv", "mlp_conv"):
            base = 0.3 * rng.standard_normal((2, kernel, d)).astype(np.float32)
            base[:, 0] += 1
            weights[p + conv + ".base_kernel"] = base
            groups = d // dc["conv_group_size"]
            weights[p + conv + ".kernel_projection.weight"] = np.float32(0.3) * matrix(2 * kernel * groups, d)
    return weights


def write_published(directory: Path, config: dict, seed: int = 1, drop=()) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    weights = {k: v for k, v in published_weights(config, seed).items() if k not in drop}
    names = sorted(weights)
    half = len(names) // 2  # published checkpoints are sharded
    save_file({k: weights[k] for k in names[:half]}, str(directory / "model-00001-of-00002.safetensors"))
    save_file({k: weights[k] for k in names[half:]}, str(directory / "model-00002-of-00002.safetensors"))
    (directory / "config.json").write_text(json.dumps(config))
    return str(directory)


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "tiny-pair")
    config = target_config(sys.argv[2] if len(sys.argv) > 2 else "llama", **json.loads(sys.argv[3] if len(sys.argv) > 3 else "{}"))
    save_target(out / "target", config)
    save_random_draft(out / "draft", draft_config(config))
    print(f"wrote {out / 'target'} and {out / 'draft'}")
