"""Short real chaos runs of the key-value store (issue 5, "Done when").

Each run starts real nodes on loopback behind fault proxies, runs the recording workload for a
few seconds under a fault schedule, heals, reads every key at R=N and checks the history. The
negative controls run a configuration that is unsafe on purpose; the harness must catch it,
or it proves nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distlab.chaos.checkers import CheckVerdict
from distlab.chaos.nemesis import PartitionShape
from tests.chaos.harness import (
    anomaly_kinds,
    chaos_run,
    check,
    clock,
    crash,
    gray,
    halves,
    isolate,
    kill,
    partition_fault,
    scripted,
)


def test_strict_quorum_loses_no_acknowledged_write_under_partitions_kills_and_pauses(
    tmp_path: Path,
) -> None:
    outcome = chaos_run(
        tmp_path, seed=7, duration_s=16.0, faults=("partition", "kill", "pause", "disk", "gray")
    )

    assert outcome.results["faults"], "the schedule should hold faults"
    assert outcome.verdict is CheckVerdict.VALID
    assert check(outcome, "lost-writes")["counts"]["acknowledged"] > 100
    assert outcome.results["counts"]["ok"] > 300
    for name in ("history.jsonl", "results.json", "latency.png", "rate.png", "index.html"):
        assert (outcome.run_dir / name).stat().st_size > 0


def test_fsync_never_loses_acknowledged_writes_when_every_machine_crashes(tmp_path: Path) -> None:
    schedule = scripted(10.0, 3, [crash(["n1", "n2", "n3"], 5.0, 6.5)])

    unsafe = chaos_run(tmp_path / "never", schedule, fsync="never")
    safe = chaos_run(tmp_path / "always", schedule, fsync="always")

    assert unsafe.verdict is CheckVerdict.INVALID
    assert "lost-write" in anomaly_kinds(unsafe, "lost-writes")
    assert safe.verdict is CheckVerdict.VALID


def test_last_writer_wins_under_clock_skew_loses_concurrent_writes(tmp_path: Path) -> None:
    # Concurrent writers to the same keys; n1's clock runs a minute fast, so its writes win
    # every comparison. Vector clocks keep both writes as siblings; last-writer-wins drops one.
    schedule = scripted(10.0, 3, [clock({"n1": 60_000, "n3": -5_000}, 2.0, 8.0)])

    lossy = chaos_run(tmp_path / "lww", schedule, node_args=["--last-writer-wins"])
    safe = chaos_run(tmp_path / "vv", schedule)

    assert lossy.verdict is CheckVerdict.INVALID
    assert "lost-write" in anomaly_kinds(lossy, "lost-writes")
    assert safe.verdict is CheckVerdict.VALID


def test_w1_r1_under_a_partition_reads_stale_values(tmp_path: Path) -> None:
    # R + W <= N: a read may ask one replica that the write never reached. The linearizability
    # check (informative here) and the stale-read check both show it, naming the reads.
    schedule = scripted(10.0, 3, [isolate("n3", 3, 2.0, 8.0)])

    outcome = chaos_run(tmp_path, schedule, r=1, w=1, workload={"delete_fraction": 0.0})

    linearizability = check(outcome, "linearizability")
    assert linearizability["verdict"] == "invalid"
    assert not linearizability["required"]
    assert "stale-read" in anomaly_kinds(outcome, "stale-reads")
    assert outcome.verdict is CheckVerdict.VALID, "neither check is promised at W=1 R=1"


# Each safety switch of the store: off, the checker reports an anomaly; on, the same schedule
# passes. This is how a learner sees why each mechanism exists.


def test_switch_strict_quorum(tmp_path: Path) -> None:
    # 5 nodes split 3|2: a sloppy quorum acknowledges writes on fallbacks across the cut, which
    # readers on the other side do not ask.
    schedule = scripted(10.0, 5, [halves(5, 2.0, 8.0)])
    common: dict[str, Any] = {"require": ["stale-reads"], "workload": {"delete_fraction": 0.0}}

    sloppy = chaos_run(tmp_path / "sloppy", schedule, strict_quorum=False, **common)
    strict = chaos_run(tmp_path / "strict", schedule, strict_quorum=True, **common)

    assert "stale-read" in anomaly_kinds(sloppy, "stale-reads")
    assert sloppy.verdict is CheckVerdict.INVALID
    assert strict.verdict is CheckVerdict.VALID


def test_switch_read_repair(tmp_path: Path) -> None:
    # n3 misses the writes made while it is down; with anti-entropy off, only the final reads'
    # read repair brings it up to date.
    schedule = scripted(8.0, 3, [kill("n3", 1.5, 5.0)])
    no_anti_entropy = ["--anti-entropy-interval-ms", "0"]

    off = chaos_run(tmp_path / "off", schedule, node_args=[*no_anti_entropy, "--no-read-repair"])
    on = chaos_run(tmp_path / "on", schedule, node_args=no_anti_entropy)

    assert "diverged" in anomaly_kinds(off, "convergence")
    assert off.verdict is CheckVerdict.INVALID
    assert on.verdict is CheckVerdict.VALID


def test_switch_anti_entropy(tmp_path: Path) -> None:
    schedule = scripted(8.0, 3, [kill("n3", 1.5, 5.0)])
    no_read_repair = ["--no-read-repair"]

    off = chaos_run(
        tmp_path / "off", schedule, node_args=[*no_read_repair, "--anti-entropy-interval-ms", "0"]
    )
    on = chaos_run(tmp_path / "on", schedule, node_args=no_read_repair)

    assert "diverged" in anomaly_kinds(off, "convergence")
    assert off.verdict is CheckVerdict.INVALID
    assert on.verdict is CheckVerdict.VALID


def test_switch_hinted_handoff(tmp_path: Path) -> None:
    # N=2 on 3 nodes: while an owner is down, a sloppy quorum writes to the third node as a
    # hint. Only handoff brings those writes to the owner (read repair and anti-entropy off).
    # Keys rotate every 3.5 s and n2 is down from 0.5 s to 7.5 s, so the second set of keys is
    # written only while it is down: however fast n2 restarts, no later write reaches it. The
    # first set also sees writes that failed on n2 before it was detected down (500 ms): the
    # hinted writes of the next 2.5 s supersede them, so they converge when hints are on.
    schedule = scripted(11.0, 3, [kill("n2", 0.5, 7.5)])
    quiet = ["--no-read-repair", "--anti-entropy-interval-ms", "0", "--failure-timeout-ms", "500"]
    common: dict[str, Any] = {
        "replicas": 2,
        "r": 1,
        "w": 2,
        "strict_quorum": False,
        "workload": {"key_period_s": 3.5},
    }

    off = chaos_run(tmp_path / "off", schedule, node_args=[*quiet, "--no-hinted-handoff"], **common)
    on = chaos_run(tmp_path / "on", schedule, node_args=quiet, **common)

    assert "diverged" in anomaly_kinds(off, "convergence")
    assert off.verdict is CheckVerdict.INVALID
    assert on.verdict is CheckVerdict.VALID


def test_switch_tombstone_gc_interlock(tmp_path: Path) -> None:
    # The first keys are written by everyone, then deleted while n3 is cut off, then never
    # written again (keys rotate every 5 s). Tombstones are collectable 300 ms after their
    # delete. Without the interlock, n1 and n2 forget them while n3 still holds the deleted
    # values, which come back after the heal.
    schedule = scripted(10.0, 3, [isolate("n3", 3, 2.5, 7.0)])
    gc = ["--tombstone-grace-ms", "300", "--tombstone-gc-interval-ms", "300"]
    workload = {"delete_fraction": 0.4, "key_period_s": 5.0}

    no_interlock = [*gc, "--no-tombstone-gc-interlock"]
    off = chaos_run(tmp_path / "off", schedule, node_args=no_interlock, workload=workload)
    on = chaos_run(tmp_path / "on", schedule, node_args=gc, workload=workload)

    assert "resurrected" in anomaly_kinds(off, "lost-writes")
    assert off.verdict is CheckVerdict.INVALID
    assert on.verdict is CheckVerdict.VALID


def test_sloppy_quorum_keeps_every_write_through_bridge_and_majority_ring_partitions(
    tmp_path: Path,
) -> None:
    # The chaos matrix, row 2: five nodes, sloppy quorum with hinted handoff. Stale reads are
    # allowed (and counted); lost writes are not, and the hints must drain after the heal.
    schedule = scripted(
        12.0,
        5,
        [
            partition_fault(PartitionShape.BRIDGE, 5, 1.0, 4.5, seed=1),
            partition_fault(PartitionShape.MAJORITIES_RING, 5, 6.0, 9.5, seed=2),
        ],
    )

    outcome = chaos_run(tmp_path, schedule, strict_quorum=False)

    assert not check(outcome, "stale-reads")["required"]
    assert check(outcome, "lost-writes")["verdict"] == "valid"
    assert check(outcome, "convergence")["verdict"] == "valid"
    assert outcome.verdict is CheckVerdict.VALID


def test_strict_quorum_survives_gray_failures(tmp_path: Path) -> None:
    # n1 loses the replies of its calls to peers (its writes become indefinite though they land
    # on the replicas), then n2's calls arrive twice, then n3's are held 300 ms.
    schedule = scripted(
        11.0,
        3,
        [
            gray("n1", "drop_reply", 1.0, 4.0),
            gray("n2", "duplicate", 4.5, 7.0),
            gray("n3", "delay", 7.5, 9.5, delay_ms=300),
        ],
    )

    outcome = chaos_run(tmp_path, schedule)

    assert outcome.results["counts"]["info"] > 0, "lost replies make writes indefinite"
    assert outcome.verdict is CheckVerdict.VALID
