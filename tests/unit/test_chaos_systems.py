"""What the chaos harness lets each system take: its faults and its partition shapes."""

from __future__ import annotations

import pytest

from distlab.chaos.nemesis import FaultKind, PartitionShape
from distlab.chaos.runner import RunConfig, schedule_for
from distlab.chaos.systems import SYSTEMS, CacheSystem, SystemConfig


def test_a_fault_a_system_cannot_take_is_refused_up_front() -> None:
    with pytest.raises(ValueError, match=r"system cache does not take faults \['clock'\]"):
        RunConfig(system="cache", faults=("kill", "clock"))


def test_an_unknown_system_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown system 'nope'"):
        RunConfig(system="nope")


def test_the_cache_is_partitioned_only_from_its_clients() -> None:
    config = RunConfig(system="cache", duration_s=600.0, faults=("partition",), seed=3)

    faults = schedule_for(config).faults

    assert faults
    assert {fault.partition.shape for fault in faults if fault.partition} == {
        PartitionShape.CLIENTS
    }


@pytest.mark.parametrize("name", sorted(SYSTEMS))
def test_every_system_takes_kills_and_pauses(name: str) -> None:
    kinds = SYSTEMS[name]().fault_kinds
    assert {FaultKind.KILL, FaultKind.PAUSE, FaultKind.PARTITION} <= kinds


def test_cache_nodes_get_the_workloads_lease_and_stale_windows() -> None:
    config = SystemConfig(extra={"workload": {"lease_ms": 700, "stale_ms": 300}})

    arguments = CacheSystem().node_arguments(config, seed=1, index=0)

    assert arguments[:4] == ["--lease-ms", "700", "--stale-ms", "300"]


def test_the_cache_checkers_grace_covers_the_longest_leftover() -> None:
    from distlab.cache.workload import CacheWorkloadOptions

    options = CacheWorkloadOptions(
        duration_s=1.0, slow_load_ms=600, call_timeout_ms=300, failover_ttl_ms=200, stale_ms=500
    )
    assert options.grace_ms(margin_ms=500) == 600 + 300 + 200 + 500
    longer_stale = CacheWorkloadOptions(duration_s=1.0, slow_load_ms=0, stale_ms=5_000)
    assert longer_stale.grace_ms(margin_ms=0) == 5_000


def test_an_unknown_workload_option_is_refused_before_anything_starts() -> None:
    with pytest.raises(ValueError, match=r"workload options of cache: .*'lease'"):
        RunConfig(system="cache", system_config=SystemConfig(extra={"workload": {"lease": 1}}))
    with pytest.raises(ValueError, match="concurrency"):
        RunConfig(system="raft", system_config=SystemConfig(concurrency=0))
