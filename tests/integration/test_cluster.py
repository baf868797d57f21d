"""A real cluster of ``distlab node`` processes on loopback: the Dynamo guarantees, each shown
with nodes killed, restarted, joining and leaving (DeCandia et al., SOSP 2007).

Replica contents are read directly (the Replica service's ReplicaGet) to prove convergence,
not inferred through a quorum read that could hide a stale replica.
"""

from __future__ import annotations

import json
import time

import grpc
import pytest

from distlab.common import errors
from distlab.common.errors import DistlabError
from distlab.common.hashring import HashRing
from distlab.common.processes import NodeProcess
from distlab.kvstore.client import SyncKeyValueClient
from distlab.kvstore.versioning import Version, decode_siblings
from distlab.proto import kvstore_pb2, kvstore_pb2_grpc

from .conftest import FAST_CLUSTER_ARGUMENTS, StartNode, start_cluster, wait_for_view

CONVERGE_DEADLINE_S = 30.0
N = 3


def replica_versions(node: NodeProcess, key: bytes) -> tuple[Version, ...]:
    """What one replica holds for key, asked directly (no quorum, no repair)."""
    with grpc.insecure_channel(node.address) as channel:
        reply = kvstore_pb2_grpc.ReplicaStub(channel).ReplicaGet(
            kvstore_pb2.ReplicaGetRequest(key=key), timeout=5
        )
    return decode_siblings(reply.siblings)


def replica_values(node: NodeProcess, key: bytes) -> set[bytes]:
    return {v.value for v in replica_versions(node, key) if v.value is not None}


def ring_of(*names: str) -> HashRing:
    """The ring the nodes build: tokens derive from node ids, so any process can compute it."""
    ring = HashRing()
    for name in names:
        ring.add_node(name)
    return ring


def wait_until(condition: object, what: str, deadline_s: float = CONVERGE_DEADLINE_S) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {deadline_s} s: {what}")


def names(nodes: list[NodeProcess]) -> set[str]:
    return {node.name for node in nodes}


def test_quorum_survives_one_dead_node_and_refuses_cleanly_with_two(
    start_node: StartNode,
) -> None:
    """Dynamo 4.5 with strict quorum, N=3 W=2 R=2: one node down is tolerated; with two down a
    put is refused before anything is written (definite UNAVAILABLE), never falsely acked."""
    nodes = start_cluster(start_node, 3, "--strict-quorum")
    first, second, third = nodes
    with SyncKeyValueClient(first.address) as client:
        for index in range(10):
            client.put(f"before-{index}".encode(), b"v")
    third.kill()
    wait_for_view([first, second], names(nodes), alive={first.name, second.name})
    with SyncKeyValueClient(first.address) as client:
        for index in range(10):
            client.put(f"during-{index}".encode(), b"one down")
        for index in range(10):
            assert client.get(f"before-{index}".encode()).values == (b"v",)
            assert client.get(f"during-{index}".encode()).values == (b"one down",)
    second.kill()
    wait_for_view([first], names(nodes), alive={first.name})
    with SyncKeyValueClient(first.address) as client:
        with pytest.raises(DistlabError) as refused:
            client.put(b"refused", b"never acknowledged")
        assert refused.value.kind is errors.NOT_ENOUGH_REPLICAS
        assert refused.value.kind.status == "UNAVAILABLE"
        assert refused.value.definite
        with pytest.raises(DistlabError) as unreadable:
            client.get(b"before-0")
        assert unreadable.value.kind.status == "UNAVAILABLE"
    second.start()
    third.start()
    wait_for_view(nodes, names(nodes), alive=names(nodes))
    with SyncKeyValueClient(first.address) as client:
        with pytest.raises(DistlabError) as missing:
            client.get(b"refused")
        assert missing.value.kind is errors.NOT_FOUND, "a definite refusal wrote nothing"


def test_a_get_after_an_acknowledged_put_sees_it_through_any_coordinator(
    start_node: StartNode,
) -> None:
    """R + W > N (Vogels 2009): every read quorum overlaps every write quorum."""
    nodes = start_cluster(start_node, 3)
    clients = [SyncKeyValueClient(node.address) for node in nodes]
    try:
        for index in range(30):
            key = f"key-{index}".encode()
            written = clients[index % 3].put(key, f"first-{index}".encode())
            assert clients[(index + 1) % 3].get(key).values == (f"first-{index}".encode(),)
            clients[(index + 2) % 3].put(key, f"second-{index}".encode(), context=written.context)
            read = clients[(index + 1) % 3].get(key)
            assert read.values == (f"second-{index}".encode(),), "the causally later put wins"
    finally:
        for client in clients:
            client.close()


