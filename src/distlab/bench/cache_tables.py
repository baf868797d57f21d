"""``distlab bench cache-policy`` and ``distlab bench cache-routing``: the cache's two tables,
computed offline (no nodes, no network), so they measure the algorithms and nothing else.

* cache-policy replays a trace (a zipfian synthetic one, or a file of keys, one per line)
  against LRU, W-TinyLFU and Belady's OPT at several cache sizes, and prints each hit ratio.
  Items weigh 1, so a size is a number of items and the three compare like for like.
* cache-routing places a population of keys with each router (consistent hashing, jump hash,
  rendezvous hashing, consistent hashing with bounded loads), changes the membership (a node
  added at the end, the last one removed, one from the middle removed) and prints the fraction
  of keys that moved next to the ideal, and the load spread after the change.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from distlab.bench.runner import machine_description
from distlab.cache.policy import EvictionPolicy, LruPolicy, WTinyLfuPolicy
from distlab.cache.routing import (
    BoundedLoadRouter,
    ConsistentHashRouter,
    JumpHashRouter,
    RendezvousRouter,
    Router,
    movement_report,
)
from distlab.cache.traces import belady_opt_hits, simulate

POLICIES: dict[str, Callable[[int], EvictionPolicy]] = {
    "lru": LruPolicy,
    "w-tinylfu": WTinyLfuPolicy,
}
ROUTERS: dict[str, Callable[[Sequence[str]], Router]] = {
    "consistent": ConsistentHashRouter,
    "jump": JumpHashRouter,
    "rendezvous": RendezvousRouter,
    "bounded-load": BoundedLoadRouter,
}


@dataclass(frozen=True, slots=True)
class PolicyRow:
    capacity_items: int
    capacity_percent: float  # of the key space
    hit_ratios: dict[str, float]  # policy name -> hit ratio, OPT included


def policy_table(
    trace: Sequence[bytes],
    key_space: int,
    capacity_percents: Sequence[float],
    progress: TextIO | None,
) -> list[PolicyRow]:
    """Rows for caches of each percent of ``key_space`` (a zipf trace's key count; for a trace
    file, its distinct keys)."""
    rows = []
    for percent in capacity_percents:
        capacity = max(1, round(key_space * percent / 100))
        ratios = {}
        for name, make in POLICIES.items():
            ratios[name] = simulate(make(capacity), trace).hit_ratio
            _say(progress, f"  {percent:g}% ({capacity} items): {name} {ratios[name]:.4f}")
        ratios["opt"] = belady_opt_hits(trace, capacity).hit_ratio
        _say(progress, f"  {percent:g}% ({capacity} items): opt {ratios['opt']:.4f}")
        rows.append(PolicyRow(capacity, percent, ratios))
    return rows


def format_policy_table(rows: Sequence[PolicyRow]) -> str:
    names = [*POLICIES, "opt"]
    lines = [f"{'cache size':>22}  " + "  ".join(f"{name:>9}" for name in names)]
    for row in rows:
        size = f"{row.capacity_items:,} items ({row.capacity_percent:g}%)"
        lines.append(f"{size:>22}  " + "  ".join(f"{row.hit_ratios[n]:>9.4f}" for n in names))
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class RoutingRow:
    router: str
    change: str  # e.g. "5 -> 6 (add n6)"
    moved_fraction: float
    ideal_fraction: float
    max_to_mean: float  # load after the change
    coefficient_of_variation: float


def membership_changes(nodes: int) -> list[tuple[str, list[str], list[str]]]:
    """(label, before, after): a node added at the end, the last removed, a middle one removed."""
    names = [f"n{index + 1}" for index in range(nodes + 1)]
    before = names[:nodes]
    middle = before[len(before) // 2]
    return [
        (f"{nodes} -> {nodes + 1} (add {names[nodes]})", before, names),
        (f"{nodes} -> {nodes - 1} (remove {before[-1]})", before, before[:-1]),
        (f"{nodes} -> {nodes - 1} (remove {middle})", before, [n for n in before if n != middle]),
    ]


def routing_table(keys: int, nodes: int, progress: TextIO | None) -> list[RoutingRow]:
    if nodes < 2:
        raise ValueError("cache-routing needs at least 2 nodes")
    population = [f"key-{number}".encode() for number in range(keys)]
    rows = []
    for name, make in ROUTERS.items():
        for label, before, after in membership_changes(nodes):
            report = movement_report(make(before), make(after), population)
            spread = report.load_spread
            rows.append(
                RoutingRow(
                    router=name,
                    change=label,
                    moved_fraction=report.moved_fraction,
                    ideal_fraction=report.ideal_fraction,
                    max_to_mean=spread.max_to_mean,
                    coefficient_of_variation=spread.coefficient_of_variation,
                )
            )
            _say(progress, f"  {name}, {label}: moved {report.moved_fraction:.3f}")
    return rows


def format_routing_table(rows: Sequence[RoutingRow]) -> str:
    lines = [
        f"{'router':<13} {'membership change':<22} {'moved':>7} {'ideal':>7} "
        f"{'max/mean':>9} {'cv':>7}"
    ]
    for row in rows:
        lines.append(
            f"{row.router:<13} {row.change:<22} {row.moved_fraction:>7.3f} "
            f"{row.ideal_fraction:>7.3f} {row.max_to_mean:>9.3f} "
            f"{row.coefficient_of_variation:>7.3f}"
        )
    return "\n".join(lines)


def save(benchmark: str, parameters: dict[str, object], rows: Sequence[object], path: Path) -> None:
    document = {
        "benchmark": benchmark,
        "machine": machine_description(),
        "started_at": datetime.now(UTC).isoformat(),
        "parameters": parameters,
        "rows": [asdict(row) for row in rows],  # type: ignore[call-overload]
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def _say(progress: TextIO | None, line: str) -> None:
    if progress is not None:
        print(line, file=progress, flush=True)
