"""``distlab bench kv`` end to end, very short: a real local cluster of three node processes,
through the command's parser.

Asserts the shape of the output, that every row did work without errors, and that every node it
started is gone afterwards; never a figure: CI machines are busy.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import socket
from pathlib import Path

import pytest

from distlab.bench.commands import add_bench_parser

ROW_NAMES = ["echo", "put", "get", "mixed"]
STARTED_LINE = re.compile(r"^kv: started (node\d+) at ([\d.]+):(\d+), pid (\d+)$", re.MULTILINE)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distlab")
    add_bench_parser(parser.add_subparsers())
    return parser


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only checks that the pid exists
    except ProcessLookupError:
        return False
    return True


def port_refuses(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return False
    except OSError as error:
        return error.errno == errno.ECONNREFUSED


def test_bench_kv_runs_a_local_cluster_and_stops_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    json_path = tmp_path / "results" / "kv.json"
    cluster_directory = tmp_path / "cluster"
    cluster_directory.mkdir()
    args = build_parser().parse_args(
        [
            "bench", "kv",
            "--nodes", "3",
            "--duration", "1",
            "--warmup", "0.2",
            "--concurrency", "4",
            "--keys", "100",
            "--dir", str(cluster_directory),
            "--json", str(json_path),
        ]
    )  # fmt: skip

    status = args.func(args)

    output = capsys.readouterr()
    assert status == 0, output.err
    started = STARTED_LINE.findall(output.err)
    assert [name for name, _, _, _ in started] == ["node1", "node2", "node3"], output.err
    for name, host, port, pid in started:
        assert not process_exists(int(pid)), f"{name} (pid {pid}) still running"
        assert port_refuses(host, int(port)), f"{name} still accepts connections on {port}"
    assert list(cluster_directory.iterdir()) == []  # the temporary directory removed
    assert "put: " in output.out
    assert "x the echo's operations/s" in output.out
    assert f"results saved to {json_path}" in output.out

    document = json.loads(json_path.read_text())
    assert document["benchmark"] == "kv"
    results = document["results"]
    assert [result["name"] for result in results] == ROW_NAMES
    for result in results:
        assert result["concurrency"] == 4
        assert result["operations"] > 0, result
        assert result["errors"] == {}, result
        assert result["notes"] == [], result
    for result in results[1:]:
        assert result["parameters"]["nodes"] == 3
        assert result["parameters"]["nrw"] == "3/2/2"
        assert result["parameters"]["fsync"] == "always"
        assert result["parameters"]["keys"] == 100
    get = results[2]
    assert get["counters"]["siblings_per_get"] == 1.0  # preloaded once, never written again


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--concurrency", "257"], "must be in [1, 256]"),
        (["--keys", "0"], "must be in [1, 100000]"),
        (["--value-bytes", "65537"], "must be in [1, 65536]"),
        (["--read-fraction", "1.5"], "must be in [0, 1]"),
        (["--read-fraction", "nan"], "must be in [0, 1]"),
        (["--duration", "601"], "must be in (0.0, 600.0]"),
        (["--nodes", "10"], "must be in [1, 9]"),
        (["--fsync", "always,never"], "unknown fsync policy"),
        (["--to", "localhost"], "expected HOST:PORT"),
        (["--to", "127.0.0.1:0"], "expected HOST:PORT"),
    ],
)
def test_bad_arguments_are_usage_errors(
    arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["bench", "kv", *arguments])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--to", "127.0.0.1:7001", "--nodes", "3"], "--nodes: only for the local cluster"),
        (["--keys", "100000", "--value-bytes", "1000"], "use fewer keys or smaller values"),
    ],
)
def test_conflicting_arguments_are_usage_errors(
    arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = build_parser().parse_args(["bench", "kv", *arguments])
    assert args.func(args) == 2
    assert message in capsys.readouterr().err
