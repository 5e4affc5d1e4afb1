"""The commands (`dflash-mlx`, `dflash-serve`, `dflash-train`, `dflash-train-router`, `dflash-eval`,
`python -m train.fast_model`, `python -m eval.forward`, `python -m eval.blas`) given bad input,
interrupted or cut off: one line and exit status 2 for bad input (argparse's own errors included),
no traceback, and clean exits for ^C (130), a reader gone (141), a closed stdin and a startup that
fails to load."""

import json
import os
import re
import signal
import subprocess
import sys

import pytest

from adapters.errors import DFlashError
from adapters.routing import EXPERT
from dflash import generate, load
from dflash.cli import build_parser
from dflash.cli import main as cli_main
from dflash.engine import Engine, Request
from dflash.server.cli import main as serve_main
from eval.blas import main as blas_main
from eval.cli import main as eval_main
from eval.forward import main as forward_main
from tests.helpers import draft_config, save_random_draft, save_target, target_config
from train.cli import main as train_main
from train.fast_model import main as fast_model_main
from train.router import main as router_main

WINDOW = 256


@pytest.fixture(scope="module")
def pair(make_pair):
    target, draft = make_pair("llama", max_position_embeddings=WINDOW)
    return ["--target-model", target, "--draft-model", draft]


CASES = [
    (["--seed", "-1", "--temperature", "0.7"], "seed must be a whole number from 0 to 2**64 - 1, got -1"),
    (["--seed", str(2**70), "--temperature", "0.7"], f"seed must be a whole number from 0 to 2**64 - 1, got {2**70}"),
    (["--temperature", "inf"], "temperature must be 0 (greedy) or a finite number above it, got inf"),
    (["--temperature", "nan"], "temperature must be 0 (greedy) or a finite number above it, got nan"),
    (["--top-p", "inf", "--temperature", "1"], "top-p must be in (0, 1], got inf"),
    (["--block-size", "0"], "block size must be between 2 and the drafter's 16, got 0"),
    (["--block-size", "1"], "block size must be between 2 and the drafter's 16, got 1"),
    (["--block-size", "99"], "block size must be between 2 and the drafter's 16, got 99"),
    (["--draft-window", "0"], "the drafter's context window must be at least 1 position, got 0"),
    (["--max-new-tokens", "0"], "max tokens must be at least 1, got 0"),
    (["--prompt", "  "], "the prompt is empty"),
    (["--prompt", os.fsdecode(b"ab\xff")], "the prompt is not valid Unicode text: a lone surrogate at character 2"),
    (["--prompt", "x " * WINDOW, "--no-chat"],
     f"the prompt has {2 * WINDOW} tokens; the target's context window is {WINDOW}, with room for a prompt of at most "
     f"{WINDOW - 1}"),
]


