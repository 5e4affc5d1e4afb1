"""Decode speed options: the block size chosen every step ("auto") keeps greedy output exact and
sampling lossless, and chooses from the measured acceptance and step costs."""

import json

import mlx.core as mx
import pytest

import dflash
from adapters.errors import DFlashError
from dflash.block_size import AutoBlockSize
from dflash.cli import main as cli_main
from dflash.generate import generate
from eval.bench import DFLASH, Variant, dflash_variants
from eval.cli import main as bench_main
from tests.helpers import OracleProposals, prompt_of


def test_probes_the_largest_and_smallest_block_first():
    sizer = AutoBlockSize(8)
    assert sizer.choose() == 8
    sizer.record(8, accepted=3, seconds=0.04)
    assert sizer.choose() == 2
    sizer.record(2, accepted=1, seconds=0.02)
    # Costs between the measured sizes are interpolated.
    assert sizer.step_costs()[2:].tolist() == pytest.approx([0.02 + 0.02 * (b - 2) / 6 for b in range(2, 9)])


def test_expected_tokens_from_the_acceptance_so_far():
    sizer = AutoBlockSize(6)
    sizer.record(6, accepted=2, seconds=1.0)  # proposals 1 and 2 accepted, 3 rejected, 4 and 5 untested
    sizer.record(6, accepted=0, seconds=1.0)  # proposal 1 rejected
    # a_1 = (1 + 1) / (2 + 1), a_2 = (1 + 2/3) / (1 + 1), a_3 = (0 + 5/6) / (1 + 1), a_4 = a_5 = a_3 (untested)
    rates = [2 / 3, 5 / 6, 5 / 12, 5 / 12, 5 / 12]
    expected, product = [1.0], 1.0
    for rate in rates:
        product *= rate
        expected.append(expected[-1] + product)
    assert sizer.expected_tokens()[1:].tolist() == pytest.approx(expected)


def test_chooses_the_block_that_maximises_tokens_per_second():
    costly_blocks = AutoBlockSize(8)  # every proposal accepted, but a step costs 1 + b
    for b in (8, 2):
        costly_blocks.record(b, accepted=b - 1, seconds=1.0 + b)
    # E(b) = b; b / (1 + b) grows with b
    assert costly_blocks.choose() == 8

    early_rejections = AutoBlockSize(8)  # proposal 2 is always rejected: no block beyond 2 pays
    for _ in range(20):
        early_rejections.record(8, accepted=1, seconds=1.0 + 8)
    early_rejections.record(2, accepted=1, seconds=1.0 + 2)
    assert early_rejections.choose() == 2


def test_start_refuses_a_bad_block_size(make_pair):
    model, _ = dflash.load(*make_pair("llama", block_size=4))
    for bad in (1, 5):
        with pytest.raises(DFlashError, match="block size must be between 2"):
            dflash.decode.start(model, max_tokens=8, block_size=bad)
    assert dflash.decode.start(model, max_tokens=8, block_size="auto").batch.block_sizer is not None


@pytest.mark.parametrize("oracle", [False, True])
def test_auto_block_size_is_exact(make_pair, oracle):
    """Greedy output stays plain greedy decoding, with the random drafter (rejections) and with
    proposals that are right but every sixth token (accepts of every length)."""
    model, tokenizer = dflash.load(*make_pair("qwen3"))
    prompt = prompt_of(40, seed=3)
    reference = generate(model.adapter, tokenizer, prompt, 80).tokens
    acceptance = OracleProposals(reference, model.adapter.vocab_size, miss_every=6) if oracle else None
    result = dflash.generate(model, tokenizer, prompt, 80, block_size="auto", acceptance=acceptance)
    assert result.tokens == reference
    sizes = result.stats.block_sizes
    assert len(sizes) == len(result.stats.acceptance_lengths) and sizes[:2] == [16, 2]


