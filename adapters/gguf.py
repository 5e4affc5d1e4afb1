"""Loading a GGUF file (llama.cpp's format) of the Llama family into mlx-lm's own `llama.Model`.

`mx.load` reads the tensors: Q4_0, Q4_1 and Q8_0 blocks come back as MLX affine quantized arrays
(weight, scales, biases, groups of 32) that mlx-lm's quantized layers take as they are; with the
scales and biases in float32 the dequantized weights equal the file's values exactly. llama.cpp
stores the rows of the Q and K projections permuted for its rotary layout (each head's two halves
interleaved); they are put back in mlx-lm's order here, for weight, scales and biases alike (a
quantization group runs along a row, so moving whole rows is exact).
"""

import mmap
import struct
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType
from mlx_lm.models import llama
from mlx_lm.utils import infer_quant_config

from .errors import DFlashError
from .gguf_tokenizer import gguf_tokenizer, metadata_scalar

ARCHITECTURE = "llama"
# The tensor types `mx.load` reads exactly. It reads BF16 through float16 (small values lose bits,
# large ones overflow) and K-quants dequantized to float16.
SUPPORTED_TYPES = ("F32", "F16", "Q4_0", "Q4_1", "Q8_0")
GLOBAL_TENSORS = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
BLOCK_TENSORS = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
# Byte sizes of GGUF's fixed-size metadata value types.
VALUE_SIZES = {
    GGUFValueType.UINT8: 1, GGUFValueType.INT8: 1, GGUFValueType.BOOL: 1, GGUFValueType.UINT16: 2,
    GGUFValueType.INT16: 2, GGUFValueType.UINT32: 4, GGUFValueType.INT32: 4, GGUFValueType.FLOAT32: 4,
    GGUFValueType.UINT64: 8, GGUFValueType.INT64: 8, GGUFValueType.FLOAT64: 8,
}  # fmt: skip


def is_gguf(path_or_repo: str) -> bool:
    return path_or_repo.lower().endswith(".gguf")


def tensor_types(path: Path) -> dict:
    """The GGML type name of each tensor, from the file's header. `mx.load` cannot say: it decodes
    the types it has no layout for to float16, rounding them, without a word. The gguf
    package's reader would build every metadata field (about 2 s for a 49k-token vocabulary);
    this walks past them."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        magic, version, tensor_count, kv_count = struct.unpack_from("<4sIQQ", data, 0)
        if magic != b"GGUF" or version < 2:
            raise DFlashError(f"'{path}' is not a GGUF file of version 2 or later")
        offset = 24
        for _ in range(kv_count):
            offset = skip_string(data, offset)
            (value_type,) = struct.unpack_from("<I", data, offset)
            offset = skip_value(data, offset + 4, value_type)
        types = {}
        for _ in range(tensor_count):
            (length,) = struct.unpack_from("<Q", data, offset)
            name = data[offset + 8 : offset + 8 + length].decode()
            offset += 8 + length
            (dims,) = struct.unpack_from("<I", data, offset)
            offset += 4 + 8 * dims
            (ggml_type,) = struct.unpack_from("<I", data, offset)
            offset += 4 + 8  # the type, then the data offset
            types[name] = GGMLQuantizationType(ggml_type).name if ggml_type in GGML_QUANT_SIZES else str(ggml_type)
        return types


def skip_string(data, offset: int) -> int:
    (length,) = struct.unpack_from("<Q", data, offset)
    return offset + 8 + length


def skip_value(data, offset: int, value_type: int) -> int:
    if value_type == GGUFValueType.STRING:
        return skip_string(data, offset)
    if value_type == GGUFValueType.ARRAY:
        item_type, count = struct.unpack_from("<IQ", data, offset)
        offset += 12
        if item_type in VALUE_SIZES:
            return offset + count * VALUE_SIZES[item_type]
        for _ in range(count):
            offset = skip_value(data, offset, item_type)
        return offset
    return offset + VALUE_SIZES[GGUFValueType(value_type)]


def check_tensor_types(path: Path) -> None:
    unsupported = {name: kind for name, kind in tensor_types(path).items() if kind not in SUPPORTED_TYPES}
    if unsupported:
        name, kind = next(iter(unsupported.items()))
        raise DFlashError(
            f"GGUF '{path}' has tensors of type {', '.join(sorted(set(unsupported.values())))} (first: {name} is "
            f"{kind}); dflash-mlx reads the GGUF tensor types {', '.join(SUPPORTED_TYPES)}"
        )


def model_args(metadata: dict, weights: dict) -> llama.ModelArgs:
    """mlx-lm's llama arguments from the GGUF's `llama.*` metadata."""
    architecture = metadata.get("general.architecture")
    if architecture != ARCHITECTURE:
        raise DFlashError(f"GGUF architecture '{architecture}' is not supported; dflash-mlx reads GGUF files of the "
                          f"Llama family (general.architecture '{ARCHITECTURE}')")  # fmt: skip

    def field(name, default=None):
        value = metadata_scalar(metadata, f"{ARCHITECTURE}.{name}", default)
        if value is None:
            raise DFlashError(f"GGUF metadata has no '{ARCHITECTURE}.{name}'")
        return value

    if field("rope.scaling.type", "none") != "none" or "rope_freqs.weight" in weights:
        raise DFlashError("GGUF files with RoPE scaling (rope.scaling.type, rope_freqs) are not supported")
    heads, hidden = field("attention.head_count"), field("embedding_length")
    head_dim = field("attention.key_length", hidden // heads)
    if field("attention.value_length", head_dim) != head_dim or field("rope.dimension_count", head_dim) != head_dim:
        raise DFlashError("GGUF files whose value or rotary dimension differs from the key dimension are not supported")
    return llama.ModelArgs(
        model_type=ARCHITECTURE,
        hidden_size=hidden,
        num_hidden_layers=field("block_count"),
        intermediate_size=field("feed_forward_length"),
        num_attention_heads=heads,
        num_key_value_heads=field("attention.head_count_kv", heads),
        head_dim=head_dim,
        rms_norm_eps=field("attention.layer_norm_rms_epsilon"),
        vocab_size=weights["token_embd.weight"].shape[0],
        rope_theta=field("rope.freq_base", 10000.0),
        max_position_embeddings=field("context_length"),
        tie_word_embeddings="output.weight" not in weights,
        attention_bias="blk.0.attn_q.bias" in weights,
        mlp_bias="blk.0.ffn_gate.bias" in weights,
    )


def mlx_lm_name(name: str) -> str:
    """mlx-lm's name of a GGUF tensor: "blk.3.attn_q.scales" -> "model.layers.3.self_attn.q_proj.scales"."""
    parts = name.split(".")
    if parts[0] == "blk" and len(parts) == 4 and parts[2] in BLOCK_TENSORS:
        return f"model.layers.{parts[1]}.{BLOCK_TENSORS[parts[2]]}.{parts[3]}"
    if len(parts) == 2 and parts[0] in GLOBAL_TENSORS:
        return f"{GLOBAL_TENSORS[parts[0]]}.{parts[1]}"
    raise DFlashError(f"GGUF tensor '{name}' has no place in mlx-lm's {ARCHITECTURE} model")


