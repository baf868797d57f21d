"""Chaos runs of the Raft register (issue 6): its history must be linearizable on every key,
whatever the faults. The checker is the same that reports the KV store's stale reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from distlab.chaos.checkers import CheckVerdict
from distlab.chaos.nemesis import PartitionShape
from tests.chaos.harness import (
    chaos_run,
    check,
    clock,
    crash,
    kill,
    partition_fault,
    pause,
    scripted,
)


# With asynchronous writes, a leader killed with -9 loses the writes its disk had not finished;
# it had counted none of them toward commitment, so no acknowledged put may go with them.
@pytest.mark.parametrize(
    "node_args", [(), ("--async-writes",)], ids=["leader-waits-for-its-disk", "async-writes"]
)
def test_three_raft_nodes_stay_linearizable_under_every_fault(
    tmp_path: Path, node_args: tuple[str, ...]
) -> None:
    outcome = chaos_run(
        tmp_path,
        seed=5,
        duration_s=14.0,
        faults=("partition", "kill", "pause", "clock", "disk", "gray"),
        system="raft",
        node_args=node_args,
    )

    assert outcome.results["faults"]
    linearizability = check(outcome, "linearizability")
    assert linearizability["required"]
    assert linearizability["counts"]["keys"] > 5
    assert outcome.results["by_f"]["put"]["ok"] > 100
    assert outcome.verdict is CheckVerdict.VALID


def test_five_raft_nodes_stay_linearizable_through_kills_pauses_and_odd_partitions(
    tmp_path: Path,
) -> None:
    schedule = scripted(
        13.0,
        5,
        [
            partition_fault(PartitionShape.MAJORITIES_RING, 5, 1.0, 3.5, seed=1),
            kill("n1", 4.0, 5.5),
            crash(["n2", "n3"], 6.0, 7.5),
            partition_fault(PartitionShape.BRIDGE, 5, 8.0, 9.5, seed=2),
            pause(["n4", "n5"], 9.8, 10.8),
            clock({"n4": 30_000, "n5": -30_000}, 11.0, 11.8),
        ],
    )

    outcome = chaos_run(tmp_path, schedule, system="raft")

    assert outcome.results["by_f"]["put"]["ok"] > 50
    assert outcome.verdict is CheckVerdict.VALID
