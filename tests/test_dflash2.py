"""DFlash 2 drafters in their published format: tiny random ones written here with the published
config fields and weight names, loaded through the real loader: decoding exact when greedy and
lossless when sampling, with the selector proposing (its modules: tests/test_dflash2_modules.py)."""

import json
import math
from collections import Counter
from dataclasses import replace
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten
from mlx_lm.models import muse_glimmer

import dflash
from adapters.routing import EXPERT
from dflash import DFlashError, decode
from dflash.acceptance import ArgmaxProposals, GreedyAcceptance, SpeculativeSampling, TokenMatching, make_acceptance
from dflash.batch import batch_generate
from dflash.engine import Engine, Request
from dflash.generate import generate
from dflash.loading import check_pair
from dflash.model import DraftConfig
from dflash.sampling import SamplingSettings
from tests.helpers import (
    FLOAT32_EPS,
    SMALL_VOCAB,
    OracleProposals,
    published_config,
    published_weights,
    small_prompt,
    target_config,
    write_published,
)

# The published Muse Glimmer DFlash 2 drafter's config repeats its target's logit multiplier and soft cap.
MUSE_SCALING = {"output_multiplier": muse_glimmer.ModelArgs.output_multiplier,
                "final_logit_softcapping": muse_glimmer.ModelArgs.final_logit_softcapping}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The published format


def test_published_checkpoint_loads_and_saves_in_its_format(dflash2_pair, tmp_path):
    target, draft_dir = dflash2_pair("qwen3")
    model, _ = dflash.load(target, draft_dir)
    published = json.loads((Path(draft_dir) / "config.json").read_text())
    names = set(published_weights(published, 1))
    assert set(k for k, _ in tree_flatten(model.draft.parameters())) == names
    assert model.block_size == 8 and model.draft.config.rope_theta == 10000.0

    dflash.save_draft(model.draft, tmp_path / "copy")
    saved = json.loads((tmp_path / "copy" / "config.json").read_text())
    assert set(mx.load(str(tmp_path / "copy" / "model.safetensors"))) == names
    assert saved["architectures"] == ["DFlash2DraftModel"] and saved["is_causal"] is False
    assert saved["dflash_config"] == published["dflash_config"] and "block_size" not in saved
    assert saved["rope_parameters"] == published["rope_parameters"] and "rope_theta" not in saved
    copy, _ = dflash.load(target, str(tmp_path / "copy"))
    block = model.adapter.embed(mx.array([[5, 2, 2, 2]]))
    context = mx.random.normal((1, 6, len(model.draft.config.target_layer_ids) * 64))
    assert mx.array_equal(model.draft(block, context, model.draft.make_cache()),
                          copy.draft(block, context, copy.draft.make_cache()))  # fmt: skip


def test_logits_are_scaled_and_softcapped_as_the_config_says(dflash2_pair):
    model, _ = dflash.load(*dflash2_pair("llama", output_multiplier=0.25, final_logit_softcapping=3.0))
    hidden = mx.random.normal((1, 3, 64))
    logits, _ = model.draft.finish_block(hidden, model.adapter.lm_head, mx.array([5]))
    raw = np.array(model.adapter.lm_head(hidden)).astype(np.float64)
    expected = 3.0 * np.tanh(raw * 0.25 / 3.0)  # in float64; float32 rounds a multiply, a divide, tanh, a multiply
    assert np.abs(np.array(logits) - expected).max() <= 4 * FLOAT32_EPS * max(1.0, np.abs(expected).max())


def test_only_dflash2_drafters_scale_their_logits(dflash2_pair):
    """A DFlash config copying its target's top-level final_logit_softcapping keeps it as an extra
    field."""
    model, _ = dflash.load(*dflash2_pair("llama", final_logit_softcapping=3.0))
    published = {**model.draft.config.to_dict(), "architectures": ["DFlashDraftModel"], "block_size": 8,
                 "final_logit_softcapping": 30.0, "dflash_config": {"target_layer_ids": [1, 4], "mask_token_id": 2}}
    v1 = DraftConfig.from_dict(published)
    assert v1.final_logit_softcapping is None and v1.extra["final_logit_softcapping"] == 30.0

    check_pair(model.adapter, model.draft.config)


