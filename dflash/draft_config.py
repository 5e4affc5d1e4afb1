"""A drafter's config.json: parsed with every field's type checked, and written back in the format
it came in (DFlash, or DFlash 2: dflash/dflash2.py says where its fields live).

A field of the wrong type (`"block_size": "eight"`, `"rms_norm_eps": null`) is a ValueError that
names the field; `load_draft` turns it into a one-line DFlashError.
"""

from dataclasses import MISSING, dataclass, field
from typing import List, Optional

from . import dflash2

# config.json field -> the kind of value it holds.
FIELD_KINDS = {
    "hidden_size": "size", "num_hidden_layers": "size", "num_attention_heads": "size", "num_key_value_heads": "size",
    "intermediate_size": "size", "vocab_size": "size", "block_size": "int", "num_target_layers": "size",
    "head_dim": "size", "rms_norm_eps": "number", "rope_theta": "number", "max_position_embeddings": "size",
    "rope_scaling": "dict", "rope_parameters": "dict", "attention_bias": "bool", "tie_word_embeddings": "bool",
    "layer_types": "strings", "sliding_window": "size", "is_causal": "bool",
    "target_layer_ids": "ints", "mask_token_id": "int", "output_multiplier": "number",
    "final_logit_softcapping": "number", "input_embedding_scale": "number",
    "conv_kernel_size": "size", "conv_group_size": "size", "selector_rank": "size", "selector_top_k": "size",
    "draft_vocab_size": "size",
}  # fmt: skip
NULLABLE = {"head_dim", "rope_scaling", "rope_parameters", "layer_types", "sliding_window", "is_causal",
            "final_logit_softcapping"}  # fmt: skip
KIND_NAMES = {"size": "a positive integer", "int": "an integer", "number": "a number", "bool": "true or false",
              "dict": "an object", "ints": "a list of integers", "strings": "a list of strings"}  # fmt: skip
# Fields read from `dflash_config` (first) or the top level.
DFLASH_FIELDS = ("target_layer_ids", "mask_token_id", "block_size", "output_multiplier", "final_logit_softcapping",
                 "input_embedding_scale", "conv_kernel_size", "conv_group_size", "selector_rank", "selector_top_k",
                 "draft_vocab_size")
DFLASH2_FIELDS = ("conv_kernel_size", "conv_group_size", "selector_rank", "selector_top_k")
# Read for DFlash 2 drafters only: a DFlash config that copies its target's fields (a top-level
# final_logit_softcapping) keeps its drafter's logits as they were.
DFLASH2_SCALING = ("output_multiplier", "final_logit_softcapping", "input_embedding_scale")
LAYER_KINDS = ("full_attention", "sliding_attention")


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def fits(kind: str, value) -> bool:
    if kind == "size":
        return is_int(value) and value >= 1
    if kind == "int":
        return is_int(value)
    if kind == "number":
        return is_int(value) or isinstance(value, float)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "dict":
        return isinstance(value, dict)
    element = is_int if kind == "ints" else lambda v: isinstance(v, str)
    return isinstance(value, list) and all(element(v) for v in value)


def check_field(name: str, value) -> None:
    if value is None and name in NULLABLE:
        return
    if not fits(FIELD_KINDS[name], value):
        raise ValueError(f"field '{name}' must be {KIND_NAMES[FIELD_KINDS[name]]}, got {value!r}")


