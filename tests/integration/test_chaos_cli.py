"""``distlab chaos run``, ``check`` and ``--replay`` from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distlab.cli import main

SHORT_RUN = [
    "chaos", "run",
    "--duration", "5",
    "--rate", "40",
    "--seed", "3",
    "--faults", "kill,partition",
    "--interval", "2",
    "--fault-duration", "1,1.5",
    "--quiet", "1",
    "--converge-wait", "5",
]  # fmt: skip


def run_dirs(out: Path) -> list[Path]:
    return sorted(path for path in out.iterdir() if path.is_dir())


def test_run_then_check_then_replay(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "runs"

    assert main([*SHORT_RUN, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "verdict: VALID (seed 3)" in printed
    (run_dir,) = run_dirs(out)
    for name in ("run.json", "history.jsonl", "results.json", "latency.png", "index.html"):
        assert (run_dir / name).stat().st_size > 0
    recorded = json.loads((run_dir / "results.json").read_text())

    # The standalone checker reaches the same verdict on the saved history...
    assert main(["chaos", "check", str(run_dir)]) == 0
    rechecked = json.loads((run_dir / "results.json").read_text())
    assert rechecked["checks"] == recorded["checks"]

    # ...and catches a value no put wrote, once the history says a final read returned one.
    lines = (run_dir / "history.jsonl").read_text().splitlines()
    final_reads = [
        index
        for index, line in enumerate(lines)
        if '"type":"ok"' in line and '"f":"get"' in line and '"process":1000000' in line
    ]
    assert final_reads, "the run should end with final reads"
    doctored = json.loads(lines[final_reads[0]])
    doctored["value"] = ["never-written"]
    doctored["extra"] = {"context": {}}
    lines[final_reads[0]] = json.dumps(doctored)
    (run_dir / "history.jsonl").write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert main(["chaos", "check", str(run_dir)]) == 1
    printed = capsys.readouterr().out
    assert "verdict: INVALID" in printed
    assert f"replay: distlab chaos run --replay {run_dir}" in printed
    anomalies = json.loads((run_dir / "results.json").read_text())["anomalies"]
    assert any(a["kind"] == "phantom" and doctored["index"] in a["ops"] for a in anomalies)

    # A replay repeats the configuration and the fault schedule into a new run directory.
    assert main(["chaos", "run", "--replay", str(run_dir), "--out", str(out)]) == 0
    replayed = next(path for path in run_dirs(out) if path != run_dir)
    original_run = json.loads((run_dir / "run.json").read_text())
    replayed_run = json.loads((replayed / "run.json").read_text())
    assert replayed_run["config"] == original_run["config"]
    assert replayed_run["schedule"] == original_run["schedule"]
    assert original_run["schedule"]["faults"], "seed 3 should draw some faults"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--faults", "meteor"], "unknown fault 'meteor'"),
        (["--duration", "0"], "must be positive"),
        (["--nodes", "50"], "at most"),
        (["--fault-duration", "3"], "MIN,MAX"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(
    arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["chaos", "run", *arguments])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_check_of_a_missing_run_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chaos", "check", str(tmp_path / "nothing")]) == 2
    assert "nothing" in capsys.readouterr().err
