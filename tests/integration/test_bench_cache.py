"""``distlab bench cache`` end to end, very short: a real local cache cluster (and memcached,
when this machine has it), through the command's parser. Asserts the shape of the output and
that every row did work without errors; never a figure: CI machines are busy."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest

from distlab.bench.commands import add_bench_parser


def test_bench_cache_measures_echo_gets_mixes_and_multi_gets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser(prog="distlab")
    add_bench_parser(parser.add_subparsers())
    json_path = tmp_path / "cache.json"
    args = parser.parse_args(
        [
            "bench", "cache",
            "--duration", "0.5",
            "--warmup", "0.2",
            "--concurrency", "8",
            "--keys", "500",
            "--capacity-mb", "0.01",  # smaller than the data: some gets must miss
            "--json", str(json_path),
        ]
    )  # fmt: skip

    assert args.func(args) == 0

    printed = capsys.readouterr().out
    assert "get: " in printed
    assert "the echo's calls/s" in printed
    results = {result["name"]: result for result in json.loads(json_path.read_text())["results"]}
    expected = ["echo", "get", "mixed", "multi-get"]
    if shutil.which("memcached"):
        expected += ["memcached-get", "memcached-multi-get"]
        assert "memcached's keys/s" in printed
    else:
        assert "no memcached binary" in printed
    assert list(results) == expected
    for result in results.values():
        assert result["operations"] > 0
        assert not result["errors"], result
    assert 0.0 < results["get"]["counters"]["hit_ratio"] < 1.0
    assert results["multi-get"]["counters"]["keys_per_s"] > results["multi-get"]["operations_per_s"]
