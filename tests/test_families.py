"""The families beyond dense Llama/Qwen3: MoE (qwen3_moe), hybrid GatedDeltaNet + attention
(qwen3_next, qwen3_5, qwen3_5_moe), sliding-window attention with sinks (gpt_oss), Gemma 4 and
Muse Glimmer (sliding and global layers, soft-capped logits). Greedy
DFlash output must equal mlx-lm's plain greedy decoding token for token, and every cache a
rollback leaves must be the one plain decoding of the committed tokens leaves."""

import mlx.core as mx
import pytest
from mlx_lm.models.cache import ArraysCache, KVCache, make_prompt_cache

import dflash
from adapters import ADAPTERS
from dflash.generate import generate
from tests.helpers import OracleProposals, assert_same_up_to_rounding, decode_alone, prompt_of, rounding_bound

FAMILIES = ["qwen3_moe", "qwen3_next", "qwen3_5", "qwen3_5_moe", "gpt_oss", "gemma4_text", "muse_glimmer"]
# The fast tier keeps a hybrid (recurrent rollback), a sliding-window MoE and a family that finishes
# its logits (Muse Glimmer); the full suite runs all.
FAST = ("qwen3_next", "gpt_oss", "muse_glimmer")
TIERED = [family if family in FAST else pytest.param(family, marks=pytest.mark.slow) for family in FAMILIES]


def check_exact(model, tokenizer, prompt, max_tokens, block_size=None, miss_every=None):
    reference = generate(model.adapter, tokenizer, prompt, max_tokens).tokens
    acceptance = OracleProposals(reference, model.adapter.vocab_size, miss_every) if miss_every else None
    result = dflash.generate(model, tokenizer, prompt, max_tokens, block_size=block_size, acceptance=acceptance)
    assert result.tokens == reference
    return result


@pytest.mark.parametrize("family", FAMILIES)
def test_every_published_family_has_an_adapter(family):
    assert family in ADAPTERS


@pytest.mark.slow  # every family x block size; rollback and boundary tests of two families stay fast
@pytest.mark.parametrize("block_size", [2, 4, 8, 16])
@pytest.mark.parametrize("family", FAMILIES)
def test_block_sizes_and_prompt_lengths(make_pair, family, block_size):
    """Prompts of 1 to 300 tokens; random drafters (mostly rejects) and the oracle (accepts in
    full, in part and rejects at every offset); generations past gpt_oss's window."""
    model, tokenizer = dflash.load(*make_pair(family))
    for length in (1, 300) if block_size in (2, 16) else (23,):
        prompt = prompt_of(length, seed=length + block_size)
        check_exact(model, tokenizer, prompt, 24, block_size=block_size)
        result = check_exact(model, tokenizer, prompt, 40, block_size=block_size, miss_every=5)
        assert len(result.tokens) < 40 or result.stats.mean_acceptance > 1.5  # the accepting paths ran


@pytest.mark.parametrize("family", TIERED)
def test_max_token_boundary_and_eos_inside_an_accepted_block(make_pair, family):
    model, tokenizer = dflash.load(*make_pair(family))
    prompt = prompt_of(12, seed=3)
    for max_tokens in (1, 2, 15, 16, 17):
        result = check_exact(model, tokenizer, prompt, max_tokens, miss_every=1000)
        assert len(result.tokens) == max_tokens or result.finish_reason == "stop"
    free_run = generate(model.adapter, tokenizer, prompt, 40).tokens
    eos = free_run[10]
    tokenizer.eos_token_ids = {eos}
    result = check_exact(model, tokenizer, prompt, 40, miss_every=1000)
    assert result.tokens == free_run[: free_run.index(eos)] and result.finish_reason == "stop"


@pytest.mark.parametrize("family", TIERED)
def test_the_adapters_logits_are_the_models_own(make_pair, family):
    """A prompt longer than the sliding windows, then a block: the adapter's pass through its caches
    (plain KV caches, the window in the mask) gives the logits of the model's own call on mlx-lm's
    caches, finished as the family finishes them (Gemma 4's soft cap, Muse Glimmer's multiplier and
    soft cap)."""
    model, _ = dflash.load(*make_pair(family))
    adapter = model.adapter
    ours, theirs = adapter.make_cache(), make_prompt_cache(model.target)
    for tokens in (prompt_of(30, seed=1), prompt_of(5, seed=2)):
        logits = adapter.lm_head(adapter.verify(mx.array([tokens]), ours, [0]).hidden)
        expected = model.target(mx.array([tokens]), cache=theirs)
        assert_same_up_to_rounding(logits, expected, rounding_bound(adapter, 35, expected))