def unpermute_rows(rows: mx.array, heads: int) -> mx.array:
    """Undo llama.cpp's rotary permutation of a Q or K projection's rows: within each head, row
    2i + j of the file is row j * head_dim / 2 + i of the model."""
    shape = rows.shape
    return rows.reshape(heads, shape[0] // heads // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def mlx_lm_weights(weights: dict, args: llama.ModelArgs) -> dict:
    """The GGUF's tensors under mlx-lm's names, Q and K rows in mlx-lm's order."""
    heads = {"attn_q": args.num_attention_heads, "attn_k": args.num_key_value_heads}
    converted = {}
    for name, value in weights.items():
        kind = name.split(".")[2] if name.startswith("blk.") else None
        if kind in heads:
            value = unpermute_rows(value, heads[kind])
        converted[mlx_lm_name(name)] = value
    return converted


def stored_dtype(weights: dict) -> mx.Dtype:
    """The one dtype the model computes in as stored: float32 when quantized (`mx.load` gives float16
    scales and biases; the dequantized weights are exact only when computed in float32) or F32,
    else float16 (F16 matrices; the F32 norms follow them)."""
    quantized = any(name.endswith(".scales") for name in weights)
    return mx.float32 if quantized else weights["model.embed_tokens.weight"].dtype


def load_gguf(path_or_name: str, what: str = "target"):
    """Load a Llama-family GGUF file as mlx-lm's llama model (quantized tensors as mlx-lm's quantized
    layers, bits per layer as stored) and its tokenizer (TokenizerWrapper, chat template from the
    file). Returns (model, tokenizer)."""
    path = Path(path_or_name).expanduser()
    if not path.is_file():
        raise DFlashError(f"{what} '{path_or_name}' not found")
    check_tensor_types(path)
    try:
        weights, metadata = mx.load(str(path), return_metadata=True)
    except Exception as e:
        raise DFlashError(f"cannot read {what} GGUF '{path_or_name}': {e}") from None
    args = model_args(metadata, weights)
    weights = mlx_lm_weights(weights, args)
    model = llama.Model(args)
    nn.quantize(
        model,
        class_predicate=lambda name, module: f"{name}.scales" in weights and infer_quant_config(name, module, weights),
    )
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as e:
        raise DFlashError(f"{what} GGUF '{path_or_name}' does not match its own metadata: {e}") from None
    model.set_dtype(stored_dtype(weights))
    model.eval()
    mx.eval(model.parameters())
    return model, gguf_tokenizer(metadata)
