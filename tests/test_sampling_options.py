"""Sampling settings and acceptance rules: what each setting accepts, the one-line errors for the
rest (API and CLI), and the CLI's report of a sampled run."""

import json

import pytest

from adapters.errors import DFlashError
from dflash.acceptance import ACCEPTANCE_RULES, GreedyAcceptance, TokenMatching, make_acceptance
from dflash.cli import main as cli_main
from dflash.sampling import SamplingSettings


def test_temperature_zero_is_greedy_whatever_the_rule():
    for rule in ACCEPTANCE_RULES:
        assert type(make_acceptance(SamplingSettings(top_k=5, top_p=0.5), rule)) is GreedyAcceptance
    with pytest.raises(DFlashError, match="temperature > 0"):
        TokenMatching(SamplingSettings())


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(temperature=-0.5), "temperature must be 0"),
        (dict(temperature=float("nan")), "temperature must be 0"),
        (dict(temperature=float("inf")), "temperature must be 0 .greedy. or a finite number above it, got inf"),
        (dict(temperature="hot"), "temperature must be a number, got 'hot'"),
        (dict(top_p=None), "top-p must be a number, got None"),
        (dict(min_p=True), "min-p must be a number, got True"),
        (dict(top_p=0.0), r"top-p must be in \(0, 1\]"),
        (dict(top_p=1.5), r"top-p must be in \(0, 1\]"),
        (dict(top_k=-1), "top-k must be an integer >= 0"),
        (dict(top_k=2.5), "top-k must be an integer >= 0"),
        (dict(min_p=1.0), r"min-p must be in \[0, 1\)"),
        (dict(min_p=-0.1), r"min-p must be in \[0, 1\)"),
    ],
)
def test_bad_settings(options, message):
    with pytest.raises(DFlashError, match=message):
        SamplingSettings(**{"temperature": 1.0, **options})


def test_unknown_rule():
    with pytest.raises(DFlashError, match="acceptance rule must be one of"):
        make_acceptance(SamplingSettings(temperature=1.0), "typical")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--temperature", "-1"], "temperature must be 0"),
        (["--temperature", "inf"], "temperature must be 0 (greedy) or a finite number above it, got inf"),
        (["--temperature", "1", "--top-p", "0"], "top-p must be in (0, 1]"),
        (["--temperature", "1", "--top-k", "-3"], "top-k must be an integer >= 0"),
        (["--temperature", "1", "--min-p", "1"], "min-p must be in [0, 1)"),
    ],
)
def test_cli_bad_sampling_options(make_pair, capsys, argv, message):
    target, draft = make_pair("llama")
    assert cli_main(["--target-model", target, "--draft-model", draft, *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_sampling_json(make_pair, capsys):
    target, draft = make_pair("llama")
    argv = ["--target-model", target, "--draft-model", draft, "--no-chat", "--prompt", "hello there",
            "--max-new-tokens", "20", "--json", "--baseline", "--temperature", "0.8", "--top-k", "50", "--seed", "4"]
    reports = []
    for _ in range(2):
        assert cli_main(argv) == 0
        reports.append(json.loads(capsys.readouterr().out))
    report = reports[0]
    assert report["sampling"] == {"temperature": 0.8, "top_p": 1.0, "top_k": 50, "min_p": 0.0, "seed": 4,
                                  "acceptance": "speculative"}
    assert report["exact"] is None  # sampled runs agree in distribution, not token for token
    assert report["tokens"] == reports[1]["tokens"] and report["baseline_tokens"] == reports[1]["baseline_tokens"]
    assert len(report["tested_proposals"]) == len(report["expected_accepted"]) == len(report["acceptance_lengths"])
    assert 0 <= report["expected_match_acceptance_rate"] <= report["expected_acceptance_rate"] <= 1