@pytest.mark.parametrize("argv, message", CASES, ids=[" ".join(case[0])[:30] for case in CASES])
def test_bad_generation_input_is_one_line_and_rc_2(capsys, pair, argv, message):
    assert cli_main([*pair, "--max-new-tokens", "4", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"dflash-mlx: error: {message}\n" and captured.out == ""


def test_generation_stops_at_the_context_window_and_says_so(capsys, pair):
    prompt = "the quick brown fox " * 9
    assert cli_main([*pair, "--no-chat", "--prompt", prompt, "--max-new-tokens", str(10**12), "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["prompt_tokens"] + report["generated_tokens"] == WINDOW
    assert captured.err == (f"dflash-mlx: stopped at the context window of {WINDOW} tokens, after "
                            f"{report['generated_tokens']} of the {10**12} new tokens asked for\n")  # fmt: skip


@pytest.mark.parametrize("settings, message", [
    (dict(seed=-1), "seed must be a whole number from 0 to 2**64 - 1, got -1"),
    (dict(max_tokens=0), "max tokens must be at least 1, got 0"),
    (dict(block_size=0), "block size must be between 2 and the drafter's 16, got 0"),
    (dict(prompt=[999999]), "token id 999999 is not in the target's vocabulary (0 to 511)"),
    (dict(prompt="a\ud800"), "the prompt is not valid Unicode text: a lone surrogate at character 1"),
    (dict(route="nowhere"), "unknown route 'nowhere'; choose one of auto, fast, expert"),
])  # fmt: skip
def test_the_python_api_gives_the_same_messages(pair, settings, message):
    engine = Engine(pair[1], pair[3])
    with pytest.raises(DFlashError) as error:
        engine.prepare(Request(**{"prompt": "hi", **settings}), EXPERT)
    assert str(error.value) == message
    if "seed" in settings or "prompt" in settings:  # the generation functions check them too
        model, tokenizer = load(pair[1], pair[3])
        with pytest.raises(DFlashError, match=re.escape(message)):
            generate(model, tokenizer, settings.get("prompt", "hi"), 4, seed=settings.get("seed"))


@pytest.mark.parametrize("port", ["99999", "-1", "65536", "http"])
def test_a_bad_port_is_an_argparse_error(capsys, port):
    with pytest.raises(SystemExit) as exit_:
        serve_main(["--port", port])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "argument --port" in err and "Traceback" not in err


@pytest.mark.parametrize("size", ["0", "-1", "nan", "inf"])
def test_a_bad_body_limit_is_an_argparse_error(capsys, size):
    with pytest.raises(SystemExit) as exit_:
        serve_main(["--max-body-mb", size])
    assert exit_.value.code == 2 and "argument --max-body-mb: a size in megabytes is a number above 0" in capsys.readouterr().err


def test_a_server_block_size_of_0_stops_it_at_startup(capsys, pair):
    assert serve_main(["--port", "0", *pair, "--fast-model", pair[1], "--router", "guardrails", "--block-size", "0"]) == 2
    assert capsys.readouterr().err == "dflash-serve: error: block size must be between 2 and the drafter's 16, got 0\n"


@pytest.mark.parametrize("field, value, kind", [("hidden_size", "64", "a whole number"),
                                               ("vocab_size", 512.5, "a whole number"),
                                               ("rms_norm_eps", "small", "a number")])  # fmt: skip
def test_a_target_config_field_of_the_wrong_type_is_named(capsys, tmp_path, field, value, kind):
    config = target_config("llama")
    save_random_draft(tmp_path / "draft", draft_config(config))
    save_target(tmp_path / "target", config)
    (tmp_path / "target" / "config.json").write_text(json.dumps({**config, field: value}))
    assert cli_main(["--target-model", str(tmp_path / "target"), "--draft-model", str(tmp_path / "draft")]) == 2
    assert capsys.readouterr().err == (f"dflash-mlx: error: target config {tmp_path / 'target' / 'config.json'}: "
                                       f"{field} must be {kind}, got {value!r}\n")  # fmt: skip


def test_train_help_writes_the_drafter_command_argparse_takes(capsys):
    with pytest.raises(SystemExit):
        train_main(["--help"])
    help_text = capsys.readouterr().out
    assert "dflash-mlx --target-model TARGET --draft-model RUN/drafter" in help_text and "--draft RUN" not in help_text
    args = build_parser().parse_args(["--target-model", "TARGET", "--draft-model", "RUN/drafter"])
    assert args.draft_model == "RUN/drafter"


def run(argv, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=120, **kwargs)


@pytest.mark.slow
def test_a_load_error_at_server_startup_exits_2_with_one_line_every_time(pair):
    """It aborted (rc 134, 'terminate called without an active exception') in 7 of 8 runs."""
    argv = ["-m", "dflash.server", "--port", "0", *pair, "--fast-model", pair[1], "--router-probe", "/nonexistent"]
    for _ in range(2):
        done = run(argv)
        assert done.returncode == 2 and done.stderr.splitlines()[-1].startswith("dflash-serve: error: router probe")
        assert "terminate" not in done.stderr and "Traceback" not in done.stderr


# `dflash-mlx` taking a second for every step after the first: a tiny model would otherwise finish
# its 200 tokens before the ^C or the closed pipe reaches it, and exit 0.
ONE_STEP_A_SECOND = """
import importlib, sys, time
from dflash.cli import main
responder = importlib.import_module("dflash.generate").Responder
respond = responder.__call__
def one_step_a_second(self, committed):
    if self.started:
        time.sleep(1)
    return respond(self, committed)
responder.__call__ = one_step_a_second
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_interrupt_and_broken_pipe_exit_cleanly(pair):
    command = [sys.executable, "-c", ONE_STEP_A_SECOND, *pair, "--no-chat", "--max-new-tokens", "200", "--stream"]
    interrupted = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    interrupted.stdout.read(1)  # generating
    interrupted.send_signal(signal.SIGINT)
    _, err = interrupted.communicate(timeout=60)
    assert interrupted.returncode == 130 and err.splitlines()[-1] == "dflash-mlx: interrupted" and "Traceback" not in err

    cut = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    cut.stdout.read(1)
    cut.stdout.close()  # as `| head -c1` does
    err = cut.stderr.read().decode()
    assert cut.wait(60) == 141 and err == ""


@pytest.mark.slow
def test_a_closed_stdin_does_not_take_the_place_of_a_model_file(pair):
    done = run(["-m", "dflash.cli", *pair, "--max-new-tokens", "3", "--json"], preexec_fn=lambda: os.close(0))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["generated_tokens"] >= 1


# Each command, stopped in its work by a ^C or by an error it raises: the work function patched.
COMMANDS = [
    (train_main, "dflash-train", ["run", "--target", "t", "--data", "d", "--out", "o"], "train.dflash_train.train"),
    (router_main, "dflash-train-router", [], "train.router.read_labeled_prompts"),
    (fast_model_main, "python -m train.fast_model", ["--target", "t", "--data", "d", "--out", "o"],
     "train.fast_model.heal"),  # fmt: skip
    (eval_main, "dflash-eval", ["bench", "--target-model", "t", "--draft-model", "d"], "eval.cli.load_suites"),
    (forward_main, "python -m eval.forward", ["--target-model", "t"], "eval.forward.load_target"),
    (blas_main, "python -m eval.blas", ["--child", "--target-model", "t"], "eval.blas.measure"),
]


@pytest.mark.parametrize("main, prog, argv, work", COMMANDS, ids=[c[1] for c in COMMANDS])
@pytest.mark.parametrize("raised, status, line", [
    (KeyboardInterrupt(), 130, "{prog}: interrupted"),
    (DFlashError("no such data"), 2, "{prog}: error: no such data"),
])  # fmt: skip
def test_every_command_ends_on_an_error_or_an_interrupt_with_one_line(
    capsys, monkeypatch, main, prog, argv, work, raised, status, line
):
    def stopped(*args, **kwargs):
        raise raised

    monkeypatch.setattr(work, stopped)
    assert main(argv) == status
    assert capsys.readouterr().err.splitlines() == [line.format(prog=prog)]


def test_a_missing_offline_default_is_one_line(tmp_path, monkeypatch, capsys):
    """No wheel (the target) or no shipped drafter: `dflash-mlx` with no model arguments says which."""
    monkeypatch.setattr("dflash.engine.DEFAULT_TARGET", tmp_path / "SmolLM2.gguf")
    assert cli_main([]) == 2
    error = capsys.readouterr().err
    assert re.fullmatch(r"dflash-mlx: error: the offline default target .* is not installed .*\n", error)
    (tmp_path / "SmolLM2.gguf").write_bytes(b"")
    monkeypatch.setattr("dflash.engine.DEFAULT_DRAFT", tmp_path / "drafter")
    assert cli_main([]) == 2
    assert re.fullmatch(r"dflash-mlx: error: the offline default drafter is not in .*\n", capsys.readouterr().err)
