"""Checkpoint format, pair validation and bad input: every mistake is one clear DFlashError."""

import json
import shutil

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten
from safetensors.numpy import save_file

import dflash
from adapters import adapter_for
from dflash import DFlashError
from dflash.cli import main as cli_main
from adapters import default_target_layer_ids
from tests.helpers import draft_config, save_random_draft, target_config


def test_published_layer_rule():
    assert default_target_layer_ids(36, 5) == [1, 9, 17, 25, 33]
    assert default_target_layer_ids(32, 5) == [1, 8, 15, 22, 29]
    assert default_target_layer_ids(6, 1) == [3]


def published_config(draft) -> dict:
    """config.json as the published drafters write it (HF Qwen3 keys plus dflash_config)."""
    c = draft.config
    return {
        "architectures": ["DFlashDraftModel"],
        "auto_map": {"AutoModel": "dflash.DFlashDraftModel"},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "block_size": c.block_size,
        "dflash_config": {"mask_token_id": c.mask_token_id, "target_layer_ids": c.target_layer_ids},
        "dtype": "bfloat16",
        "head_dim": c.head_dim,
        "hidden_act": "silu",
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "layer_types": ["full_attention"] * c.num_hidden_layers,
        "max_position_embeddings": c.max_position_embeddings,
        "max_window_layers": c.num_hidden_layers,
        "model_type": "qwen3",
        "num_attention_heads": c.num_attention_heads,
        "num_hidden_layers": c.num_hidden_layers,
        "num_key_value_heads": c.num_key_value_heads,
        "num_target_layers": c.num_target_layers,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_scaling": None,
        "rope_theta": c.rope_theta,
        "sliding_window": None,
        "tie_word_embeddings": True,
        "use_sliding_window": False,
        "vocab_size": c.vocab_size,
    }


def test_hand_copied_published_checkpoint_gives_identical_logits(make_pair, tmp_path):
    target, draft_dir = make_pair("qwen3")
    model, _ = dflash.load(target, draft_dir)
    weights = {k: np.array(v) for k, v in tree_flatten(model.draft.parameters())}
    expected_keys = {"fc.weight", "hidden_norm.weight", "norm.weight"} | {
        f"layers.{i}.{name}.weight"
        for i in range(model.draft.config.num_hidden_layers)
        for name in [
            "input_layernorm", "post_attention_layernorm", "self_attn.q_proj", "self_attn.k_proj",
            "self_attn.v_proj", "self_attn.o_proj", "self_attn.q_norm", "self_attn.k_norm",
            "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
        ]
    }
    assert set(weights) == expected_keys
    published = tmp_path / "published"
    published.mkdir()
    half = len(weights) // 2  # published checkpoints may be sharded
    names = sorted(weights)
    save_file({k: weights[k] for k in names[:half]}, str(published / "model-00001-of-00002.safetensors"))
    save_file({k: weights[k] for k in names[half:]}, str(published / "model-00002-of-00002.safetensors"))
    (published / "config.json").write_text(json.dumps(published_config(model.draft)))

    copy, _ = dflash.load(target, str(published))
    block = model.adapter.embed(mx.array([[5, 2, 2, 2]]))
    context = mx.random.normal((1, 7, len(model.draft.config.target_layer_ids) * 64))
    original = model.draft(block, context, model.draft.make_cache())
    reloaded = copy.draft(block, context, copy.draft.make_cache())
    assert mx.array_equal(model.adapter.lm_head(original), copy.adapter.lm_head(reloaded))
    assert copy.draft.config.extra["auto_map"] == {"AutoModel": "dflash.DFlashDraftModel"}


def test_sliding_window_drafter_limits_attention_to_the_window(make_pair, tmp_path):
    target, _ = make_pair("qwen3")
    config = draft_config(target_config("qwen3"), layers=2, layer_types=["sliding_attention", "full_attention"],
                          sliding_window=4)
    model, tokenizer = dflash.load(target, str(save_random_draft(tmp_path / "swa", config)))
    layer = model.draft.layers[0].self_attn
    assert layer.sliding_window == 4 and model.draft.layers[1].self_attn.sliding_window is None
    mask = layer._window_mask(block_start=10, block_len=3, context_len=10)
    assert mask[0, 0, 0].tolist() == [False] * 7 + [True] * 3 + [True] * 3
    assert len(dflash.generate(model, tokenizer, list(range(3, 40)), 20).tokens) == 20


