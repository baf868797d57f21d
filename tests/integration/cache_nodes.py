"""Real ``distlab cache node`` processes for the cache's integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from distlab.common.processes import NodeProcess, start_all


def cache_node(tmp_path: Path, name: str, *arguments: str) -> NodeProcess:
    """A ``distlab cache node`` on a free port, not started."""
    return NodeProcess(
        name=name,
        data_dir=tmp_path / name,
        log_path=tmp_path / f"{name}.log",
        arguments=list(arguments),
        command=("cache", "node"),
    )


def cache_cluster(tmp_path: Path, count: int, *arguments: str) -> Iterator[list[NodeProcess]]:
    """``count`` cache nodes, started together, yielded serving, and killed afterwards."""
    cluster = [cache_node(tmp_path, f"cache{index + 1}", *arguments) for index in range(count)]
    try:
        start_all(cluster)
        yield cluster
    finally:
        for node in cluster:
            node.kill()
