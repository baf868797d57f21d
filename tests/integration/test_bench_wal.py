"""``distlab bench wal`` end to end, very short: a real log on disk, through the command's parser.

Asserts the shape of the output and that work was done, never a figure: CI machines are busy.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from distlab.bench.commands import add_bench_parser
from distlab.bench.runner import BenchResult
from distlab.bench.wal import group_commit_lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distlab")
    add_bench_parser(parser.add_subparsers())
    return parser


def test_bench_wal_runs_and_saves_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    json_path = tmp_path / "results" / "wal.json"
    logs_directory = tmp_path / "logs"
    logs_directory.mkdir()
    args = build_parser().parse_args(
        [
            "bench", "wal",
            "--writers", "1,4",
            "--duration", "0.5",
            "--warmup", "0.1",
            "--dir", str(logs_directory),
            "--json", str(json_path),
        ]
    )  # fmt: skip

    status = args.func(args)

    output = capsys.readouterr()
    assert status == 0, output.err
    assert "group commit: 4 writers reach " in output.out
    assert "x the appends/s of 1 writer (fsync=always)" in output.out
    assert f"results saved to {json_path}" in output.out
    assert "wal fsync=always payload_bytes=100 x4 |" in output.err  # the progress line
    assert list(logs_directory.iterdir()) == []  # every temporary log removed

    document = json.loads(json_path.read_text())
    assert document["benchmark"] == "wal"
    assert set(document["machine"]) == {"platform", "python", "cpu_count"}
    assert [result["concurrency"] for result in document["results"]] == [1, 4]
    for result in document["results"]:
        assert result["name"] == "wal"
        assert result["parameters"] == {"fsync": "always", "payload_bytes": 100}
        assert result["operations"] > 0
        assert result["errors"] == {}
        assert set(result["latency_ms"]) == {"p50", "p90", "p99", "p999", "max", "mean"}
        assert result["latency_ms"]["p50"] <= result["latency_ms"]["p99"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--writers", "0"], "must be in [1, 4096]"),
        (["--writers", "1,,2"], "comma-separated"),
        (["--writers", "many"], "not an integer"),
        (["--fsync", "sometimes"], "unknown fsync policy 'sometimes'"),
        (["--duration", "0"], "must be in (0.0, 3600.0]"),
        (["--warmup", "nan"], "must be in [0.0, 600.0]"),
        (["--payload-bytes", "0"], "must be in [1, 1048576]"),
        (["--dir", "/nonexistent/distlab"], "not an existing directory"),
    ],
)
def test_bad_arguments_are_usage_errors(
    arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["bench", "wal", *arguments])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def result(fsync: str, writers: int, operations_per_s: float) -> BenchResult:
    return BenchResult(
        name="wal",
        parameters={"fsync": fsync, "payload_bytes": 100},
        concurrency=writers,
        duration_s=1.0,
        warmup_s=0.0,
        operations=int(operations_per_s),
        errors={},
        operations_per_s=operations_per_s,
        latency_ms={},
    )


def test_group_commit_line_compares_the_most_writers_with_the_fewest() -> None:
    results = [
        result("always", 1, 400.0),
        result("always", 8, 2_000.0),
        result("always", 64, 9_000.0),
        result("never", 1, 300_000.0),
        result("never", 64, 330_000.0),
        result("interval", 4, 1.0),  # a single writers count: nothing to compare
    ]
    assert group_commit_lines(results) == [
        "group commit: 64 writers reach 22.5x the appends/s of 1 writer (fsync=always)",
        "fsync=never: 64 writers reach 1.1x the appends/s of 1 writer",
    ]
