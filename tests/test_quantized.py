"""Quantized targets, converted by mlx-lm (4, 6 and 8 bits, and a mixed-precision recipe), load
through the real loaders and decode exactly: greedy DFlash gives, token for token, what plain
mlx-lm decoding of the same loaded model gives, whether the target is kept quantized or
dequantized at load. Drafters can be quantized too."""

import json

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx_lm.convert import convert

import dflash
from adapters.loading import quantized_layers
from dflash import DFlashError
from dflash.cli import main as cli_main
from dflash.generate import generate
from eval.cli import main as eval_main
from tests.helpers import OracleProposals, assert_same_up_to_rounding, prompt_of, rounding_bound

FAMILIES = ["llama", "qwen3"]
GROUP_SIZE = 32
# mlx_lm.convert settings: uniform bits, or one of its mixed-precision recipes (4 bits, 6 for
# the LM head and some value and down projections).
QUANTIZATIONS = {"4bit": {"q_bits": 4}, "6bit": {"q_bits": 6}, "8bit": {"q_bits": 8},
                 "mixed_4_6": {"quant_predicate": "mixed_4_6"}}  # fmt: skip
EXPECTED_BITS = {"4bit": {4}, "6bit": {6}, "8bit": {8}, "mixed_4_6": {4, 6}}


@pytest.fixture(scope="module")
def quantized_pair(make_pair, tmp_path_factory):
    """quantized_pair(family, quantization, tied=False) -> (quantized target dir, drafter dir), the
    target converted from make_pair's by mlx_lm.convert, built once per configuration."""
    built = {}

    def build(family, quantization, tied=False):
        key = (family, quantization, tied)
        if key not in built:
            target, draft = make_pair(family, tied=tied)
            out = tmp_path_factory.mktemp(f"{family}-{quantization}") / "target"
            convert(target, str(out), quantize=True, q_group_size=GROUP_SIZE, **QUANTIZATIONS[quantization])
            built[key] = (str(out), draft)
        return built[key]

    return build


def check_exact(model, tokenizer, prompt, max_tokens, oracle=False):
    """DFlash (its random drafter, or the oracle proposer) against plain decoding of the same loaded model."""
    reference = generate(model.adapter, tokenizer, prompt, max_tokens).tokens
    acceptance = OracleProposals(reference, model.adapter.vocab_size, miss_every=5) if oracle else None
    result = dflash.generate(model, tokenizer, prompt, max_tokens, acceptance=acceptance)
    assert result.tokens == reference
    return result


@pytest.mark.slow  # every family x bit width; tied/untied and the CLI stay fast
@pytest.mark.parametrize("quantization", QUANTIZATIONS)
@pytest.mark.parametrize("family", FAMILIES)
def test_quantized_target_decodes_exactly(quantized_pair, family, quantization):
    model, tokenizer = dflash.load(*quantized_pair(family, quantization), dequantize="off")
    layers = quantized_layers(model.target)
    assert layers and {layer.bits for layer in layers} == EXPECTED_BITS[quantization]
    assert not any(type(m) is nn.Linear for _, m in model.target.named_modules())  # every linear layer
    check_exact(model, tokenizer, prompt_of(12), 30)
    assert check_exact(model, tokenizer, prompt_of(20, seed=1), 50, oracle=True).stats.mean_acceptance > 3


