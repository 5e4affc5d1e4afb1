"""Gemma 4 targets: `gemma4_text` in the small models' layout (per-layer input embeddings, the last
two layers reading an earlier layer's keys and values) and the `gemma4` wrapper's text path in the
26B-A4B layout (MoE blocks, keys equal to values on global layers). Both have sliding-window layers
with a window of 8 positions, global layers with wider heads and soft-capped logits; the prompts
and generations run past the window. Greedy DFlash output equals mlx-lm's plain greedy decoding
token for token, every cache a rollback leaves is plain decoding's, a batch equals its single runs,
and the adapter's logits are the model's own."""

import mlx.core as mx
import pytest
from mlx_lm.models.cache import KVCache, make_prompt_cache

import dflash
from dflash.batch import BatchDecoder
from dflash.generate import collect, generate
from tests.helpers import (
    OracleProposals,
    assert_same_up_to_rounding,
    decode_alone,
    draft_config,
    prompt_of,
    rounding_bound,
    save_random_draft,
    save_target,
    target_config,
)

WINDOW = 8
# The 26B-A4B layout, in the text_config of a `gemma4` checkpoint: no per-layer inputs, no KV sharing.
MOE_LAYOUT = {"hidden_size_per_layer_input": 0, "num_kv_shared_layers": 0, "attention_k_eq_v": True,
              "num_global_key_value_heads": 1, "enable_moe_block": True, "num_experts": 4, "top_k_experts": 2,
              "moe_intermediate_size": 32}  # fmt: skip
LAYOUTS = ["gemma4_text", "gemma4"]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """layout -> (target_dir, draft_dir), built once."""
    built = {}

    def build(layout, tied=False):
        if (layout, tied) not in built:
            root = tmp_path_factory.mktemp(layout)
            layout_fields = MOE_LAYOUT if layout == "gemma4" else {}
            text = target_config("gemma4_text", **layout_fields, tie_word_embeddings=tied)
            # A vision-language checkpoint's config: the text model's fields in text_config (the
            # top-level copies are only read by draft_config).
            config = text if layout == "gemma4_text" else {**text, "model_type": "gemma4", "text_config": text}
            save_target(root / "target", config)
            save_random_draft(root / "draft", draft_config(config, block_size=8))
            built[layout, tied] = dflash.load(str(root / "target"), str(root / "draft"))
        return built[layout, tied]

    return build


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_adapters_logits_are_the_models_own(pairs, layout, tied):
    """A prompt longer than the window, then a block after it: the adapter's caches (plain KV caches
    with the window in the mask) against the model's own call on mlx-lm's caches (rotating ones
    for the sliding layers); the LM head tied to the embedding (as the published checkpoints) or not."""
    model, _ = pairs(layout, tied)
    adapter = model.adapter
    assert type(adapter.model).__module__ == f"mlx_lm.models.{layout}"
    ours, theirs = adapter.make_cache(), make_prompt_cache(model.target)
    shared = 2 if layout == "gemma4_text" else 0
    assert len(ours) == len(theirs) == adapter.num_layers - shared
    for tokens in (prompt_of(3 * WINDOW, seed=1), prompt_of(5, seed=2)):
        verified = adapter.verify(mx.array([tokens]), ours, [0, adapter.num_layers - 1])
        logits = adapter.lm_head(verified.hidden)
        expected = model.target(mx.array([tokens]), cache=theirs)
        assert_same_up_to_rounding(logits, expected, rounding_bound(adapter, 3 * WINDOW + 5, expected))
    assert mx.abs(expected).max().item() > 4  # far enough from 0 that a missing soft cap would show


@pytest.mark.parametrize("layout", LAYOUTS)
def test_greedy_decoding_equals_plain_decoding(pairs, layout):
    """A random drafter (mostly rejects) and the oracle (full and partial accepts, rejects at
    every offset), from prompts shorter and longer than the window, generating past it."""
    model, tokenizer = pairs(layout)
    for length, block_size in ((1, 8), (3 * WINDOW - 1, 4)):
        prompt = prompt_of(length, seed=length)
        reference = generate(model.adapter, tokenizer, prompt, 40).tokens
        random_draft = dflash.generate(model, tokenizer, prompt, 24, block_size=block_size)
        assert random_draft.tokens == reference[:24]
        # A miss every block_size + 3 positions lands at a different offset in each block.
        oracle = OracleProposals(reference, model.adapter.vocab_size, miss_every=block_size + 3)
        result = dflash.generate(model, tokenizer, prompt, 40, block_size=block_size, acceptance=oracle)
        assert result.tokens == reference
        lengths = result.stats.acceptance_lengths
        assert max(lengths) == block_size and len(set(lengths)) > 2  # full accepts and partial ones


@pytest.mark.parametrize("layout", LAYOUTS)
def test_rollback_trims_each_cache_once_to_plain_decodings(pairs, layout):
    """After accepts and rejects, each cache (one per layer with its own keys and values; the KV-shared
    layers read their source's) holds what plain decoding of the committed tokens leaves there."""
    model, tokenizer = pairs(layout)
    prompt = prompt_of(2 * WINDOW + 3, seed=4)
    reference = generate(model.adapter, tokenizer, prompt, 30).tokens
    oracle = OracleProposals(reference, model.adapter.vocab_size, miss_every=4)
    steps, spec_cache = decode_alone(model, prompt, len(reference), oracle)
    assert [token for step in steps for token in step] == reference
    assert max(len(step) for step in steps) > 2 and min(len(step) for step in steps[1:]) < 4
    plain_cache = model.adapter.make_cache()  # the model's own call, one token at a time
    model.target(mx.array([prompt]), cache=plain_cache)
    for token in reference[:-1]:
        model.target(mx.array([[token]]), cache=plain_cache)
    for spec, plain in zip(spec_cache, plain_cache, strict=True):
        assert type(spec) is KVCache and spec.offset == plain.offset == len(prompt) + len(reference) - 1
        for spec_array, plain_array in zip(spec.keys_and_values(), plain.keys_and_values()):
            bound = rounding_bound(model.adapter, len(prompt) + len(reference), plain_array)
            assert_same_up_to_rounding(spec_array, plain_array, bound)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_batch_equals_its_single_runs(pairs, layout):
    """Rows of different prompt lengths, some past the window, each driven by its own oracle: full
    and partial accepts in the same step, each row committing its own count."""
    model, tokenizer = pairs(layout)
    prompts = [prompt_of(n, seed=n) for n in (3, 2 * WINDOW + 1, 1, 5 * WINDOW)]
    singles = [generate(model.adapter, tokenizer, prompt, 24).tokens for prompt in prompts]
    oracles = [OracleProposals(single, model.adapter.vocab_size, miss_every=3 + i) for i, single in enumerate(singles)]
    decoder = BatchDecoder(model, tokenizer)
    uids = decoder.insert(prompts, [24] * len(prompts), acceptances=oracles)
    responses = {uid: [] for uid in uids}
    while decoder.rows:
        for uid, response in decoder.step():
            responses[uid].append(response)
    results = [collect(responses[uid]) for uid in uids]
    assert [result.tokens for result in results] == singles
    assert len({n for result in results for n in result.stats.acceptance_lengths}) > 2