@dataclass
class DraftConfig:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int
    block_size: int
    num_target_layers: int
    target_layer_ids: List[int]
    mask_token_id: int
    head_dim: Optional[int] = None
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    max_position_embeddings: int = 40960
    rope_scaling: Optional[dict] = None
    rope_parameters: Optional[dict] = None  # DFlash 2's RoPE settings, rope_theta among them
    attention_bias: bool = False
    tie_word_embeddings: bool = False
    layer_types: Optional[List[str]] = None
    sliding_window: Optional[int] = None
    output_multiplier: float = 1.0  # the drafter's logits: the target's LM head times this,
    final_logit_softcapping: Optional[float] = None  # then softcapped
    input_embedding_scale: float = 1.0  # the block's embeddings: the target's times this
    # DFlash 2 (all four or none): the dynamic convolutions' taps and channel group, the selector's
    # rank and candidates per position.
    conv_kernel_size: Optional[int] = None
    conv_group_size: Optional[int] = None
    selector_rank: Optional[int] = None
    selector_top_k: Optional[int] = None
    # Our extension (not in published checkpoints): the drafter proposes only these many tokens of
    # the target's vocabulary, the ids in its `draft_vocab` weight (see DFlashDraftModel.logits).
    draft_vocab_size: Optional[int] = None
    extra: dict = field(default_factory=dict)  # other config.json keys, written back unchanged

    def __post_init__(self):
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.layer_types is None:
            self.layer_types = ["full_attention"] * self.num_hidden_layers
        if len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(f"{len(self.layer_types)} layer_types for {self.num_hidden_layers} layers")
        if set(self.layer_types) - set(LAYER_KINDS):
            raise ValueError(f"layer_types must be {' or '.join(LAYER_KINDS)}, got {sorted(set(self.layer_types))}")
        if "sliding_attention" in self.layer_types and self.sliding_window is None:
            raise ValueError("sliding_attention layers need a sliding_window")
        given = [name for name in DFLASH2_FIELDS if getattr(self, name) is not None]
        if given and len(given) < len(DFLASH2_FIELDS):
            missing = [name for name in DFLASH2_FIELDS if name not in given]
            raise ValueError(f"a DFlash 2 drafter needs {', '.join(missing)} too")
        if self.dflash2 and self.hidden_size % self.conv_group_size:
            raise ValueError(f"conv_group_size {self.conv_group_size} does not divide hidden_size {self.hidden_size}")
        if self.draft_vocab_size is not None and self.draft_vocab_size > self.vocab_size:
            raise ValueError(f"draft_vocab_size {self.draft_vocab_size} exceeds the vocabulary {self.vocab_size}")
        proposable = self.draft_vocab_size or self.vocab_size
        if self.dflash2 and self.selector_top_k > proposable:
            raise ValueError(f"selector_top_k {self.selector_top_k} exceeds the vocabulary {proposable}")

    @property
    def dflash2(self) -> bool:
        """Whether the drafter has DFlash 2's convolutions and path selector."""
        return self.selector_top_k is not None

    @property
    def scales_logits(self) -> bool:
        """Whether the drafter scales its head's logits itself (output_multiplier, final_logit_softcapping)."""
        return self.output_multiplier != 1.0 or bool(self.final_logit_softcapping)

    @property
    def rope_config(self) -> Optional[dict]:
        """The RoPE scaling settings mlx-lm's initialize_rope takes."""
        return self.rope_parameters or self.rope_scaling

    @classmethod
    def from_dict(cls, config: dict) -> "DraftConfig":
        dflash_config = config.get("dflash_config")
        if not isinstance(dflash_config, dict):
            raise ValueError("drafter config.json has no 'dflash_config' section (target_layer_ids, mask_token_id)")
        architecture = (config.get("architectures") or [None])[0]
        fields = {k: v for k, v in config.items() if k in FIELD_KINDS}
        fields.update({k: dflash_config[k] for k in DFLASH_FIELDS if k in dflash_config})
        if architecture != dflash2.ARCHITECTURE:
            fields = {k: v for k, v in fields.items() if k not in DFLASH2_SCALING}
        if "rope_theta" not in fields and isinstance(fields.get("rope_parameters"), dict):
            if "rope_theta" in fields["rope_parameters"]:
                fields["rope_theta"] = fields["rope_parameters"]["rope_theta"]
        fields.setdefault("num_key_value_heads", config.get("num_attention_heads"))
        required = ["target_layer_ids", "mask_token_id"] + [
            f.name for f in cls.__dataclass_fields__.values() if f.default is f.default_factory is MISSING
        ]
        required += list(DFLASH2_FIELDS) if architecture == dflash2.ARCHITECTURE else []
        missing = [k for k in dict.fromkeys(required) if k not in fields]
        if missing:
            raise ValueError(f"drafter config.json is missing {', '.join(missing)}")
        for name, value in fields.items():
            check_field(name, value)
        if fields.get("is_causal") or (architecture == dflash2.ARCHITECTURE and "is_causal" not in fields
                                       and "sliding_attention" in (fields.get("layer_types") or [])):  # fmt: skip
            raise ValueError("causal attention inside the block (is_causal true, or unset with sliding layers in "
                             "DFlash 2) is not supported")  # fmt: skip
        fields.pop("is_causal", None)
        if architecture != dflash2.ARCHITECTURE and any(k in fields for k in DFLASH2_FIELDS):
            raise ValueError(f"selector and convolution fields need architectures [\"{dflash2.ARCHITECTURE}\"]")
        extra = {k: v for k, v in config.items() if k not in fields and k != "dflash_config"}
        return cls(extra=extra, **fields)

    def to_dict(self) -> dict:
        config = dict(self.extra)
        config.setdefault("model_type", "qwen3")
        if self.dflash2:
            config["architectures"] = [dflash2.ARCHITECTURE]
        config.setdefault("architectures", ["DFlashDraftModel"])
        dflash_config = {"target_layer_ids": self.target_layer_ids, "mask_token_id": self.mask_token_id}
        rope_parameters = self.rope_parameters
        if self.dflash2 and rope_parameters is None:  # DFlash 2 checkpoints give RoPE this way
            rope_parameters = {**(self.rope_scaling or {"rope_type": "default"}), "rope_theta": self.rope_theta}
        for name in self.__dataclass_fields__:
            value = rope_parameters if name == "rope_parameters" else getattr(self, name)
            if name in ("target_layer_ids", "mask_token_id", "extra") or OMITTED_AT.get(name, ...) == value:
                continue
            if rope_parameters is not None and name in ("rope_theta", "rope_scaling"):
                continue  # rope_parameters holds them
            if name in DFLASH_FIELDS and (self.dflash2 or name != "block_size"):
                dflash_config[name] = value
            else:
                config[name] = value
        if all(t == "full_attention" for t in self.layer_types):
            config.pop("layer_types")
        if self.dflash2:
            config["is_causal"] = False
        config["dflash_config"] = dflash_config
        return config


# Fields written only where they differ from these (DFlash checkpoints never had them).
OMITTED_AT = {"rope_parameters": None, "output_multiplier": 1.0, "final_logit_softcapping": None,
              "input_embedding_scale": 1.0, "draft_vocab_size": None,
              **{name: None for name in DFLASH2_FIELDS}}  # fmt: skip
