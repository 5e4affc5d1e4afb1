"""The training loop on tiny targets: the loss falls, the drafter it writes decodes
losslessly, a SIGKILLed run resumes bit-identically from checkpoints that are drafters
themselves, precomputed hidden states train the same."""

import json
import signal
import subprocess
import sys
import time
from dataclasses import replace

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten

import dflash
from adapters.errors import DFlashError
from dflash.generate import encode_prompt, generate
from dflash.model import DFlashDraftModel, DraftConfig
from tests.helpers import REPO, make_tiny_data, metrics, tiny_config, weights
from train.data import load_sequences, response_vocabulary
from train.dflash_train import copy_target_layers, train
from train.hidden_states import precompute

pytestmark = pytest.mark.slow  # whole training runs


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return make_tiny_data(tmp_path_factory.mktemp("llama"), "llama")


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_loss_falls_and_the_drafter_decodes_losslessly(family, llama, tmp_path, monkeypatch):
    target, data_dir = llama if family == "llama" else make_tiny_data(tmp_path, family)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    wandb = "disabled" if family == "llama" else "offline"
    config = tiny_config(target, data_dir, tmp_path / "run", wandb=wandb, save_dtype="bfloat16")
    drafter = train(config)

    losses = [m["loss"] for m in metrics(tmp_path / "run")]
    assert len(losses) == 3 * (22 // 4)
    assert sum(losses[-3:]) / 3 < 0.5 * losses[0]
    assert "tau" in metrics(tmp_path / "run")[-1]
    if family == "qwen3":
        assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))

    # The drafter is in the published format and the real decode loop reproduces greedy decoding.
    assert all(w.dtype == mx.bfloat16 for w in weights(drafter).values())
    model, tokenizer = dflash.load(str(target), str(drafter))
    assert model.draft.config.target_layer_ids == model.adapter.default_layer_ids(2)
    prompt = "Speculative decoding drafts a block"
    result = dflash.generate(model, tokenizer, prompt, max_tokens=30, chat=True)
    prompt_ids = encode_prompt(model.adapter, tokenizer, prompt, chat=True)
    assert result.tokens == generate(model.adapter, tokenizer, prompt_ids, 30).tokens


