"""`dflash-eval curves`: the report compares runs at the steps both reached, and bad input is one line."""

import json

import pytest

from eval.cli import main
from eval.curves import trailing_mean


def write_run(directory, taus: dict, steps: int, loss: float):
    directory.mkdir()
    records = [{"step": s, "loss": loss + s, "accuracy": 0.1, "step_time": 2.0} for s in range(1, steps + 1)]
    for record in records:
        if record["step"] in taus:
            record["tau"] = taus[record["step"]]
    (directory / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(directory)


def test_runs_side_by_side(tmp_path):
    dflash = write_run(tmp_path / "a", {2: 1.0, 4: 2.0, 6: 2.5}, steps=6, loss=0.0)
    dflash2 = write_run(tmp_path / "b", {2: 1.5, 4: 3.0}, steps=4, loss=10.0)
    out = tmp_path / "out"
    assert main(["curves", dflash, dflash2, "--names", "DFlash,DFlash 2", "--window", "2", "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    # loss and accuracy over the steps both runs reached (3-4): DFlash's loss there is mean(3, 4)
    assert "| DFlash | 6 | 2.00 s | 3.500 | 0.100 | 2.50 (step 6) |" in report
    assert "| DFlash 2 | 4 | 2.00 s | 13.500 | 0.100 | 3.00 (step 4) |" in report
    assert "| 4 | 2.00 | 3.00 | 1.50x |" in report and "| 6 | 2.50 | – | – |" in report
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_trailing_mean():
    assert trailing_mean([1.0, 3.0, 5.0, 7.0], 2).tolist() == [1.0, 2.0, 4.0, 6.0]


@pytest.mark.parametrize("make, message", [
    (lambda d: None, "has no metrics.jsonl"),
    (lambda d: (d / "metrics.jsonl").write_text('{"step": 1, "loss": 2, "accuracy": 0, "step_time": 1}\nnot json\n'),
     "metrics.jsonl, line 2: not a JSON record"),
    (lambda d: (d / "metrics.jsonl").write_text('{"step": 1}\n'), "not the metrics of `dflash-train run`"),
])  # fmt: skip
def test_bad_runs_are_one_line(tmp_path, capsys, make, message):
    run = tmp_path / "run"
    run.mkdir()
    make(run)
    assert main(["curves", str(run), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("dflash-eval: error: ") and message in err[0]


@pytest.mark.parametrize("count, names", [(1, "x,y"), (2, "x,x")])  # one label too many; the same label twice
def test_names_must_label_each_run(tmp_path, capsys, count, names):
    runs = [write_run(tmp_path / str(i), {}, steps=2, loss=0.0) for i in range(count)]
    assert main(["curves", *runs, "--names", names, "--out", str(tmp_path / "out")]) == 2
    assert f"--names gives 2 labels for {count} runs" in capsys.readouterr().err
