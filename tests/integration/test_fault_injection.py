"""The FaultInjection service on real nodes: gray RPC faults and clock offsets."""

from __future__ import annotations

import time

import grpc
import pytest

from distlab.common.processes import NodeProcess
from distlab.kvstore.client import SyncKeyValueClient
from distlab.kvstore.versioning import decode_siblings
from distlab.proto import chaos_pb2, chaos_pb2_grpc, kvstore_pb2, kvstore_pb2_grpc

from .conftest import StartNode, start_cluster

# Hinted handoff retries on its own schedule; generous for a busy 2-core machine.
DELIVERY_DEADLINE_S = 30.0


def set_rules(node: NodeProcess, *rules: chaos_pb2.RpcFaultRule) -> None:
    with grpc.insecure_channel(node.address) as channel:
        chaos_pb2_grpc.FaultInjectionStub(channel).SetRpcFaults(
            chaos_pb2.SetRpcFaultsRequest(rules=list(rules), seed=1), timeout=5
        )


def set_clock(node: NodeProcess, offset_ms: int) -> None:
    with grpc.insecure_channel(node.address) as channel:
        chaos_pb2_grpc.FaultInjectionStub(channel).SetClockOffset(
            chaos_pb2.SetClockOffsetRequest(offset_ms=offset_ms), timeout=5
        )


def replica_values(node: NodeProcess, key: bytes) -> set[bytes | None]:
    with grpc.insecure_channel(node.address) as channel:
        response = kvstore_pb2_grpc.ReplicaStub(channel).ReplicaGet(
            kvstore_pb2.ReplicaGetRequest(key=key), timeout=5
        )
    return {version.value for version in decode_siblings(response.siblings)}


def put(node: NodeProcess, key: bytes, value: bytes, w: int, timeout_s: float = 5.0) -> None:
    with grpc.insecure_channel(node.address) as channel:
        kvstore_pb2_grpc.KeyValueStub(channel).Put(
            kvstore_pb2.PutRequest(key=key, value=value, w=w), timeout=timeout_s
        )


def test_a_link_that_loses_only_replies_leaves_the_write_done_but_unacknowledged(
    start_node: StartNode,
) -> None:
    """A gray failure: node1's replica calls arrive and are served, but their replies are lost.
    The client gets an indefinite error although every replica holds the value: the reason a
    timeout must be recorded as "maybe happened"."""
    nodes = start_cluster(start_node, 3, "--allow-fault-injection", "--strict-quorum")
    first = nodes[0]
    set_rules(first, chaos_pb2.RpcFaultRule(method="ReplicaPut", action="drop_reply"))

    with pytest.raises(grpc.RpcError) as failure:
        put(first, b"gray", b"v1", w=3, timeout_s=1.5)

    assert failure.value.code() in (
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNAVAILABLE,
    )
    assert all(replica_values(node, b"gray") == {b"v1"} for node in nodes)
    set_rules(first)  # heal
    put(first, b"gray", b"v2", w=3)


def test_a_fault_aimed_at_one_peer_and_one_rpc_spares_the_rest(start_node: StartNode) -> None:
    nodes = start_cluster(start_node, 3, "--allow-fault-injection", "--strict-quorum")
    first, second, _ = nodes
    put(first, b"k", b"v", w=3)
    set_rules(
        first, chaos_pb2.RpcFaultRule(peer=second.address, method="ReplicaGet", action="fail")
    )

    with SyncKeyValueClient(first.address) as client:
        assert client.get(b"k", r=2).values == (b"v",)  # node1 and node3 answer
        with pytest.raises(Exception, match=r"node2 .ReplicaGet .*fail by fault injection"):
            client.get(b"k", r=3)
    put(first, b"k", b"v2", w=3)  # ReplicaPut to node2 is untouched


def test_a_skewed_clock_decides_last_writer_wins(start_node: StartNode) -> None:
    """node1's clock runs an hour fast: its blind write beats a later one from node2, which
    is exactly what makes last-writer-wins lose writes under clock skew."""
    nodes = start_cluster(
        start_node, 2, "--allow-fault-injection", "--last-writer-wins", "--replicas", "2"
    )
    fast, slow = nodes
    set_clock(fast, 3_600_000)
    put(fast, b"lww", b"from-the-future", w=2)
    put(slow, b"lww", b"written-later", w=2)

    with SyncKeyValueClient(slow.address) as client:
        assert client.get(b"lww", r=2).values == (b"from-the-future",)
    set_clock(fast, 0)


def test_fault_injection_is_refused_unless_the_node_allows_it(start_node: StartNode) -> None:
    closed = start_node("closed", "--replicas", "1", "--r", "1", "--w", "1")
    with pytest.raises(grpc.RpcError) as refusal:
        set_clock(closed, 1000)
    assert refusal.value.code() is grpc.StatusCode.FAILED_PRECONDITION

    opened = start_node(
        "opened", "--replicas", "1", "--r", "1", "--w", "1", "--allow-fault-injection"
    )
    with pytest.raises(grpc.RpcError) as too_far:
        set_clock(opened, 3 * 86_400_000)
    assert too_far.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as unknown:
        set_rules(opened, chaos_pb2.RpcFaultRule(action="explode"))
    assert unknown.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_a_write_that_fails_on_a_live_owner_goes_to_a_spare_with_a_hint(
    start_node: StartNode,
) -> None:
    """Dynamo 4.6: "if A is temporarily down or unreachable during a write operation then a
    replica that would normally have lived on A will now be sent to node D". The owner is up in
    every failure detector's view; only its writes fail. The fourth node takes its copy, W=3 is
    reached, and the hint reaches the owner once its link heals."""
    nodes = start_cluster(start_node, 4, "--allow-fault-injection")
    by_id = {node.name: node for node in nodes}
    with SyncKeyValueClient(nodes[0].address) as client:
        written = client.put(b"handoff", b"v1", w=3, trace=True)
    first = written.trace
    assert first is not None
    preference = first["preference_list"]
    failing = next(node_id for node_id in preference if node_id != first["coordinator"])
    (spare,) = set(by_id) - set(preference)
    rule = chaos_pb2.RpcFaultRule(peer=by_id[failing].address, method="ReplicaPut", action="fail")
    for node in nodes:
        set_rules(node, rule)

    with SyncKeyValueClient(nodes[0].address) as client:
        # With v1's context, v2 supersedes it: the owner ends with v2 alone, not siblings.
        second = client.put(b"handoff", b"v2", context=written.context, w=3, trace=True).trace
    assert second is not None
    assert second["hints_written"] == [{"node_id": spare, "hint_for": failing}]
    assert replica_values(by_id[failing], b"handoff") == {b"v1"}

    for node in nodes:
        set_rules(node)  # heal: hinted handoff may now deliver
    deadline = time.monotonic() + DELIVERY_DEADLINE_S
    while replica_values(by_id[failing], b"handoff") != {b"v2"}:
        assert time.monotonic() < deadline, "the hint never reached its owner"
        time.sleep(0.1)
