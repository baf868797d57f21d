"""``distlab bench raft`` end to end, very short: a real local Raft group, through the command's
parser. Asserts the shape of the output and that every row did work without errors; never a
figure: CI machines are busy."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from distlab.bench.commands import add_bench_parser


def test_bench_raft_measures_echo_puts_and_gets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser(prog="distlab")
    add_bench_parser(parser.add_subparsers())
    json_path = tmp_path / "raft.json"
    args = parser.parse_args(
        [
            "bench", "raft",
            "--duration", "1",
            "--warmup", "0.2",
            "--concurrency", "8",
            "--keys", "100",
            "--json", str(json_path),
        ]
    )  # fmt: skip

    assert args.func(args) == 0

    printed = capsys.readouterr().out
    assert "put:" in printed
    assert "the echo's operations/s" in printed
    results = json.loads(json_path.read_text())["results"]
    assert [result["name"] for result in results] == ["echo", "put", "get"]
    for result in results:
        assert result["operations"] > 0
        assert not result["errors"], result