@pytest.mark.slow  # every family x bit width; tied/untied and the CLI stay fast
@pytest.mark.parametrize("quantization", QUANTIZATIONS)
@pytest.mark.parametrize("family", FAMILIES)
def test_dequantized_target_decodes_exactly(quantized_pair, family, quantization):
    pair = quantized_pair(family, quantization)
    quantized, _ = dflash.load(*pair, dequantize="off")
    model, tokenizer = dflash.load(*pair, dequantize="on")
    assert not quantized_layers(model.target) and model.dtype == "float32"
    # Each weight is the checkpoint's, dequantized in float32.
    kept, plain = quantized.target.model.layers[0].self_attn.v_proj, model.target.model.layers[0].self_attn.v_proj
    expected = mx.dequantize(kept.weight, kept.scales, kept.biases, kept.group_size, kept.bits)
    assert plain.weight.dtype == mx.float32 and mx.array_equal(plain.weight, expected)
    check_exact(model, tokenizer, prompt_of(12), 30)
    assert check_exact(model, tokenizer, prompt_of(20, seed=1), 50, oracle=True).stats.mean_acceptance > 3
    # The dequantized model computes the quantized one's function, up to the order of the sums.
    tokens = mx.array([prompt_of(16, seed=2)])
    expected = model.target(tokens)
    assert_same_up_to_rounding(quantized.target(tokens), expected, rounding_bound(model.adapter, 16, expected))


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("dequantize", ["on", "off"])
def test_tied_and_untied_heads(quantized_pair, tied, dequantize):
    model, tokenizer = dflash.load(*quantized_pair("llama", "4bit", tied=tied), dequantize=dequantize)
    check_exact(model, tokenizer, prompt_of(30, seed=3), 40, oracle=True)


def test_auto_dequantizes_on_the_cpu_backend_only_where_it_fits(quantized_pair, capsys, monkeypatch):
    pair = quantized_pair("llama", "8bit")
    model, _ = dflash.load(*pair)
    notice = capsys.readouterr().err.strip().splitlines()
    assert not quantized_layers(model.target)
    assert len(notice) == 1 and "dequantized the target" in notice[0] and "dequantize off keeps it quantized" in notice[0]

    monkeypatch.setattr("adapters.loading.physical_memory", lambda: 1 << 20)
    model, _ = dflash.load(*pair)
    assert quantized_layers(model.target)
    assert "keeping the quantized target quantized" in capsys.readouterr().err

    monkeypatch.setattr("adapters.loading.cpu_backend", lambda: False)  # as on Metal: no dequantizing, no notice
    model, _ = dflash.load(*pair)
    assert quantized_layers(model.target) and not capsys.readouterr().err

    with pytest.raises(DFlashError, match="unknown dequantize setting 'yes'"):
        dflash.load(*pair, dequantize="yes")


@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_drafter_stays_exact(quantized_pair, bits):
    model, tokenizer = dflash.load(*quantized_pair("qwen3", "8bit"), draft_bits=bits)
    drafter_layers = quantized_layers(model.draft)
    assert drafter_layers and {layer.bits for layer in drafter_layers} == {bits}
    assert not any(type(m) is nn.Linear for _, m in model.draft.named_modules())
    check_exact(model, tokenizer, prompt_of(12), 30)
    with pytest.raises(DFlashError, match="quantized to 4, 6, 8 bits, not 3"):
        dflash.load(*quantized_pair("qwen3", "8bit"), draft_bits=3)


@pytest.mark.parametrize("dequantize", ["on", "off"])
def test_cli_baseline_decodes_the_same_loaded_target(quantized_pair, capsys, dequantize):
    target, draft = quantized_pair("llama", "4bit")
    argv = ["--target-model", target, "--draft-model", draft, "--prompt", "def add(a, b):", "--no-chat",
            "--max-new-tokens", "24", "--dequantize", dequantize, "--quantize-draft", "8",
            "--baseline", "--json"]  # fmt: skip
    assert cli_main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["exact"] is True and report["tokens"] == report["baseline_tokens"]


def test_bench_records_how_the_target_ran(quantized_pair, tmp_path):
    target, draft = quantized_pair("qwen3", "6bit")
    suite = tmp_path / "suite.jsonl"
    suite.write_text('{"prompt": "def add(a, b):"}\n{"prompt": "The quick brown fox"}\n')
    eval_main(["bench", "--target-model", target, "--draft-model", draft, "--suite", str(suite), "--no-chat",
               "--max-tokens", "8", "--repeats", "1", "--warmup", "0", "--dequantize", "off", "--quantize-draft", "8",
               "--out", str(tmp_path / "report")])  # fmt: skip
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["config"]["target_runs_quantized"] is True and report["config"]["quantize_draft"] == 8
    assert report["methods"]["dflash"]["exact_match_rate"] == 1.0
    assert "target quantized as loaded (--dequantize off)" in (tmp_path / "report" / "report.md").read_text()
