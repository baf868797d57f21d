"""A 3-node Raft register on loopback: writes go through the leader, survive its death, and
come back after a restart of everyone (issue 6)."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from distlab.chaos.cluster import reserve_ports
from distlab.common.processes import NodeProcess, start_all
from distlab.common.server import SHUTDOWN_GRACE_S_DEFAULT
from distlab.proto import raft_pb2, raft_pb2_grpc

DEADLINE_S = 30.0
LEADER_HINT = re.compile(r"address=(\S+)")


def start_cluster(tmp_path: Path, *arguments: str) -> Iterator[list[NodeProcess]]:
    ports = reserve_ports(3)
    peers = ",".join(f"n{index + 1}=127.0.0.1:{port}" for index, port in enumerate(ports))
    nodes = [
        NodeProcess(
            name=f"n{index + 1}",
            data_dir=tmp_path / f"n{index + 1}",
            log_path=tmp_path / f"n{index + 1}.log",
            arguments=["--peers", peers, "--rng-seed", str(index), *arguments],
            port=port,
            command=("raft", "node"),
        )
        for index, port in enumerate(ports)
    ]
    try:
        start_all(nodes)
        yield nodes
    finally:
        for node in nodes:
            node.kill()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[NodeProcess]]:
    yield from start_cluster(tmp_path)


# The leader waits for its own disk, or leaves its writes to the storage writer (the writer's
# queue then also orders the compactions after them).
WRITE_MODES = {"synchronous": (), "asynchronous": ("--async-writes",)}


@pytest.fixture(params=sorted(WRITE_MODES))
def cluster_of_either_write_mode(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[list[NodeProcess]]:
    yield from start_cluster(tmp_path, *WRITE_MODES[request.param])


@pytest.fixture(params=sorted(WRITE_MODES))
def compacting_cluster(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[list[NodeProcess]]:
    """Compacts every 4 applied entries, so a restart recovers from a snapshot."""
    yield from start_cluster(tmp_path, "--snapshot-entries", "4", *WRITE_MODES[request.param])


def restart_all(nodes: list[NodeProcess]) -> None:
    for node in nodes:
        node.kill()
    start_all(nodes)


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
    cluster_of_either_write_mode: list[NodeProcess],
) -> None:
    cluster = cluster_of_either_write_mode
    first = leader_of(cluster)
    followers = [node for node in cluster if node is not first]
    # Asked first, a follower answers with the leader's address, and the call follows it.
    put([*followers, first], "k", "v1")
    assert get([*followers, first], "k") == "v1"

    first.kill()
    put(cluster, "k", "v2")
    assert get(cluster, "k") == "v2"
    assert leader_of(cluster) is not first

    restart_all(cluster)
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


def refusal_of(node: NodeProcess, request: raft_pb2.RaftPutRequest) -> grpc.RpcError:
    with grpc.insecure_channel(node.address) as channel, pytest.raises(grpc.RpcError) as refusal:
        raft_pb2_grpc.RaftKeyValueStub(channel).Put(request, timeout=5)
    return refusal.value


def test_a_retried_write_of_a_session_is_applied_once(
    compacting_cluster: list[NodeProcess],
) -> None:
    """Thesis 6.3: a client that retries a write it got no answer for gets the first answer,
    and the write is not applied a second time, even across snapshots and restarts."""
    nodes = compacting_cluster
    first = call(
        nodes, "Put", raft_pb2.RaftPutRequest(key=b"k", value=b"v1", client_id=7, sequence=1)
    )
    assert isinstance(first, raft_pb2.RaftPutResponse)
    put(nodes, "k", "v2")  # another writer, without a session
    for number in range(8):  # enough entries to compact the log past the first write
        put(nodes, f"other-{number}", "x")
    restart_all(nodes)
    retried = call(
        nodes, "Put", raft_pb2.RaftPutRequest(key=b"k", value=b"v1", client_id=7, sequence=1)
    )
    assert isinstance(retried, raft_pb2.RaftPutResponse)
    assert retried.index == first.index  # answered from the session table
    assert get(nodes, "k") == "v2"  # and v1 was not written again over v2

    call(nodes, "Put", raft_pb2.RaftPutRequest(key=b"k", value=b"v3", client_id=7, sequence=2))
    assert get(nodes, "k") == "v3"
    leader = leader_of(nodes)
    stale = refusal_of(
        leader, raft_pb2.RaftPutRequest(key=b"k", value=b"v1", client_id=7, sequence=1)
    )
    assert stale.code() is grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
    assert "stale" in (stale.details() or "")  # type: ignore[attr-defined]
    # An unknown session past its first command has expired: refused, not applied.
    expired = refusal_of(
        leader, raft_pb2.RaftPutRequest(key=b"k", value=b"v9", client_id=8, sequence=5)
    )
    assert "expired" in (expired.details() or "")  # type: ignore[attr-defined]
    assert get(nodes, "k") == "v3"
    half = refusal_of(leader, raft_pb2.RaftPutRequest(key=b"k", value=b"v9", client_id=8))
    assert half.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]


def run_cli(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "distlab.cli", "raft", *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_command_line_follows_the_leader_hint(cluster: list[NodeProcess]) -> None:
    leader = leader_of(cluster)
    follower = next(node for node in cluster if node is not leader)
    written = run_cli("put", "greeting", "hello", "--to", follower.address)
    assert written.returncode == 0, written.stderr
    assert written.stdout.startswith("OK (index ")
    read = run_cli("get", "greeting", "--to", follower.address)
    assert (read.returncode, read.stdout.strip()) == (0, "hello")
    missing = run_cli("get", "nothing", "--to", leader.address)
    assert (missing.returncode, missing.stdout.strip()) == (1, "(not found)")


def test_a_node_stops_gracefully_without_waiting_out_its_peers_streams(
    cluster: list[NodeProcess],
) -> None:
    """Peers keep a stream open into every node for as long as they run; a graceful stop must
    end those calls rather than wait the whole shutdown grace for them."""
    call(cluster, "Put", raft_pb2.RaftPutRequest(key=b"k", value=b"v"))
    first = cluster[0]

    started = time.monotonic()
    status = first.terminate(deadline_s=SHUTDOWN_GRACE_S_DEFAULT * 2)
    stopped_s = time.monotonic() - started

    assert status == 0
    assert stopped_s < SHUTDOWN_GRACE_S_DEFAULT / 2, stopped_s
    assert '"event": "stopped"' in first.log_path.read_text()