def test_sigkill_then_resume_is_bit_identical(llama, tmp_path):
    target, data_dir = llama
    steps = 3 * (22 // 4)
    reference = train(tiny_config(target, data_dir, tmp_path / "reference", save_every=3))

    run = tmp_path / "killed"
    command = [sys.executable, "-m", "train.cli", "run", "--target", str(target), "--data", str(data_dir),
               "--out", str(run), "--draft-layers", "2", "--block-size", "8", "--anchors", "64", "--epochs", "3",
               "--batch-size", "4", "--lr", "3e-3", "--eval-prompts", "2", "--eval-every", "1000",
               "--eval-max-tokens", "24", "--wandb", "disabled", "--save-every", "3"]  # fmt: skip
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not (run / "checkpoints" / "step_00000003").exists() and process.poll() is None:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    done = len(metrics(run))
    assert 3 <= done < steps, "the run should have been killed part-way"
    (run / "checkpoints" / "step_00000099.partial").mkdir()  # as if killed while saving

    with pytest.raises(DFlashError, match="other settings .*lr"):
        train(tiny_config(target, data_dir, run, save_every=3, lr=1e-3))
    resumed = train(tiny_config(target, data_dir, run, save_every=3))
    assert [m["step"] for m in metrics(run)] == list(range(1, steps + 1))
    assert [m["loss"] for m in metrics(run)] == [m["loss"] for m in metrics(tmp_path / "reference")]
    final, expected = weights(resumed), weights(reference)
    assert all(mx.array_equal(final[k], expected[k]).item() for k in expected)
    assert not (run / "checkpoints" / "step_00000099.partial").exists()
    # A checkpoint is a drafter in the published format, beside its training state.
    last = run / "checkpoints" / f"step_{steps:08d}"
    checkpoint_weights = dict(tree_flatten(dflash.load_draft(str(last)).parameters()))
    assert all(mx.array_equal(checkpoint_weights[k], expected[k]).item() for k in expected)


def test_precomputed_hidden_states_train_the_same(llama, tmp_path):
    target, data_dir = llama
    config = tiny_config(target, data_dir, tmp_path / "on-the-fly", max_steps=3, eval_prompts=0)
    on_the_fly = train(config)
    shards = precompute(str(target), str(data_dir), str(tmp_path / "hidden"), 2, None, config.max_length, shard_size=8)
    from_shards = train(replace(config, out=str(tmp_path / "from-shards"), hidden_states=str(shards)))
    a, b = weights(on_the_fly), weights(from_shards)
    assert all(mx.array_equal(a[k], b[k]).item() for k in a)

    with pytest.raises(DFlashError, match="other settings .*target_layer_ids"):
        train(replace(config, out=str(tmp_path / "bad"), hidden_states=str(shards), target_layer_ids=[1, 2]))
    with pytest.raises(DFlashError, match=r"target layer ids \[1, 9\]; the target has layers 0\.\.5"):
        precompute(str(target), str(data_dir), str(tmp_path / "bad-hidden"), 2, [1, 9], config.max_length)


def test_the_first_sequences_precompute_and_train_alone(llama, tmp_path):
    target, data_dir = llama
    config = tiny_config(target, data_dir, tmp_path / "on-the-fly", max_steps=2, eval_prompts=2, sequences=10)
    on_the_fly = train(config)
    shards = precompute(str(target), str(data_dir), str(tmp_path / "hidden"), 2, None, config.max_length,
                        shard_size=4, sequences=10)  # fmt: skip
    assert len(list(shards.glob("shard_*.safetensors"))) == 3  # the sequences past the 10th are not computed
    from_shards = train(replace(config, out=str(tmp_path / "from-shards"), hidden_states=str(shards)))
    a, b = weights(on_the_fly), weights(from_shards)
    assert all(mx.array_equal(a[k], b[k]).item() for k in a)
    with pytest.raises(DFlashError, match="is missing from"):  # all sequences need shards the first 10 lack
        train(replace(config, out=str(tmp_path / "all"), hidden_states=str(shards), sequences=None))
    with pytest.raises(DFlashError, match="usable sequences, fewer than 10000"):
        train(replace(config, out=str(tmp_path / "too-many"), sequences=10000))


def test_a_hybrid_target_regenerates_precomputes_and_trains(tmp_path):
    """Qwen3.5-style target (GatedDeltaNet layers between attention layers): regeneration, hidden-state
    shards and training run as for a dense target, and the drafter decodes losslessly."""
    target, data_dir = make_tiny_data(tmp_path, "qwen3_5")
    config = tiny_config(target, data_dir, tmp_path / "run")
    shards = precompute(str(target), str(data_dir), str(tmp_path / "hidden"), 2, None, config.max_length, shard_size=8)
    drafter = train(replace(config, hidden_states=str(shards)))
    losses = [m["loss"] for m in metrics(tmp_path / "run")]
    assert sum(losses[-3:]) / 3 < 0.5 * losses[0]

    model, tokenizer = dflash.load(str(target), str(drafter))
    prompt_ids = encode_prompt(model.adapter, tokenizer, "Speculative decoding drafts a block", chat=True)
    result = dflash.generate(model, tokenizer, prompt_ids, max_tokens=30)
    assert result.tokens == generate(model.adapter, tokenizer, prompt_ids, 30).tokens


def test_a_draft_vocabulary_trains_and_decodes_losslessly(llama, tmp_path):
    target, data_dir = llama
    drafter = train(tiny_config(target, data_dir, tmp_path / "run", draft_vocab=40, save_dtype="bfloat16"))
    losses = [m["loss"] for m in metrics(tmp_path / "run")]
    assert sum(losses[-3:]) / 3 < 0.5 * losses[0]
    sequences = load_sequences(str(data_dir), tiny_config(target, data_dir, "").max_length)
    expected = response_vocabulary(sequences[:-2], 40)  # the training sequences' (2 held out)
    stored = weights(drafter)["draft_vocab"]
    assert stored.dtype == mx.int32 and stored.tolist() == expected.tolist() and len(expected) == 40
    assert json.loads((drafter / "config.json").read_text())["dflash_config"]["draft_vocab_size"] == 40
    model, tokenizer = dflash.load(str(target), str(drafter))
    prompt_ids = encode_prompt(model.adapter, tokenizer, "Speculative decoding drafts a block", chat=True)
    plain = generate(model.adapter, tokenizer, prompt_ids, 30)
    assert dflash.generate(model, tokenizer, prompt_ids, 30).tokens == plain.tokens
    with pytest.raises(DFlashError, match="other settings .*draft_vocab"):  # a run is resumed as it started
        train(tiny_config(target, data_dir, tmp_path / "run", max_steps=2, eval_prompts=0))


def test_init_from_target_starts_the_draft_layers_as_the_targets_last(llama, tmp_path):
    target, data_dir = llama
    model, _ = dflash.load(str(target), str(train(tiny_config(target, data_dir, tmp_path / "run", max_steps=1,
                                                               eval_prompts=0, init_from_target=True))))  # fmt: skip
    draft = DFlashDraftModel(model.draft.config)
    copy_target_layers(draft, model.adapter)
    for layer, source in zip(draft.layers, model.adapter.layers[-2:]):
        own, theirs = dict(tree_flatten(layer.parameters())), dict(tree_flatten(source.parameters()))
        for name in ("self_attn.q_proj.weight", "self_attn.o_proj.weight", "mlp.down_proj.weight", "input_layernorm.weight"):
            assert mx.array_equal(own[name], theirs[name]).item()
        assert mx.array_equal(layer.self_attn.q_norm.weight, mx.ones_like(layer.self_attn.q_norm.weight)).item()
    with pytest.raises(DFlashError, match="other settings .*init_from_target"):  # a run is resumed as it started
        train(tiny_config(target, data_dir, tmp_path / "run", max_steps=2, eval_prompts=0))
    too_deep = DraftConfig(**{**vars(model.draft.config), "num_hidden_layers": 7, "layer_types": None})
    with pytest.raises(DFlashError, match="7 draft layers, the target has 6"):
        copy_target_layers(DFlashDraftModel(too_deep), model.adapter)
