"""Helpers for the chaos tier: run a short chaos run in-process and read its results."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from distlab.chaos.nemesis import (
    Fault,
    FaultKind,
    Partition,
    PartitionShape,
    Schedule,
    partition,
)
from distlab.chaos.runner import RunConfig, RunOutcome, run
from distlab.chaos.systems import SystemConfig


def names(count: int) -> list[str]:
    return [f"n{index + 1}" for index in range(count)]


def scripted(duration_s: float, nodes: int, faults: Sequence[Fault], seed: int = 0) -> Schedule:
    return Schedule(
        seed=seed, duration_s=duration_s, nodes=tuple(names(nodes)), faults=tuple(faults)
    )


def isolate(node: str, nodes: int, start_s: float, end_s: float) -> Fault:
    """Cut ``node`` off from the other nodes (clients still reach every node)."""
    others = [name for name in names(nodes) if name != node]
    cuts = frozenset({*((node, other) for other in others), *((other, node) for other in others)})
    shape = Partition(PartitionShape.ONE, cuts, f"one: {{{node}}} | {{{', '.join(others)}}}")
    return Fault(FaultKind.PARTITION, start_s, end_s, (node,), partition=shape)


def partition_fault(
    shape: PartitionShape, nodes: int, start_s: float, end_s: float, seed: int = 0
) -> Fault:
    cut = partition(shape, names(nodes), random.Random(seed))
    return Fault(FaultKind.PARTITION, start_s, end_s, tuple(names(nodes)), partition=cut)


def halves(nodes: int, start_s: float, end_s: float, seed: int = 0) -> Fault:
    return partition_fault(PartitionShape.HALVES, nodes, start_s, end_s, seed)


def kill(node: str, start_s: float, end_s: float) -> Fault:
    return Fault(FaultKind.KILL, start_s, end_s, (node,))


def pause(nodes: Sequence[str], start_s: float, end_s: float) -> Fault:
    return Fault(FaultKind.PAUSE, start_s, end_s, tuple(nodes))


def crash(nodes: Sequence[str], start_s: float, end_s: float) -> Fault:
    return Fault(FaultKind.DISK, start_s, end_s, tuple(nodes))


def clock(offsets: dict[str, int], start_s: float, end_s: float) -> Fault:
    return Fault(
        FaultKind.CLOCK, start_s, end_s, tuple(offsets), clock_offsets_ms=tuple(offsets.items())
    )


def gray(node: str, action: str, start_s: float, end_s: float, delay_ms: int = 0) -> Fault:
    return Fault(
        FaultKind.GRAY,
        start_s,
        end_s,
        (node,),
        delay_ms=delay_ms,
        rpc_action=action,
        rpc_probability=1.0,
    )


def chaos_run(
    out: Path,
    schedule: Schedule | None = None,
    *,
    seed: int = 1,
    duration_s: float = 10.0,
    faults: Sequence[str] = ("partition", "kill", "pause"),
    interval_s: float = 4.0,
    fault_s: tuple[float, float] = (1.5, 3.0),
    workload: dict[str, Any] | None = None,
    system: str = "kv",
    **system_options: Any,
) -> RunOutcome:
    options = system_options
    nodes = schedule.nodes if schedule is not None else names(options.get("nodes", 3))
    options.setdefault("nodes", len(nodes))
    options.setdefault("rate", 50.0)
    options.setdefault("converge_wait_s", 6.0)
    options["node_args"] = tuple(options.get("node_args", ()))
    options["require"] = tuple(options.get("require", ()))
    config = RunConfig(
        system=system,
        duration_s=duration_s,
        seed=seed,
        faults=tuple(faults),
        interval_s=interval_s,
        fault_s=fault_s,
        system_config=SystemConfig(extra={"workload": workload or {}}, **options),
    )
    outcome = asyncio.run(run(config, out, schedule=schedule, progress_stream=None))
    print("\n".join(summary(outcome)))  # shown by pytest when the test fails
    return outcome


def summary(outcome: RunOutcome) -> list[str]:
    from distlab.chaos.runner import summary_lines

    return summary_lines(outcome)


def check(outcome: RunOutcome, name: str) -> dict[str, Any]:
    result: dict[str, Any] = outcome.results["checks"][name]
    return result


def anomaly_kinds(outcome: RunOutcome, check_name: str) -> set[str]:
    return {a["kind"] for a in outcome.results["anomalies"] if a["check"] == check_name}