def test_a_drafter_that_scales_its_logits_scales_the_heads_own_once(dflash2_pair):
    """A Muse Glimmer target finishes its head's logits (multiplier, then soft cap) and its published
    DFlash 2 drafter repeats both in its config: the drafter scales what the head computes, so its
    logits are the target's own, not scaled twice. A drafter that does not scale takes the target's
    finished logits as they are."""
    scaling, _ = dflash.load(*dflash2_pair("muse_glimmer", **MUSE_SCALING))
    plain, _ = dflash.load(*dflash2_pair("muse_glimmer"))
    hidden = mx.random.normal((1, 3, 64))
    for model in (scaling, plain):
        logits, _ = model.draft.finish_block(hidden, model.draft_head, mx.array([5]))
        assert mx.array_equal(logits, model.adapter.lm_head(hidden))
    assert not mx.array_equal(scaling.adapter.lm_head(hidden), scaling.adapter.head_logits(hidden))


def test_input_embedding_scale_scales_the_block(dflash2_pair):
    scaled, _ = dflash.load(*dflash2_pair("llama", input_embedding_scale=2.0))
    plain, _ = dflash.load(*dflash2_pair("llama"))
    block, context = scaled.adapter.embed(mx.array([[5, 2, 2]])), mx.random.normal((1, 4, 2 * 64))
    assert scaled.draft.config.input_embedding_scale == 2.0
    assert mx.array_equal(scaled.draft(block, context, scaled.draft.make_cache()),
                          plain.draft(2.0 * block, context, plain.draft.make_cache()))  # fmt: skip


def test_a_quantized_dflash2_drafter_stays_exact(dflash2_pair):
    model, tokenizer = dflash.load(*dflash2_pair("qwen3", vocab_size=SMALL_VOCAB), draft_bits=8)
    assert "scales" in model.draft.layers[0].attention_conv.kernel_projection
    tokenizer.eos_token_ids = set()
    prompt = small_prompt(12, 4)
    reference = generate(model.adapter, tokenizer, prompt, 24).tokens
    assert dflash.generate(model, tokenizer, prompt, 24).tokens == reference


def test_the_selector_proposes_for_the_argmax_rules_only(dflash2_pair):
    model, _ = dflash.load(*dflash2_pair("llama"))
    state = decode.start(model, max_tokens=20)
    decode.prefill(model, state, mx.array([5, 17, 99, 230]))
    cache = state.draft_cache
    hidden = model.draft(model.adapter.embed(mx.array([[state.tokens[-1]] + [2] * 7])), state.context, cache)
    for layer_cache in cache:
        layer_cache.trim(state.context.shape[1])
    logits, path = model.draft.finish_block(hidden[:, 1:], model.adapter.lm_head, mx.array(state.tokens[-1:]))
    sampling = SamplingSettings(temperature=1.0)
    for rule, expected in [(GreedyAcceptance(), path), (make_acceptance(sampling, "argmax"), path)]:
        proposals, draft_logits = model.draft_block(state.tokens[-1:], 8, state.context, cache, [rule], [state])
        for layer_cache in cache:
            layer_cache.trim(state.context.shape[1])
        assert mx.array_equal(proposals, expected) and mx.array_equal(draft_logits, logits)
    assert not mx.array_equal(path[0], mx.argmax(logits[0], axis=-1))  # the path is the selector's
    without_selector = replace(model, selector=False)  # the ablation: the drafter's own argmax
    proposals, _ = without_selector.draft_block(state.tokens[-1:], 8, state.context, cache, [GreedyAcceptance()],
                                                [state])  # fmt: skip
    assert mx.array_equal(proposals, mx.argmax(logits, axis=-1))


def test_a_dflash2_drafter_samples_with_the_argmax_rule_unless_told(dflash2_pair, make_pair):
    sampled = SamplingSettings(temperature=0.7)
    engine = Engine(*dflash2_pair("llama"))

    def rule(engine, request):
        return engine.prepare(request, EXPERT).acceptance

    assert isinstance(rule(engine, Request("hi", sampling=sampled)), ArgmaxProposals)
    assert isinstance(rule(engine, Request("hi", sampling=sampled, acceptance="match")), TokenMatching)
    assert isinstance(rule(Engine(*make_pair("llama")), Request("hi", sampling=sampled)), SpeculativeSampling)