def cache_arrays(cache) -> list:
    """What a cache holds: conv and recurrent state, or the keys and values of every position."""
    if isinstance(cache, ArraysCache):
        return list(cache.cache)
    return list(cache.keys_and_values())


@pytest.mark.parametrize("family", TIERED)
def test_rollback_leaves_the_caches_of_plain_decoding(make_pair, family):
    model, tokenizer = dflash.load(*make_pair(family))
    prompt = prompt_of(11, seed=4)
    reference = generate(model.adapter, tokenizer, prompt, 45).tokens
    oracle = OracleProposals(reference, model.adapter.vocab_size, miss_every=4)
    steps, spec_cache = decode_alone(model, prompt, len(reference), oracle)
    committed = [token for step in steps for token in step]
    assert committed == reference
    assert max(len(step) for step in steps) > 2 and min(len(step) for step in steps[1:]) < 4  # accepts and rejects

    # Plain decoding, one token at a time, through the family's own model call into the adapter's
    # caches (for sliding-window layers a KV cache that the family's window mask reads).
    plain_cache = model.adapter.make_cache()
    model.target(mx.array([prompt]), cache=plain_cache)
    for token in committed[:-1]:
        model.target(mx.array([[token]]), cache=plain_cache)
    for spec, plain in zip(spec_cache, plain_cache):
        assert type(spec) is type(plain)
        if isinstance(spec, KVCache):
            assert spec.offset == plain.offset == len(prompt) + len(committed) - 1
        for spec_array, plain_array in zip(cache_arrays(spec), cache_arrays(plain)):
            # Batched verification and one-token steps round differently only in the last bits.
            bound = rounding_bound(model.adapter, len(prompt) + len(committed), plain_array)
            assert_same_up_to_rounding(spec_array, plain_array, bound)
    recurrent = family in ("qwen3_next", "qwen3_5", "qwen3_5_moe")
    assert any(isinstance(c, ArraysCache) for c in spec_cache) == recurrent


class RecordingTokenizer:
    """Records what the adapter asks the chat template for."""

    chat_template = "recorded"

    def apply_chat_template(self, messages, **options):
        self.options = options
        return messages[0]["content"]


@pytest.mark.parametrize(
    "family, default", [("qwen3", False), ("qwen3_5", True), ("qwen3_moe", None), ("llama", None)]
)
def test_thinking_defaults_to_the_drafters_training_and_can_be_switched(family, default):
    adapter_class = ADAPTERS[family]
    tokenizer = RecordingTokenizer()
    adapter_class.apply_chat_template(adapter_class.__new__(adapter_class), tokenizer, "hi")
    assert tokenizer.options.get("enable_thinking") == default
    for thinking in (True, False):
        adapter_class.apply_chat_template(adapter_class.__new__(adapter_class), tokenizer, "hi", thinking)
        assert tokenizer.options["enable_thinking"] is thinking


def test_every_published_pair_has_a_preset():
    from dflash.engine import resolve_pair
    from dflash.presets import PRESETS

    published = {"Qwen/Qwen3.5-4B", "Qwen/Qwen3.5-9B", "Qwen/Qwen3.5-27B", "Qwen/Qwen3.5-35B-A3B",
                 "Qwen/Qwen3.5-122B-A10B", "Qwen/Qwen3.6-27B", "Qwen/Qwen3.6-35B-A3B", "Qwen/Qwen3-Coder-Next",
                 "Qwen/Qwen3-Coder-30B-A3B-Instruct", "openai/gpt-oss-20b", "openai/gpt-oss-120b", "Qwen/Qwen3-4B",
                 "Qwen/Qwen3-8B", "meta-llama/Llama-3.1-8B-Instruct", "google/gemma-4-31B-it",
                 "google/gemma-4-26B-A4B-it", "google/gemma-4-12B-it", "meta-models/Muse-Glimmer-30B"}  # fmt: skip
    assert {preset.target for preset in PRESETS.values()} == published
    assert resolve_pair(None, None, "qwen3.5-4b").draft == "z-lab/Qwen3.5-4B-DFlash"