def mismatched_draft(make_pair, tmp_path, **overrides):
    target, _ = make_pair("llama")
    config = draft_config(target_config("llama"), **overrides)
    return target, str(save_random_draft(tmp_path / "bad", config))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(hidden_size=32), "hidden size 32 does not match the target's 64"),
        (dict(vocab_size=1000), "vocabulary 1000 does not match the target's 512"),
        (dict(target_layer_ids=[1, 9]), "taps target layers [1, 9]; the target has layers 0..5"),
        (dict(num_target_layers=36), "trained for a 36-layer target; this target has 6"),
        (dict(mask_token_id=4096), "mask_token_id 4096 is outside the vocabulary"),
    ],
)
def test_drafter_that_does_not_fit_the_target(make_pair, tmp_path, overrides, message):
    if "hidden_size" in overrides:
        overrides["head_dim"] = 8
    target, draft = mismatched_draft(make_pair, tmp_path, **overrides)
    with pytest.raises(DFlashError, match=message.replace("[", r"\[").replace("]", r"\]")):
        dflash.load(target, draft)


def broken_copy(make_pair, tmp_path):
    _, draft = make_pair("llama")
    broken = tmp_path / "broken"
    shutil.copytree(draft, broken)
    return broken


def test_missing_and_corrupt_drafter_files(make_pair, tmp_path):
    target, _ = make_pair("llama")
    broken = broken_copy(make_pair, tmp_path)
    config = json.loads((broken / "config.json").read_text())
    del config["dflash_config"]
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(DFlashError, match="no 'dflash_config' section"):
        dflash.load(target, str(broken))

    (broken / "config.json").write_text("{not json")
    with pytest.raises(DFlashError, match="bad drafter config"):
        dflash.load(target, str(broken))

    (broken / "config.json").unlink()
    with pytest.raises(DFlashError, match="has no config.json"):
        dflash.load(target, str(broken))

    broken = broken_copy(make_pair, tmp_path / "2")
    (broken / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(DFlashError, match="cannot read"):
        dflash.load(target, str(broken))

    (broken / "model.safetensors").unlink()
    with pytest.raises(DFlashError, match="no \\*.safetensors files"):
        dflash.load(target, str(broken))

    with pytest.raises(DFlashError, match="not found"):
        dflash.load(target, str(tmp_path / "nowhere"))
    with pytest.raises(DFlashError, match="not found"):
        dflash.load(str(tmp_path / "nowhere"), str(broken))


@pytest.mark.parametrize(
    "section, field, value, kind",
    [
        (None, "block_size", "eight", "an integer"),
        (None, "rms_norm_eps", None, "a number"),
        (None, "hidden_size", 0, "a positive integer"),
        (None, "num_attention_heads", 4.0, "a positive integer"),
        (None, "tie_word_embeddings", "yes", "true or false"),
        (None, "layer_types", "full_attention", "a list of strings"),
        (None, "rope_scaling", "none", "an object"),
        ("dflash_config", "target_layer_ids", [1, "3"], "a list of integers"),
        ("dflash_config", "mask_token_id", True, "an integer"),
        ("dflash_config", "draft_vocab_size", 0, "a positive integer"),
    ],
)
def test_every_config_field_is_type_checked_in_one_line(make_pair, tmp_path, section, field, value, kind):
    target, _ = make_pair("llama")
    broken = broken_copy(make_pair, tmp_path)
    config = json.loads((broken / "config.json").read_text())
    (config[section] if section else config)[field] = value
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(DFlashError, match=f"field '{field}' must be {kind}, got ") as error:
        dflash.load(target, str(broken))
    assert "\n" not in str(error.value)


def test_weights_that_do_not_match_the_config(make_pair, tmp_path):
    target, _ = make_pair("llama")
    broken = broken_copy(make_pair, tmp_path)
    config = json.loads((broken / "config.json").read_text())
    config["intermediate_size"] = 96
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(DFlashError, match="do not match its config.json"):
        dflash.load(target, str(broken))


def test_unsupported_families_are_refused_with_the_supported_ones():
    from mlx_lm.models import gemma, qwen3_next

    args = gemma.ModelArgs(model_type="gemma", hidden_size=32, num_hidden_layers=1, intermediate_size=64,
                           num_attention_heads=2, head_dim=16, rms_norm_eps=1e-6, vocab_size=64, num_key_value_heads=2)
    with pytest.raises(DFlashError, match="no dflash-mlx adapter for target family 'gemma'; supported families: "
                       "llama, qwen3, qwen3_moe, qwen3_next, qwen3_5, qwen3_5_moe, gpt_oss"):
        adapter_for(gemma.Model(args))
    hybrid = qwen3_next.ModelArgs(
        model_type="qwen3_next", hidden_size=32, num_hidden_layers=4, intermediate_size=64, num_attention_heads=2,
        linear_num_value_heads=2, linear_num_key_heads=2, linear_key_head_dim=16, linear_value_head_dim=16,
        linear_conv_kernel_dim=4, num_experts=2, num_experts_per_tok=1, decoder_sparse_step=1,
        shared_expert_intermediate_size=64, mlp_only_layers=[], moe_intermediate_size=32, rms_norm_eps=1e-6,
        vocab_size=64, num_key_value_heads=2, rope_theta=10000.0, partial_rotary_factor=0.5,
        max_position_embeddings=128, head_dim=16,
    )
    # Hybrid linear-attention targets were refused until their recurrent state could be rolled back.
    assert adapter_for(qwen3_next.Model(hybrid)).family == "qwen3_next"


def test_unrollable_cache_is_refused(make_pair):
    from mlx_lm.models.cache import ArraysCache

    model, _ = dflash.load(*make_pair("llama"))
    with pytest.raises(DFlashError, match="ArraysCache, which dflash-mlx cannot roll back"):
        model.adapter.check_caches([ArraysCache(2)])


def test_bad_prompts_and_options(make_pair):
    model, tokenizer = dflash.load(*make_pair("llama", max_position_embeddings=64))
    with pytest.raises(DFlashError, match="the prompt is empty"):
        dflash.generate(model, tokenizer, "   ")
    with pytest.raises(DFlashError, match="the prompt is empty"):
        dflash.generate(model, tokenizer, [])
    with pytest.raises(DFlashError, match="prompt has 100 tokens; the target's context window is 64"):
        dflash.generate(model, tokenizer, [5] * 100)
    with pytest.raises(DFlashError, match="max tokens must be at least 1"):
        dflash.generate(model, tokenizer, [5], 0)
    for block_size in (1, 17):
        with pytest.raises(DFlashError, match="block size must be between 2 and the drafter's 16"):
            dflash.generate(model, tokenizer, [5], 8, block_size=block_size)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--prompt", ""], "the prompt is empty"),
        (["--max-new-tokens", "0"], "max tokens must be at least 1, got 0"),
        (["--block-size", "1"], "block size must be between 2"),
        (["--draft-window", "0"], "the drafter's context window must be at least 1 position, got 0"),
        (["--dtype", "float32", "--preset", "qwen3-4b"], "give either a preset or a target and a drafter"),
    ],
)
def test_cli_bad_input_is_one_line(make_pair, capsys, argv, message):
    target, draft = make_pair("llama")
    assert cli_main(["--target-model", target, "--draft-model", draft, *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_json_with_baseline(make_pair, capsys):
    target, draft = make_pair("llama")
    assert cli_main(["--target-model", target, "--draft-model", draft, "--no-chat", "--prompt", "hello there",
                     "--max-new-tokens", "20", "--json", "--baseline"]) == 0
    report = json.loads(capsys.readouterr().out)
    for key in ["text", "tokens", "prompt_tokens", "generated_tokens", "acceptance_lengths", "mean_acceptance",
                "tokens_per_second", "peak_memory_gb", "baseline_tokens", "baseline_tokens_per_second", "speedup",
                "exact"]:
        assert key in report
    assert report["exact"] is True and report["generated_tokens"] == len(report["tokens"]) == 20
    assert report["dtype"] == "float32"


@pytest.mark.slow  # a fresh interpreter per package
@pytest.mark.parametrize("package", ["adapters", "train", "eval", "dflash"])
def test_every_package_imports_first_in_a_fresh_process(package):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", f"import {package}"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
