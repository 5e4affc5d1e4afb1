"""The offline default models' pipeline: corpus determinism and held-out exclusion, the tokenizer
in the Hugging Face layout as mlx-lm reads it, and pretraining (loss falls, resume is exact,
the exported directory loads with mlx_lm.load)."""

import json
import shutil
import sysconfig
from pathlib import Path

import mlx.core as mx
import mlx_lm
import numpy as np
import pytest
from mlx.utils import tree_flatten
from mlx_lm.models.llama import ModelArgs
from mlx_lm.tokenizer_utils import load as load_tokenizer

from train import checkpoint
from train.offline_default.corpus import build_corpus, heldout_prompts, load_heldout_prompts
from train.offline_default.pretrain import PretrainConfig, pretrain, save_model, token_stream, tokenize
from train.offline_default.tokenizer import (
    CHAT_TEMPLATE, END_OF_TEXT, EOT, MASK, eos_token_ids, format_chat, save_tokenizer, train_tokenizer,
)  # fmt: skip

STDLIB = Path(sysconfig.get_paths()["stdlib"])


@pytest.fixture(scope="module")
def small_stdlib(tmp_path_factory):
    """A few stdlib packages and modules, enough for a corpus with held-out modules."""
    root = tmp_path_factory.mktemp("stdlib")
    for package in ("json", "email", "http", "urllib", "logging", "concurrent", "wsgiref"):
        shutil.copytree(STDLIB / package, root / package, ignore=shutil.ignore_patterns("__pycache__", "test*"))
    for module in ("textwrap", "shlex", "fractions", "glob", "fnmatch", "bisect", "heapq", "colorsys", "csv"):
        shutil.copy(STDLIB / f"{module}.py", root)
    return str(root)


@pytest.fixture(scope="module")
def small_corpus(small_stdlib):
    return build_corpus(seed=0, heldout_module_fraction=0.2, heldout_topics=5, stdlib_dir=small_stdlib)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, small_corpus):
    out = tmp_path_factory.mktemp("tokenizer")
    texts = [format_chat(p, r) for p, r in zip(small_corpus["train"]["prompt"], small_corpus["train"]["response"])]
    save_tokenizer(train_tokenizer(texts, vocab_size=512), out, model_max_length=64)
    return out


def test_corpus_is_deterministic_and_holds_out_whole_sources(small_stdlib, small_corpus):
    again = build_corpus(seed=0, heldout_module_fraction=0.2, heldout_topics=5, stdlib_dir=small_stdlib)
    assert again["train"]["id"] == small_corpus["train"]["id"]
    assert again["heldout"]["id"] == small_corpus["heldout"]["id"]
    other_seed = build_corpus(seed=1, heldout_module_fraction=0.2, heldout_topics=5, stdlib_dir=small_stdlib)
    assert set(other_seed["heldout"]["source"]) != set(small_corpus["heldout"]["source"])

    train, heldout = small_corpus["train"], small_corpus["heldout"]
    assert set(train["kind"]) == set(heldout["kind"]) == {"function", "module", "topic"}
    assert not set(train["source"]) & set(heldout["source"])
    assert not set(train["prompt"]) & set(heldout["prompt"])
    assert not set(train["response"]) & set(heldout["response"])


def test_heldout_prompts_mix_code_and_prose_from_heldout_only(small_corpus):
    prompts = heldout_prompts(small_corpus["heldout"], seed=0, n_functions=6, n_modules=2, n_topics=4)
    assert prompts == heldout_prompts(small_corpus["heldout"], seed=0, n_functions=6, n_modules=2, n_topics=4)
    kinds = [p["id"].split(":")[0] for p in prompts]
    assert kinds.count("function") == 6 and kinds.count("topic") == 4 and "module" in kinds
    assert {p["id"] for p in prompts} <= set(small_corpus["heldout"]["id"])


@pytest.mark.slow
def test_shipped_heldout_prompts_are_reproducible_and_never_trained_on():
    corpus = build_corpus(seed=0)
    shipped = load_heldout_prompts()
    assert shipped == heldout_prompts(corpus["heldout"], seed=0)
    assert 30 <= len(shipped) <= 50
    assert not {p["prompt"] for p in shipped} & set(corpus["train"]["prompt"])


