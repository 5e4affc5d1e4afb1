"""A GGUF file's tokenizer, built from its `tokenizer.*` metadata as a `tokenizers` byte-level BPE
and wrapped as transformers' fast tokenizer and mlx-lm's TokenizerWrapper, so that everything
downstream (chat template, stop tokens, streaming detokenizer) works as for an mlx-lm checkpoint."""

import mlx.core as mx
from mlx_lm.tokenizer_utils import BPEStreamingDetokenizer, TokenizerWrapper
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from .errors import DFlashError

# llama.cpp's pre-tokenizer names for byte-level BPE vocabularies: whether each digit is split
# off on its own before GPT-2's regex split (llama.cpp gives these two the same expressions).
DIGITS_SPLIT = {"gpt2": False, "smollm": True}
CONTROL, USER_DEFINED = 3, 4  # GGUF token types (1 is a normal token)
# transformers' special-token arguments and the GGUF metadata that names their ids
SPECIAL_TOKEN_IDS = {"bos_token": "bos", "eos_token": "eos", "unk_token": "unknown", "pad_token": "padding"}


def metadata_scalar(metadata: dict, key: str, default=None):
    """A metadata value as Python has it (`mx.load` gives numbers and booleans as 0-d arrays)."""
    value = metadata.get(key, default)
    return value.item() if isinstance(value, mx.array) else value


def byte_level_bpe(metadata: dict) -> Tokenizer:
    """The `tokenizers` BPE of a GGUF vocabulary (tokenizer.ggml.model 'gpt2')."""
    model, pre = metadata.get("tokenizer.ggml.model"), metadata.get("tokenizer.ggml.pre", "gpt2")
    if model != "gpt2" or pre not in DIGITS_SPLIT:
        raise DFlashError(
            f"GGUF tokenizer '{model}' (pre-tokenizer '{pre}') is not supported; dflash-mlx builds byte-level BPE "
            f"tokenizers ('gpt2') with the pre-tokenizers {', '.join(DIGITS_SPLIT)}"
        )
    tokens = metadata["tokenizer.ggml.tokens"]
    merges = [tuple(merge.split(" ")) for merge in metadata["tokenizer.ggml.merges"]]
    tokenizer = Tokenizer(models.BPE(vocab={token: i for i, token in enumerate(tokens)}, merges=merges))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.pre_tokenizer = (
        pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
        if DIGITS_SPLIT[pre]
        else byte_level
    )
    tokenizer.decoder = decoders.ByteLevel()
    types = metadata["tokenizer.ggml.token_type"].tolist()
    tokenizer.add_tokens([AddedToken(tokens[i], normalized=False) for i, t in enumerate(types) if t == USER_DEFINED])
    tokenizer.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                                  for i, t in enumerate(types) if t == CONTROL])  # fmt: skip
    bos = metadata_scalar(metadata, "tokenizer.ggml.bos_token_id")
    if metadata_scalar(metadata, "tokenizer.ggml.add_bos_token", False) and bos is not None:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{tokens[bos]} $A", pair=f"{tokens[bos]} $A $B", special_tokens=[(tokens[bos], bos)]
        )
    return tokenizer


def gguf_tokenizer(metadata: dict) -> TokenizerWrapper:
    """mlx-lm's TokenizerWrapper around the GGUF's tokenizer, its special tokens and chat template."""
    tokens = metadata.get("tokenizer.ggml.tokens")
    if tokens is None:
        raise DFlashError("GGUF file has no tokenizer (tokenizer.ggml.tokens)")
    special = {}
    for argument, role in SPECIAL_TOKEN_IDS.items():
        token_id = metadata_scalar(metadata, f"tokenizer.ggml.{role}_token_id")
        if token_id is not None:
            special[argument] = tokens[token_id]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=byte_level_bpe(metadata),
        chat_template=metadata.get("tokenizer.chat_template"),
        clean_up_tokenization_spaces=False,
        **special,
    )
    return TokenizerWrapper(tokenizer, BPEStreamingDetokenizer)
