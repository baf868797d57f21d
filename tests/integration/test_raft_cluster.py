"""A 3-node Raft register on loopback: writes go through the leader, survive its death, and
come back after a restart of everyone (issue 6)."""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from distlab.chaos.cluster import reserve_ports
from distlab.common.processes import NodeProcess
from distlab.proto import raft_pb2, raft_pb2_grpc

DEADLINE_S = 30.0
LEADER_HINT = re.compile(r"address=(\S+)")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[NodeProcess]]:
    ports = reserve_ports(3)
    peers = ",".join(f"n{index + 1}=127.0.0.1:{port}" for index, port in enumerate(ports))
    nodes = [
        NodeProcess(
            name=f"n{index + 1}",
            data_dir=tmp_path / f"n{index + 1}",
            log_path=tmp_path / f"n{index + 1}.log",
            arguments=["--peers", peers, "--rng-seed", str(index)],
            port=port,
            command=("raft", "node"),
        )
        for index, port in enumerate(ports)
    ]
    try:
        for node in nodes:
            node.start(wait=False)
        for node in nodes:
            node.wait_serving()
        yield nodes
    finally:
        for node in nodes:
            node.kill()


def call(nodes: list[NodeProcess], method: str, request: object) -> object:
    """Call ``method`` on the leader: follow "not the leader" hints, and move on to another node
    when one does not answer, until the deadline."""
    deadline = time.monotonic() + DEADLINE_S
    addresses = [node.address for node in nodes]
    target = addresses[0]
    for attempt in itertools.count(1):
        with grpc.insecure_channel(target) as channel:
            stub = raft_pb2_grpc.RaftKeyValueStub(channel)
            try:
                return getattr(stub, method)(request, timeout=5)
            except grpc.RpcError as error:
                if time.monotonic() > deadline:
                    raise
                details = error.details() or ""  # type: ignore[attr-defined]
                hint = LEADER_HINT.search(details)
                if hint is not None and hint.group(1) in addresses and hint.group(1) != target:
                    target = hint.group(1)
                else:
                    target = addresses[attempt % len(addresses)]
                time.sleep(0.1)
    raise AssertionError("unreachable")


def leader_of(nodes: list[NodeProcess]) -> NodeProcess:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        for node in nodes:
            if not node.running():
                continue
            with grpc.insecure_channel(node.address) as channel:
                try:
                    status = raft_pb2_grpc.RaftKeyValueStub(channel).Status(
                        raft_pb2.RaftStatusRequest(), timeout=2
                    )
                except grpc.RpcError:
                    continue
            if status.role == "leader":
                return node
        time.sleep(0.1)
    raise AssertionError("no leader elected")


def put(nodes: list[NodeProcess], key: str, value: str) -> None:
    call(nodes, "Put", raft_pb2.RaftPutRequest(key=key.encode(), value=value.encode()))


def get(nodes: list[NodeProcess], key: str) -> str | None:
    reply = call(nodes, "Get", raft_pb2.RaftGetRequest(key=key.encode()))
    assert isinstance(reply, raft_pb2.RaftGetResponse)
    return reply.value.decode() if reply.found else None


def test_writes_survive_the_leaders_death_and_a_restart_of_everyone(
    cluster: list[NodeProcess],
) -> None:
    first = leader_of(cluster)
    followers = [node for node in cluster if node is not first]
    # Asked first, a follower answers with the leader's address, and the call follows it.
    put([*followers, first], "k", "v1")
    assert get([*followers, first], "k") == "v1"

    first.kill()
    put(cluster, "k", "v2")
    assert get(cluster, "k") == "v2"
    assert leader_of(cluster) is not first

    for node in cluster:
        node.kill()
    for node in cluster:
        node.start(wait=False)
    for node in cluster:
        node.wait_serving()
    assert get(cluster, "k") == "v2"


def test_a_follower_refuses_reads_and_names_the_leader(cluster: list[NodeProcess]) -> None:
    leader = leader_of(cluster)
    follower = next(node for node in cluster if node is not leader)
    with (
        grpc.insecure_channel(follower.address) as channel,
        pytest.raises(grpc.RpcError) as refusal,
    ):
        raft_pb2_grpc.RaftKeyValueStub(channel).Get(raft_pb2.RaftGetRequest(key=b"k"), timeout=5)
    assert refusal.value.code() is grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
    assert leader.address in (refusal.value.details() or "")  # type: ignore[attr-defined]
