"""``distlab bench cache-policy`` and ``cache-routing`` end to end, on small inputs: the tables
print, the JSON saves, and the figures say what the issue promises."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distlab.cli import main


def test_cache_policy_ranks_w_tinylfu_above_lru_below_opt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = tmp_path / "policy.json"
    status = main(
        ["bench", "cache-policy", "--keys", "20000", "--length", "100000", "--alpha", "0.9",
         "--sizes", "1", "--json", str(saved)]
    )  # fmt: skip
    assert status == 0
    assert "w-tinylfu" in capsys.readouterr().out
    (row,) = json.loads(saved.read_text())["rows"]
    assert row["capacity_items"] == 200  # 1% of the key space
    ratios = row["hit_ratios"]
    assert ratios["lru"] < ratios["w-tinylfu"] < ratios["opt"]


def test_cache_policy_reads_a_trace_file(tmp_path: Path) -> None:
    trace = tmp_path / "trace.txt"
    trace.write_text("a\nb\na\n\nc\na\nb\n")
    saved = tmp_path / "policy.json"
    assert main(["bench", "cache-policy", "--trace", str(trace), "--sizes", "100",
                 "--json", str(saved)]) == 0  # fmt: skip
    (row,) = json.loads(saved.read_text())["rows"]
    assert row["capacity_items"] == 3
    assert row["hit_ratios"]["opt"] == pytest.approx(3 / 6)  # only the first touches miss


def test_cache_routing_prints_moves_against_the_ideal(tmp_path: Path) -> None:
    saved = tmp_path / "routing.json"
    assert main(["bench", "cache-routing", "--keys", "20000", "--nodes", "4",
                 "--json", str(saved)]) == 0  # fmt: skip
    rows = json.loads(saved.read_text())["rows"]
    assert len(rows) == 4 * 3
    by_key = {(row["router"], row["change"]): row for row in rows}
    rendezvous_add = by_key[("rendezvous", "4 -> 5 (add n5)")]
    assert rendezvous_add["ideal_fraction"] == pytest.approx(0.2)
    assert abs(rendezvous_add["moved_fraction"] - 0.2) < 0.03
    assert by_key[("jump", "4 -> 3 (remove n3)")]["moved_fraction"] > 0.3  # renumbering