def without(config: dict, section: str, key: str) -> dict:
    return {**config, section: {k: v for k, v in config[section].items() if k != key}}


def edited(config: dict, section: str, **values) -> dict:
    return {**config, section: {**config[section], **values}} if section else {**config, **values}


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: without(c, "dflash_config", "selector_top_k"), "drafter config.json is missing selector_top_k"),
        (lambda c: edited(c, "dflash_config", block_size="eight"),
         "field 'block_size' must be an integer, got 'eight'"),
        (lambda c: edited(c, "dflash_config", conv_group_size=24), "conv_group_size 24 does not divide hidden_size 64"),
        (lambda c: edited(c, "dflash_config", selector_top_k=600), "selector_top_k 600 exceeds the vocabulary 512"),
        (lambda c: edited(c, "dflash_config", selector_rank=0), "field 'selector_rank' must be a positive integer"),
        (lambda c: edited(c, None, is_causal=True), "causal attention inside the block"),
        (lambda c: edited({k: v for k, v in c.items() if k != "is_causal"}, None, sliding_window=8,
                          layer_types=["sliding_attention"] * 2), "causal attention inside the block"),
        (lambda c: edited(c, "rope_parameters", rope_theta="big"), "field 'rope_theta' must be a number, got 'big'"),
        (lambda c: edited(c, None, layer_types=["full_attention"]), "1 layer_types for 2 layers"),
        (lambda c: edited(c, None, architectures=["DFlashDraftModel"]), "selector and convolution fields need"),
    ],
)
def test_malformed_configs_are_refused_in_one_line(dflash2_pair, tmp_path, change, message):
    target, draft_dir = dflash2_pair("llama")
    config = change(json.loads((Path(draft_dir) / "config.json").read_text()))
    broken = write_published(tmp_path / "broken", published_config(target_config("llama")))
    (Path(broken) / "config.json").write_text(json.dumps(config))
    with pytest.raises(DFlashError, match=message.replace("(", r"\(")) as error:
        dflash.load(target, broken)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("drop", ["candidate_selector.successor_codebook", "layers.1.mlp_conv.base_kernel"])
def test_missing_weights_are_refused_in_one_line(dflash2_pair, tmp_path, drop):
    target, _ = dflash2_pair("llama")
    broken = write_published(tmp_path / "broken", published_config(target_config("llama")), drop=[drop])
    with pytest.raises(DFlashError, match="do not match its config.json") as error:
        dflash.load(target, broken)
    assert "\n" not in str(error.value)


# ---------------------------------------------------------------------------------------------
# Decoding


@pytest.mark.parametrize("family", ["llama", "qwen3", "muse_glimmer"])
def test_greedy_decoding_equals_plain_greedy_decoding(dflash2_pair, family):
    """The selector proposes (random drafters over a small vocabulary are accepted now and then);
    the oracle drives full, partial and no accepts through the DFlash 2 drafter's caches. On Muse
    Glimmer with the published drafter's scaling of its logits."""
    scaling = MUSE_SCALING if family == "muse_glimmer" else {}
    model, tokenizer = dflash.load(*dflash2_pair(family, vocab_size=SMALL_VOCAB, top_k=4, **scaling))
    tokenizer.eos_token_ids = set()
    accepted = 0
    for seed, length in enumerate([1, 9, 40]):
        prompt = small_prompt(length, seed)
        reference = generate(model.adapter, tokenizer, prompt, 40).tokens
        result = dflash.generate(model, tokenizer, prompt, 40)
        assert result.tokens == reference
        accepted += sum(n - 1 for n in result.stats.acceptance_lengths)
        oracle = OracleProposals(reference, SMALL_VOCAB, miss_every=5)
        assert dflash.generate(model, tokenizer, prompt, 40, acceptance=oracle).tokens == reference
    assert accepted > 0  # the selector's own proposals were accepted too


def test_sliding_window_softcapped_drafter_is_exact_alone_and_batched(dflash2_pair):
    drafter = dict(layer_types=["sliding_attention"] * 2, sliding_window=6, output_multiplier=0.5,
                   final_logit_softcapping=4.0)
    model, tokenizer = dflash.load(*dflash2_pair("qwen3", vocab_size=SMALL_VOCAB, **drafter))
    tokenizer.eos_token_ids = set()
    prompts = [small_prompt(20, 3), small_prompt(5, 4)]
    singles = [dflash.generate(model, tokenizer, prompt, 30) for prompt in prompts]
    assert [r.tokens for r in singles] == [generate(model.adapter, tokenizer, p, 30).tokens for p in prompts]
    batched = batch_generate(model, tokenizer, prompts, 30)  # each row's window at its own offset
    assert [r.tokens for r in batched] == [r.tokens for r in singles] and same_steps(batched, singles)