def test_concurrent_puts_through_two_coordinators_are_siblings_until_resolved(
    start_node: StartNode,
) -> None:
    """Dynamo 4.4: writes that did not see each other are kept as siblings; a put with the
    context of a read that returned them all supersedes them (semantic reconciliation)."""
    nodes = start_cluster(start_node, 3)
    with (
        SyncKeyValueClient(nodes[0].address) as first,
        SyncKeyValueClient(nodes[1].address) as second,
    ):
        first.put(b"cart", b"apple")  # blind: neither writer saw the other's value
        second.put(b"cart", b"pear")
        read = first.get(b"cart", trace=True)
        assert set(read.values) == {b"apple", b"pear"}
        assert read.trace is not None
        assert len(read.trace["preference_list"]) == N
        second.put(b"cart", b"apple+pear", context=read.context)
        assert first.get(b"cart").values == (b"apple+pear",)
        assert second.get(b"cart").values == (b"apple+pear",)


def cut(node: NodeProcess, peers: list[NodeProcess]) -> None:
    """Tell ``node`` it can no longer call ``peers`` (an empty list heals)."""
    with grpc.insecure_channel(node.address) as channel:
        kvstore_pb2_grpc.ReplicaStub(channel).SetBlockedPeers(
            kvstore_pb2.SetBlockedPeersRequest(addresses=[peer.address for peer in peers]),
            timeout=5,
        )


def partition(*sides: list[NodeProcess]) -> None:
    everyone = [node for side in sides for node in side]
    for side in sides:
        for node in side:
            cut(node, [other for other in everyone if other not in side])


def test_puts_on_both_sides_of_a_partition_become_siblings(start_node: StartNode) -> None:
    """Dynamo 4.4 and 4.6: during a partition each side's sloppy quorum accepts writes; after
    healing, the versions are concurrent, so a read returns both, and a put with that read's
    context resolves them."""
    nodes = start_cluster(start_node, 4, "--allow-fault-injection")
    left, right = nodes[:2], nodes[2:]
    with SyncKeyValueClient(left[0].address) as client:
        client.put(b"cart", b"before", w=3)
    partition(left, right)
    wait_for_view(left, names(nodes), alive=names(left))
    wait_for_view(right, names(nodes), alive=names(right))
    with SyncKeyValueClient(left[0].address) as client:
        before = client.get(b"cart", r=1)
        client.put(b"cart", b"left", context=before.context, w=2)
    with SyncKeyValueClient(right[0].address) as client:
        before = client.get(b"cart", r=1)
        client.put(b"cart", b"right", context=before.context, w=2)
    partition(nodes)  # one side holding everyone: every link restored
    wait_for_view(nodes, names(nodes), alive=names(nodes))
    with SyncKeyValueClient(nodes[0].address) as client:
        wait_until(
            lambda: set(client.get(b"cart", r=3).values) == {b"left", b"right"},
            "both sides' writes are siblings after the heal",
        )
        read = client.get(b"cart", r=3)
        client.put(b"cart", b"left+right", context=read.context)
        assert client.get(b"cart", r=3).values == (b"left+right",)


def test_fault_injection_is_refused_unless_enabled(start_node: StartNode) -> None:
    nodes = start_cluster(start_node, 2, "--replicas", "2")
    with pytest.raises(grpc.RpcError) as refused:
        cut(nodes[0], [nodes[1]])
    assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]


def write_while_an_owner_is_down(
    start_node: StartNode, *flags: str
) -> tuple[NodeProcess, list[bytes]]:
    """A 4-node sloppy cluster without read repair or anti-entropy; one node killed, 40 keys
    written with W=3 (so each of the downed node's keys needs a fallback), the node restarted.
    Returns the restarted owner and the keys it owns."""
    nodes = start_cluster(
        start_node, 4, "--anti-entropy-interval-ms", "0", "--no-read-repair", *flags
    )
    owner = nodes[3]
    ring = ring_of(*names(nodes))
    keys = [f"hinted-{index}".encode() for index in range(40)]
    owned = [key for key in keys if owner.name in ring.preference_list(key, N)]
    assert len(owned) >= 10, "the sample must give the downed node keys to miss"
    owner.kill()
    survivors = nodes[:3]
    wait_for_view(survivors, names(nodes), alive=names(survivors))
    with SyncKeyValueClient([node.address for node in survivors]) as client:
        for key in keys:
            client.put(key, b"written while the owner was down", w=3)
    owner.start()
    wait_for_view(nodes, names(nodes), alive=names(nodes))
    return owner, owned


