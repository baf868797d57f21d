"""Chaos runs of the cache cluster (issue 7, item 6; chaos matrix row 8): cache-aside reads never
see a value not written for their key, never a stale one once an acknowledged invalidation has
settled, and never fail, while cache nodes are killed, paused and cut from their clients.
Without leases, the same workload must be caught serving stale values (the negative control)."""

from __future__ import annotations

from pathlib import Path

from distlab.chaos.checkers import CheckVerdict
from distlab.chaos.nemesis import Fault, FaultKind, Partition, PartitionShape
from tests.chaos.harness import anomaly_kinds, chaos_run, check, kill, pause, scripted


def cut_from_clients(node: str, start_s: float, end_s: float) -> Fault:
    shape = Partition(
        PartitionShape.CLIENTS,
        frozenset({("client", node)}),
        f"clients: the clients cannot reach {node}",
    )
    return Fault(FaultKind.PARTITION, start_s, end_s, (node,), partition=shape)


def test_cache_aside_with_leases_serves_no_stale_value_and_no_error_through_faults(
    tmp_path: Path,
) -> None:
    schedule = scripted(
        14.0,
        3,
        [
            kill("n1", 1.5, 4.0),
            pause(["n2"], 5.0, 7.5),
            cut_from_clients("n3", 8.5, 11.0),
        ],
    )

    outcome = chaos_run(tmp_path, schedule, system="cache", rate=100.0)

    reads = check(outcome, "read-errors")["counts"]
    assert reads["errors"] == 0
    assert reads["hit"] > 200
    # A dead or unreachable node's keys are loaded instead: misses, not errors.
    assert reads["loaded"] + reads["uncached"] > 20
    stale = check(outcome, "stale-reads")
    assert stale["counts"]["reads"] > 500
    assert stale["counts"]["stale"] == 0
    assert check(outcome, "phantom-values")["counts"]["phantoms"] == 0
    assert outcome.verdict is CheckVerdict.VALID


def test_cache_aside_without_leases_is_caught_serving_stale_values(tmp_path: Path) -> None:
    outcome = chaos_run(
        tmp_path,
        scripted(14.0, 3, []),
        system="cache",
        rate=100.0,
        workload={"leases": False},
    )

    assert "stale-read" in anomaly_kinds(outcome, "stale-reads")
    assert check(outcome, "phantom-values")["counts"]["phantoms"] == 0
    assert outcome.verdict is CheckVerdict.INVALID