def test_tokenizer_loads_in_mlx_lm_with_chat_template_and_eos(tokenizer_dir, small_corpus):
    tokenizer = load_tokenizer(Path(tokenizer_dir))
    text = small_corpus["heldout"][0]["response"]
    ids = tokenizer.encode(text)
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == text

    assert tokenizer.chat_template == CHAT_TEMPLATE
    exchange = [{"role": "user", "content": "Write it."}, {"role": "assistant", "content": "def f():\n    pass"}]
    assert tokenizer.apply_chat_template(exchange, tokenize=False) == format_chat("Write it.", "def f():\n    pass")
    prompt = tokenizer.apply_chat_template(exchange[:1], tokenize=False, add_generation_prompt=True)
    full = format_chat("Write it.", "def f():\n    pass")
    assert full.startswith(prompt)
    # The generation prompt must tokenize as it does inside the training text (the "\n\n" after
    # the header), or the model sees a token at inference it never saw in that place.
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
    assert tokenizer.encode(full, add_special_tokens=False)[: len(prompt_ids)] == prompt_ids

    assert tokenizer.eos_token == EOT
    assert tokenizer.convert_tokens_to_ids(EOT) in tokenizer.eos_token_ids
    mask_id = tokenizer.convert_tokens_to_ids(MASK)
    assert mask_id is not None and mask_id not in tokenizer.encode(text)


def tiny_args(vocab_size: int) -> ModelArgs:
    return ModelArgs(
        model_type="llama", hidden_size=32, num_hidden_layers=2, intermediate_size=64, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-5, vocab_size=vocab_size, max_position_embeddings=64,
    )  # fmt: skip


@pytest.fixture(scope="module")
def streams(tokenizer_dir, small_corpus):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    train, heldout = small_corpus["train"], small_corpus["heldout"]
    return (
        tokenizer,
        token_stream(tokenize(train, tokenizer), train["kind"], seed=0, kind_repeats={"topic": 2}),
        token_stream(tokenize(heldout, tokenizer), heldout["kind"], seed=0),
    )


@pytest.mark.slow
def test_pretraining_lowers_the_loss_and_exports_an_mlx_lm_model(tmp_path, streams, tokenizer_dir):
    tokenizer, train_stream, heldout_stream = streams
    args = tiny_args(tokenizer.get_vocab_size())
    cfg = PretrainConfig(steps=80, seq_len=64, batch_size=4, learning_rate=3e-3, warmup_steps=4, eval_every=80, eval_batches=2)
    model, summary = pretrain(args, cfg, train_stream, heldout_stream, tmp_path / "run")
    first_loss = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    assert summary["train_loss_last_50_steps"] < first_loss - 0.5
    assert summary["heldout_loss"] < first_loss - 0.5

    save_model(model, args, tmp_path / "model", tokenizer_dir, eos_token_ids(tokenizer), {"pretrain_config": {}})
    loaded, wrapper = mlx_lm.load(str(tmp_path / "model"))
    assert wrapper.eos_token_ids == {tokenizer.token_to_id(EOT), tokenizer.token_to_id(END_OF_TEXT)}
    saved = dict(tree_flatten(loaded.parameters()))
    for name, value in tree_flatten(model.parameters()):
        assert saved[name].dtype == mx.bfloat16
        assert mx.allclose(saved[name].astype(mx.float32), value, atol=1e-2).item(), name


@pytest.mark.slow
def test_an_interrupted_run_resumes_exactly(tmp_path, monkeypatch, streams):
    tokenizer, train_stream, heldout_stream = streams
    args = tiny_args(tokenizer.get_vocab_size())
    cfg = PretrainConfig(steps=6, seq_len=32, batch_size=2, warmup_steps=2, eval_every=100, eval_batches=1, checkpoint_every=3)
    straight, _ = pretrain(args, cfg, train_stream, heldout_stream, tmp_path / "straight")

    save_checkpoint = checkpoint.save_checkpoint

    def save_then_crash(*a, **kw):
        save_checkpoint(*a, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        pretrain(args, cfg, train_stream, heldout_stream, tmp_path / "resumed")
    monkeypatch.undo()
    resumed, summary = pretrain(args, cfg, train_stream, heldout_stream, tmp_path / "resumed")
    assert summary["resumed_from_step"] == 3
    expected = dict(tree_flatten(straight.parameters()))
    for name, value in tree_flatten(resumed.parameters()):
        np.testing.assert_allclose(np.array(value), np.array(expected[name]), rtol=1e-5, atol=1e-6, err_msg=name)

    with pytest.raises(ValueError, match="other settings"):
        pretrain(args, PretrainConfig(**{**cfg.__dict__, "learning_rate": 1.0}), train_stream, heldout_stream, tmp_path / "resumed")
