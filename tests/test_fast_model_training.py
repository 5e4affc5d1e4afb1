"""The router's fast model (train/fast_model.py) on a tiny random Llama and its regenerated data:
pruning keeps the chosen layers exactly, the measured layer choice, the saved model loads with
mlx-lm and the fast-model loader, healing lowers the held-out KL, an interrupted run resumes
bit-identically, bad settings are refused in one line."""

import json
import shutil
import subprocess
import sys

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten
from mlx_lm import load as mlx_lm_load

from adapters import adapter_for
from adapters.errors import DFlashError
from adapters.routing import load_fast_model
from tests.helpers import REPO, make_tiny_data, metrics, rounding_bound, weights
from train.data import load_sequences
from train.fast_model import (
    FastModelConfig,
    block_drop_candidates,
    distillation_metrics,
    heal,
    load_llama_target,
    prune,
    save_fast_model,
    shipped_embedding,
    student_of,
)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return make_tiny_data(tmp_path_factory.mktemp("fast-model"), "llama")


def tiny_config(target, data_dir, out, **overrides) -> FastModelConfig:
    settings = dict(target=str(target), data=str(data_dir), out=str(out), layers=2, eval_sequences=4,
                    selection_sequences=4, batch_size=4, epochs=2, lr=3e-3, save_every=2, eval_every=1000,
                    wandb="disabled")  # fmt: skip
    return FastModelConfig(**{**settings, **overrides})


def test_pruning_keeps_the_chosen_layers_exactly(llama):
    target, _ = load_llama_target(str(llama[0]))
    pruned = prune(target, [0, 3, 5])
    mx.eval(pruned.parameters())
    kept = dict(tree_flatten(pruned.parameters()))
    source = dict(tree_flatten(target.parameters()))
    for name, value in kept.items():
        if name.startswith("model.layers."):
            index, rest = name[len("model.layers.") :].split(".", 1)
            name = f"model.layers.{[0, 3, 5][int(index)]}.{rest}"
        assert mx.array_equal(value, source[name]).item(), name
    assert len(kept) == len(source) - 3 * len(dict(tree_flatten(target.model.layers[0].parameters())))
    assert block_drop_candidates(6, 2) == [[4, 5], [0, 5], [0, 1]]
    for keep in ([], [3, 1], [2, 2], [0, 6], [-1, 2]):
        with pytest.raises(DFlashError, match="increasing indices in 0..5"):
            prune(target, keep)


def test_the_distillation_figures_of_the_target_against_itself(llama):
    """All layers kept: no divergence, the same top tokens, and the cross-entropy of the regenerated
    (greedy) tokens is the target's own -log max p at the positions that predicted them."""
    target, _ = load_llama_target(str(llama[0]))
    sequences = load_sequences(str(llama[1]))[:4]
    [measured] = distillation_metrics(target, [prune(target, list(range(6)))], sequences)
    own = []
    for sequence in sequences:
        logits = target(mx.array([sequence.tokens]))[0, len(sequence.prompt_ids) - 1 : -1]
        own.append(-(logits - mx.logsumexp(logits, axis=-1, keepdims=True)).max(axis=-1))
    own = mx.concatenate(own)
    bound = rounding_bound(adapter_for(target), len(sequences[-1].tokens), own)
    assert measured["agreement"] == 1.0 and abs(measured["kl"]) <= bound
    assert abs(measured["ce"] - own.mean().item()) <= bound


def test_the_saved_fast_model_loads_with_mlx_lm_and_the_fast_model_loader(llama, tmp_path):
    target, tokenizer = load_llama_target(str(llama[0]))
    embedding = shipped_embedding(target.model.embed_tokens, 4, 64)
    student = student_of(target, [0, 5], embedding)
    saved = save_fast_model(student, embedding, tokenizer, tmp_path / "fast-model", 8, 32)

    stored = weights(saved)
    assert stored["model.embed_tokens.scales"].dtype == mx.bfloat16
    assert stored["model.layers.1.mlp.down_proj.weight"].dtype == mx.uint32  # quantized
    model, loaded_tokenizer = mlx_lm_load(str(saved))
    assert model.args.num_hidden_layers == 2 and loaded_tokenizer.eos_token_ids == tokenizer.eos_token_ids

    fast = load_fast_model(str(saved))
    # The embedding the student trained with is the one the loader computes with, to the bit.
    assert mx.array_equal(fast.model.model.embed_tokens.weight, student.model.embed_tokens.weight).item()
    assert fast.adapter.stop_tokens(fast.tokenizer) == adapter_for(target).stop_tokens(tokenizer)
    messages = [{"role": "user", "content": "hi there!"}]
    assert fast.tokenizer.apply_chat_template(messages, add_generation_prompt=True) == tokenizer.apply_chat_template(
        messages, add_generation_prompt=True
    )
    # Every other weight is the student's rounded to bfloat16, the layers' quantized from there.
    student_weights = dict(tree_flatten(student.parameters()))
    for name, value in tree_flatten(fast.model.parameters()):
        expected = student_weights[name].astype(mx.bfloat16)
        if name.startswith("model.layers.") and name.endswith("proj.weight"):
            quantized, scales, biases = mx.quantize(expected, group_size=32, bits=8)
            expected = mx.dequantize(quantized, scales.astype(mx.float32), biases.astype(mx.float32), 32, 8)
        elif name == "model.embed_tokens.weight":
            continue
        assert mx.array_equal(value, expected.astype(mx.float32)).item(), name

