"""Byte-level BPE tokenizer for the offline default models, saved in the Hugging Face layout.

`mlx_lm.load` and `transformers.AutoTokenizer` read the saved directory like a hub model's:
tokenizer.json (the `tokenizers` model), tokenizer_config.json (special tokens and a Llama-3
style Jinja chat template) and special_tokens_map.json. Generation stops at `<|eot_id|>` (the
tokenizer's eos_token) or `<|end_of_text|>`; the model's config.json lists both as eos_token_id.
`<|mask|>` is reserved for the DFlash drafter's mask_token_id and never occurs in training text.
"""

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

BOS = "<|begin_of_text|>"
END_OF_TEXT = "<|end_of_text|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
EOT = "<|eot_id|>"
MASK = "<|mask|>"
SPECIAL_TOKENS = [BOS, END_OF_TEXT, START_HEADER, END_HEADER, EOT, MASK]

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

# Llama 3's pre-tokenization regex. Unlike GPT-2's, it splits a newline run off the same way
# whatever follows, so the "\n\n" that ends a generation prompt is the token it was in training
# (GPT-2's regex gives "\n\n" at the end of a string but "\n", "\n" before "def").
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def format_chat(prompt: str, response: str) -> str:
    """One user/assistant exchange exactly as CHAT_TEMPLATE renders it (the training text)."""
    return (
        f"{BOS}{START_HEADER}user{END_HEADER}\n\n{prompt}{EOT}"
        f"{START_HEADER}assistant{END_HEADER}\n\n{response}{EOT}"
    )


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096) -> Tokenizer:
    """Byte-level BPE (Llama 3 pre-tokenization) with SPECIAL_TOKENS as ids 0..5.

    Plain `encode(text)` prepends BOS like Llama 3's tokenizer; chat text already carries it
    from the template and is encoded with add_special_tokens=False.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tokenizer.token_to_id(BOS))]
    )
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, out_dir: Path, model_max_length: int) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    special = {"bos_token": BOS, "eos_token": EOT, "pad_token": END_OF_TEXT, "mask_token": MASK}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "chat_template": CHAT_TEMPLATE,
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def eos_token_ids(tokenizer: Tokenizer) -> list[int]:
    return [tokenizer.token_to_id(EOT), tokenizer.token_to_id(END_OF_TEXT)]