def test_batched_equals_single(dflash2_pair):
    """Each row's tokens and acceptance lengths (so its selector paths, where they decide) are its single run's."""
    model, tokenizer = dflash.load(*dflash2_pair("llama", vocab_size=SMALL_VOCAB, top_k=4))
    tokenizer.eos_token_ids = set()
    prompts = [small_prompt(n, n) for n in (3, 17, 40, 1)]
    singles = [dflash.generate(model, tokenizer, p, 30) for p in prompts]
    batched = batch_generate(model, tokenizer, prompts, 30)
    assert [r.tokens for r in batched] == [r.tokens for r in singles]
    assert same_steps(batched, singles)
    assert any(n > 1 for r in singles for n in r.stats.acceptance_lengths)


def same_steps(batched, singles) -> bool:
    """Each row drafted and accepted in each step what it did alone (its last block too: a row
    drafts no more than it needs, whatever the batch's longest row does)."""
    return all(b.stats.acceptance_lengths == s.stats.acceptance_lengths and b.stats.block_sizes == s.stats.block_sizes
               for b, s in zip(batched, singles))  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Sampling: the committed tokens follow the target, whatever the selector proposes

SIGNIFICANCE = 1e-3
MIN_EXPECTED = 5


def chi_square_p_value(counts: list, expected: list) -> float:
    """Pearson's chi-square over one table, the outcomes expecting least pooled until every bin
    expects MIN_EXPECTED. For an even number of degrees of freedom 2m the p-value is exactly
    exp(-x/2) * sum_{i<m} (x/2)^i / i!; an odd df is rounded down, which lowers the p-value (the
    tail grows with df): the check only gets stricter."""
    bins, observed_sum, expected_sum = [], 0, 0.0
    for observed, wanted in sorted(zip(counts, expected), key=lambda cell: cell[1]):
        observed_sum, expected_sum = observed_sum + observed, expected_sum + wanted
        if expected_sum >= MIN_EXPECTED:
            bins.append([observed_sum, expected_sum])
            observed_sum, expected_sum = 0, 0.0
    bins[-1][0] += observed_sum
    bins[-1][1] += expected_sum
    statistic = sum((o - e) ** 2 / e for o, e in bins)
    half_df = (len(bins) - 1) // 2
    assert half_df >= 1, "too few bins for a test"
    x = statistic / 2
    return math.exp(-x) * sum(x**i / math.factorial(i) for i in range(half_df))


@pytest.mark.slow  # 400 sampled generations
def test_sampling_with_the_selector_proposing_follows_the_target(dflash2_pair):
    model, tokenizer = dflash.load(*dflash2_pair("qwen3", vocab_size=SMALL_VOCAB, top_k=4))
    tokenizer.eos_token_ids = set()
    settings, prompt, draws = SamplingSettings(temperature=2.0), [5, 3, 7, 4], 400
    rule = make_acceptance(settings, "argmax")
    counts, accepted = Counter(), 0
    for seed in range(draws):
        result = dflash.generate(model, tokenizer, prompt, 2, acceptance=rule, seed=seed)
        counts[tuple(result.tokens)] += 1
        accepted += result.stats.acceptance_lengths == [2]
    first = mx.softmax(settings.sampling_logits(model.target(mx.array([prompt]))[0, -1]), axis=-1)
    outcomes, expected = [], []
    for a in range(SMALL_VOCAB):
        second = mx.softmax(settings.sampling_logits(model.target(mx.array([prompt + [a]]))[0, -1]), axis=-1)
        for b in range(SMALL_VOCAB):
            outcomes.append(counts[(a, b)])
            expected.append(draws * first[a].item() * second[b].item())
    assert sum(outcomes) == draws
    assert accepted > 20  # the selector's proposals were accepted often enough to matter
    assert chi_square_p_value(outcomes, expected) > SIGNIFICANCE