def test_hinted_handoff_delivers_every_hinted_write_when_the_owner_returns(
    start_node: StartNode,
) -> None:
    """Dynamo 4.6: with an owner down, its replica goes to the next node with a hint, and is
    handed over when the owner is back. Read repair and anti-entropy are off, so only handoff
    can explain what the owner holds afterwards."""
    owner, owned = write_while_an_owner_is_down(start_node)
    wait_until(
        lambda: all(
            replica_values(owner, key) == {b"written while the owner was down"} for key in owned
        ),
        "the owner received every hinted write",
    )


def test_without_handoff_the_returning_owner_stays_stale(start_node: StartNode) -> None:
    """The safety switch off: hints stay on the fallbacks, and nothing else repairs the owner."""
    owner, owned = write_while_an_owner_is_down(start_node, "--no-hinted-handoff")
    watch_until = time.monotonic() + 2.0  # twice the handoff interval a delivery would need
    while time.monotonic() < watch_until:
        assert all(replica_values(owner, key) == set() for key in owned)
        time.sleep(0.2)


def test_read_repair_brings_a_stale_replica_up_to_date(start_node: StartNode) -> None:
    """Dynamo 5: a get that saw a stale replica sends it the reconciled versions."""
    nodes = start_cluster(start_node, 3, "--strict-quorum", "--anti-entropy-interval-ms", "0")
    stale = nodes[2]
    stale.kill()
    wait_for_view(nodes[:2], names(nodes), alive=names(nodes[:2]))
    keys = [f"repaired-{index}".encode() for index in range(20)]
    with SyncKeyValueClient(nodes[0].address) as client:
        for key in keys:
            client.put(key, b"fresh")
    stale.start()
    wait_for_view(nodes, names(nodes), alive=names(nodes))
    assert all(replica_values(stale, key) == set() for key in keys), "stale before the reads"
    with SyncKeyValueClient(nodes[0].address) as client:
        for key in keys:
            assert client.get(key, r=3).values == (b"fresh",)
    wait_until(
        lambda: all(replica_values(stale, key) == {b"fresh"} for key in keys),
        "read repair updated the stale replica",
    )


def test_anti_entropy_alone_converges_a_stale_replica(start_node: StartNode) -> None:
    """Dynamo 4.7: replicas compare Merkle trees and exchange the keys that differ."""
    nodes = start_cluster(
        start_node, 3, "--strict-quorum", "--no-read-repair", "--anti-entropy-interval-ms", "300"
    )
    stale = nodes[2]
    stale.kill()
    wait_for_view(nodes[:2], names(nodes), alive=names(nodes[:2]))
    keys = [f"entropy-{index}".encode() for index in range(30)]
    with SyncKeyValueClient(nodes[0].address) as client:
        for key in keys:
            client.put(key, b"converged")
    stale.start()
    # Stale at restart: its log replayed nothing, so every copy it ends with came from its peers.
    # (Reading the keys back here would race the first anti-entropy round, 300 ms away.)
    recoveries = [
        json.loads(line)
        for line in stale.log_path.read_text().splitlines()
        if '"event": "recovered"' in line
    ]
    assert recoveries[-1]["records_replayed"] == 0, recoveries[-1]
    wait_until(
        lambda: all(replica_values(stale, key) == {b"converged"} for key in keys),
        "anti-entropy updated the stale replica",
    )


def test_a_joining_node_receives_exactly_its_ranges(start_node: StartNode) -> None:
    nodes = start_cluster(start_node, 3, "--anti-entropy-interval-ms", "0")
    keys = [f"join-{index}".encode() for index in range(60)]
    with SyncKeyValueClient(nodes[0].address) as client:
        for key in keys:
            client.put(key, b"before the join")
    joiner = start_node(
        "node4", "--seeds", nodes[0].address, "--join", *FAST_CLUSTER_ARGUMENTS,
        "--anti-entropy-interval-ms", "0",
    )  # fmt: skip
    everyone = [*nodes, joiner]
    wait_for_view(everyone, names(everyone), alive=names(everyone))
    ring = ring_of(*names(everyone))
    for key in keys:
        expected = {b"before the join"} if joiner.name in ring.preference_list(key, N) else set()
        assert replica_values(joiner, key) == expected, key
    with SyncKeyValueClient(joiner.address) as client:
        for key in keys:
            assert client.get(key).values == (b"before the join",), key


