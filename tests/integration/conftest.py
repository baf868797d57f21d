"""Start real ``distlab node`` processes on loopback, on kernel-chosen ports; always stop them."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from distlab.common.processes import NodeProcess
from distlab.kvstore.client import SyncKeyValueClient

# Fast gossip and failure detection, so a test sees a dead node within about a second.
FAST_CLUSTER_ARGUMENTS = ["--gossip-interval-ms", "100", "--failure-timeout-ms", "2000"]
CONVERGE_DEADLINE_S = 30.0

StartNode = Callable[..., NodeProcess]


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[StartNode]:
    """start_node(name, *flags): a node on a free port; stopped (kill -9) after the test."""
    started: list[NodeProcess] = []

    def start(name: str = "node1", *arguments: str) -> NodeProcess:
        node = NodeProcess(name, tmp_path / name, tmp_path / f"{name}.log", list(arguments))
        started.append(node)
        node.start()
        return node

    try:
        yield start
    finally:
        for node in started:
            node.kill()


def single_node_arguments() -> list[str]:
    """A cluster of one: N=R=W=1."""
    return ["--replicas", "1", "--r", "1", "--w", "1"]


def start_cluster(start_node: StartNode, count: int, *arguments: str) -> list[NodeProcess]:
    """``count`` nodes that found each other through the first one, converged."""
    first = start_node("node1", *FAST_CLUSTER_ARGUMENTS, *arguments)
    nodes = [first]
    for index in range(2, count + 1):
        nodes.append(
            start_node(
                f"node{index}", "--seeds", first.address, *FAST_CLUSTER_ARGUMENTS, *arguments
            )
        )
    wait_for_view(nodes, {node.name for node in nodes}, alive={node.name for node in nodes})
    return nodes


def wait_for_view(
    observers: list[NodeProcess],
    normal: set[str],
    *,
    alive: set[str],
    deadline_s: float = CONVERGE_DEADLINE_S,
) -> None:
    """Wait until every observer sees exactly ``normal`` as NORMAL members and ``alive`` alive."""
    deadline = time.monotonic() + deadline_s
    views: dict[str, object] = {}
    while time.monotonic() < deadline:
        converged = True
        for observer in observers:
            with SyncKeyValueClient(observer.address, deadline_ms=2000) as client:
                members = client.ring()
            seen_normal = {m.node_id for m in members if m.status == "NORMAL"}
            seen_alive = {m.node_id for m in members if m.alive}
            views[observer.name] = (sorted(seen_normal), sorted(seen_alive))
            if seen_normal != normal or seen_alive & normal != alive & normal:
                converged = False
        if converged:
            return
        time.sleep(0.1)
    raise AssertionError(f"views did not converge to normal={normal} alive={alive}: {views}")