@pytest.mark.slow  # a whole healing run
def test_healing_lowers_the_heldout_kl_from_the_measured_choice(llama, tmp_path):
    target, data_dir = llama
    saved = heal(tiny_config(target, data_dir, tmp_path / "run"))

    pruning = json.loads((tmp_path / "run" / "pruning.json").read_text())
    assert [c["keep"] for c in pruning["candidates"]] == block_drop_candidates(6, 2)
    assert pruning["keep"] == min(pruning["candidates"], key=lambda c: c["kl"])["keep"]
    history = metrics(tmp_path / "run")
    assert history[0]["step"] == 0 and history[-1]["step"] == 2 * (20 // 4)
    before, after = history[0]["heldout_kl"], history[-1]["heldout_kl"]
    assert after < 0.8 * before, (before, after)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["keep"] == pruning["keep"] and summary["bytes"] > 0
    assert summary["heldout_shipped_kl"] < before
    # The held-out figures are the same computation as the selection's: the same pruned model on
    # other sequences; the first candidate's KL is a KL (non-negative).
    assert all(c["kl"] >= 0 and 0 <= c["agreement"] <= 1 for c in pruning["candidates"])
    assert load_fast_model(str(saved)).adapter.num_layers == 2


@pytest.mark.slow  # a whole healing run
def test_an_interrupted_run_resumes_bit_identically(llama, tmp_path):
    target, data_dir = llama
    reference = tmp_path / "reference"
    heal(tiny_config(target, data_dir, reference))
    run = tmp_path / "interrupted"
    heal(tiny_config(target, data_dir, run, max_steps=3))  # stopped after 3 steps, checkpoint at 2 and 3
    (run / "checkpoints" / "step_00000003").rename(run / "checkpoints" / "step_00000003.partial")  # as if killed
    with pytest.raises(DFlashError, match="other settings .*lr"):
        heal(tiny_config(target, data_dir, run, lr=1e-3))
    heal(tiny_config(target, data_dir, run))

    steps = 2 * (20 // 4)
    assert [m["step"] for m in metrics(run)] == list(range(steps + 1))
    assert [m["kl"] for m in metrics(run)[1:]] == [m["kl"] for m in metrics(reference)[1:]]
    last = f"checkpoints/step_{steps:08d}"
    final, expected = weights(run / last), weights(reference / last)
    assert final.keys() == expected.keys() and all(mx.array_equal(final[k], expected[k]).item() for k in expected)
    shipped, expected = weights(run / "fast-model"), weights(reference / "fast-model")
    assert all(mx.array_equal(shipped[k], expected[k]).item() for k in expected)

    early = tmp_path / "killed-before-its-first-checkpoint"
    heal(tiny_config(target, data_dir, early, max_steps=1))
    shutil.rmtree(early / "checkpoints")
    heal(tiny_config(target, data_dir, early))
    assert [m["step"] for m in metrics(early)] == list(range(steps + 1))
    assert [m["kl"] for m in metrics(early)[1:]] == [m["kl"] for m in metrics(reference)[1:]]


@pytest.mark.slow  # starts a Python process
def test_bad_settings_are_refused_in_one_line(llama, tmp_path):
    target, data_dir = llama
    with pytest.raises(DFlashError, match="cannot keep 6 of the target's 6 layers"):
        heal(tiny_config(target, data_dir, tmp_path / "a", layers=6))
    with pytest.raises(DFlashError, match="fewer than 100"):
        heal(tiny_config(target, data_dir, tmp_path / "b", sequences=100))
    with pytest.raises(DFlashError, match="3 layers to keep"):
        heal(tiny_config(target, data_dir, tmp_path / "c", keep=[0, 1, 5]))
    command = [sys.executable, "-m", "train.fast_model", "--target", str(target), "--data", str(data_dir),
               "--out", str(tmp_path / "d"), "--embedding-bits", "7", "--wandb", "disabled"]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "python -m train.fast_model: error: cannot quantize to 7 bits; choose one of 2, 3, 4, 5, 6, 8"
    ]