def test_a_leaving_node_hands_over_all_its_ranges_before_it_stops(start_node: StartNode) -> None:
    nodes = start_cluster(start_node, 4, "--anti-entropy-interval-ms", "0")
    keys = [f"leave-{index}".encode() for index in range(60)]
    with SyncKeyValueClient(nodes[0].address) as client:
        for key in keys:
            client.put(key, b"kept", w=3)
    leaver = nodes[3]
    with SyncKeyValueClient(leaver.address, deadline_ms=30_000) as client:
        assert client.leave() > 0
    assert leaver.process is not None
    assert leaver.process.wait(timeout=30) == 0, leaver.log_tail()
    remaining = nodes[:3]
    wait_for_view(remaining, names(remaining), alive=names(remaining))
    ring = ring_of(*names(remaining))
    by_name = {node.name: node for node in remaining}
    for key in keys:
        for owner in ring.preference_list(key, N):
            assert replica_values(by_name[owner], key) == {b"kept"}, (key, owner)


TOMBSTONE_GC_FAST = ["--tombstone-grace-ms", "300", "--tombstone-gc-interval-ms", "200"]


def delete_everywhere(address: str, key: bytes) -> None:
    with SyncKeyValueClient(address) as client:
        read = client.get(key)
        client.delete(key, context=read.context)
        with pytest.raises(DistlabError) as missing:
            client.get(key)
        assert missing.value.kind is errors.NOT_FOUND


def test_tombstones_are_collected_once_past_their_grace_everywhere(start_node: StartNode) -> None:
    """Dynamo keeps deletes as versions; a tombstone older than the grace period, held by every
    replica, can be forgotten."""
    nodes = start_cluster(start_node, 3, *TOMBSTONE_GC_FAST)
    with SyncKeyValueClient(nodes[0].address) as client:
        client.put(b"doomed", b"value", w=3)
    delete_everywhere(nodes[1].address, b"doomed")
    wait_until(
        lambda: all(replica_versions(node, b"doomed") == () for node in nodes),
        "every replica forgot the tombstone",
    )


def test_the_interlock_keeps_a_tombstone_until_every_replica_has_it(start_node: StartNode) -> None:
    nodes = start_cluster(
        start_node, 3, "--strict-quorum", "--anti-entropy-interval-ms", "0", *TOMBSTONE_GC_FAST
    )
    first, second, third = nodes
    with SyncKeyValueClient(first.address) as client:
        client.put(b"doomed", b"old value", w=3)
    third.kill()
    wait_for_view([first, second], names(nodes), alive={first.name, second.name})
    delete_everywhere(first.address, b"doomed")
    # An observation window, not a synchronisation: ten GC rounds past the grace period, the
    # two replicas that have the tombstone must still hold it, because the third lacks it.
    watch_until = time.monotonic() + 2.0
    while time.monotonic() < watch_until:
        for node in (first, second):
            held = replica_versions(node, b"doomed")
            assert held, f"{node.name} collected a tombstone a replica lacks"
            assert all(version.is_tombstone for version in held)
        time.sleep(0.1)
    third.start()
    wait_for_view(nodes, names(nodes), alive=names(nodes))
    # Back, the third holds the old value. The tombstones supersede it, but must not be
    # forgotten because of that: nothing would supersede the old value afterwards.
    assert replica_values(third, b"doomed") == {b"old value"}
    watch_until = time.monotonic() + 1.5
    while time.monotonic() < watch_until:
        for node in (first, second):
            assert replica_versions(node, b"doomed"), f"{node.name} collected too early"
        time.sleep(0.1)
    with SyncKeyValueClient(first.address) as client, pytest.raises(DistlabError) as missing:
        client.get(b"doomed", r=3)  # the tombstone wins, and read repair carries it to the third
    assert missing.value.kind is errors.NOT_FOUND
    wait_until(
        lambda: all(replica_versions(node, b"doomed") == () for node in nodes),
        "once every replica had the tombstone, all collected it",
    )


def test_without_the_interlock_a_deleted_value_comes_back(start_node: StartNode) -> None:
    """Negative control: the safety switch off shows the anomaly it prevents (resurrection)."""
    nodes = start_cluster(
        start_node,
        3,
        "--strict-quorum",
        "--anti-entropy-interval-ms",
        "0",
        "--no-tombstone-gc-interlock",
        *TOMBSTONE_GC_FAST,
    )
    first, second, third = nodes
    with SyncKeyValueClient(first.address) as client:
        client.put(b"doomed", b"old value", w=3)
    third.kill()
    wait_for_view([first, second], names(nodes), alive={first.name, second.name})
    delete_everywhere(first.address, b"doomed")
    wait_until(
        lambda: (
            replica_versions(first, b"doomed") == () and replica_versions(second, b"doomed") == ()
        ),
        "the unguarded GC forgot the tombstone",
    )
    third.start()
    wait_for_view(nodes, names(nodes), alive=names(nodes))
    with SyncKeyValueClient(first.address) as client:
        assert client.get(b"doomed", r=3).values == (b"old value",), "the delete was undone"