def test_bench_variants():
    names = [v.name for v in dflash_variants([2, 8, "auto"], ["speculative", "argmax"], drafter_block=8, greedy=False)]
    assert names == [DFLASH, "dflash argmax", "dflash b=2", "dflash b=2 argmax", "dflash b=auto", "dflash b=auto argmax"]
    assert dflash_variants([], ["argmax"], drafter_block=8, greedy=True) == [Variant()]
    windows = dflash_variants([], ["speculative"], drafter_block=8, greedy=True, draft_windows=[16, 64, 16])
    assert [v.name for v in windows] == [DFLASH, "dflash window=16", "dflash window=64"]


def test_bounded_drafter_context_keeps_greedy_exact(make_pair, capsys):
    """A drafter that sees only the last 8 context positions proposes differently, but the target
    still decides: the output stays plain greedy decoding, through the API and the CLI."""
    target, draft = make_pair("llama")
    model, tokenizer = dflash.load(target, draft)
    prompt = prompt_of(50, seed=2)
    reference = generate(model.adapter, tokenizer, prompt, 40).tokens
    single = dflash.decode.start(model, max_tokens=40, draft_window=8)
    tokens = dflash.decode.prefill(model, single, mx.array(prompt))
    while not single.finished:
        tokens += single.step(model)
    assert tokens == reference
    cache = single.draft_cache[0]
    assert cache.offset > len(prompt) and cache.keys.shape[2] < 16  # absolute positions, a window of keys
    assert dflash.generate(model, tokenizer, prompt, 40, draft_window=8).tokens == reference
    with pytest.raises(DFlashError, match="context window must be at least 1"):
        dflash.generate(model, tokenizer, prompt, 40, draft_window=0)

    assert cli_main(["--target-model", target, "--draft-model", draft, "--no-chat", "--prompt", "a b c d e f g h",
                     "--max-new-tokens", "30", "--draft-window", "4", "--json", "--baseline"]) == 0  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert report["exact"] is True and report["draft_window"] == 4


@pytest.mark.slow  # a whole bench run
def test_bench_runs_variants_side_by_side(make_pair, tmp_path):
    target, draft = make_pair(block_size=4)
    suite = tmp_path / "mini.jsonl"
    suite.write_text('{"prompt": "def add(a, b):"}\n{"prompt": "The quick brown fox"}\n')
    out = tmp_path / "report"
    bench_main(["bench", "--target-model", target, "--draft-model", draft, "--suite", str(suite), "--no-chat",
                "--max-tokens", "10", "--repeats", "2", "--warmup", "0", "--temperature", "1.0",
                "--acceptance", "speculative,argmax", "--block-size", "2,auto", "--draft-window", "4",
                "--out", str(out)])  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    variants = [DFLASH, "dflash argmax", "dflash b=2", "dflash b=2 argmax", "dflash b=auto", "dflash b=auto argmax",
                "dflash window=4"]
    assert list(report["methods"]) == ["plain"] + variants
    auto = report["methods"]["dflash b=auto"]
    assert set(auto["gains"]) == set(variants) - {"dflash b=auto"} and len(auto["gains"][DFLASH]["repeats"]) == 2
    assert auto["exact_match_rate"] is None  # sampled: no token-for-token check
    assert sum(auto["block_size_histogram"].values()) == auto["steps"]
    markdown = (out / "report.md").read_text()
    assert "## DFlash variants" in markdown and "Divergences" not in markdown


@pytest.mark.parametrize(
    "argv, message",
    [
        (["steps", "--prompt-lengths", "abc"], "expected comma-separated integers, got 'abc'"),
        (["steps", "--prompt-lengths", "0"], "expected integers of at least 1, got '0'"),
        (["batch", "--batch-sizes", "2,x"], "expected comma-separated integers, got '2,x'"),
        (["bench", "--draft-window", "64,0"], "expected integers of at least 1, got '64,0'"),
        (["steps", "--repeats", "0"], "must be at least 1, got 0"),
        (["batch", "--max-tokens", "0"], "must be at least 1, got 0"),
        (["steps", "--draft-window", "0"], "must be at least 1, got 0"),
    ],
)
def test_bad_eval_options_are_one_line(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        bench_main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and "Traceback" not in err
