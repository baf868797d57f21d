"""A node of the Dynamo-style store: the asyncio shell that runs the cores.

The decisions live in pure modules: whom to write to and when a quorum is reached
(``coordinator``), how versions compare and merge (``versioning``), who is in the cluster and
alive (``membership``), where two replicas differ (``merkle``). This module does the I/O they
ask for: local durable writes (``replica``, ``hints``), calls to peers (``peers``), and the
background loops. Section numbers are those of DeCandia et al., "Dynamo: Amazon's Highly
Available Key-value Store", SOSP 2007.

A put, as the coordinator runs it (4.5, 4.6):
  1. Plan from the ring walk and the failure detector's view: the top N live owners, and in
     sloppy mode a fallback (with a hint) for each owner that is down. Too few targets for W:
     refuse at once, a definite error, nothing written.
  2. If this node is not a live owner of the key, forward the request to the first one (once).
  3. Mint the new version from the locally stored siblings and the client's context, and store
     it durably here, under the key's lock (so no two puts mint the same dot).
  4. Send the new version to every other target in parallel; each acknowledgement is an fsync
     there. Answer the client once W targets (this node included) acknowledged; the remaining
     sends go on in the background. Not enough acknowledgements by the deadline: an indefinite
     error, because the value is durable here and may spread by read repair.

A get (4.5, 5 "read repair"):
  1. Plan the live owners (and fallbacks in sloppy mode); too few for R: refuse, definite.
  2. Ask them all; answer once R replied, with the reconciled siblings and their context.
  3. In the background, wait for the stragglers, then send each replica that was stale or missing
     the key the reconciled set (a merge there).

Background loops: gossip every round (4.8); hinted handoff to owners that are back (4.6);
anti-entropy with a random peer (4.7), comparing Merkle trees of the keys both replicate (one
tree per pair of nodes over the keys both replicate, rather than one per key range: the same
comparison with one exchange instead of one per range); tombstone collection after a grace
period, guarded by an interlock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from distlab.common import errors
from distlab.common.clock import Clock, SystemClock
from distlab.common.errors import DistlabError, invalid_argument
from distlab.common.hashring import DEFAULT_VNODES_PER_NODE, TOKEN_COUNT, HashRing, TokenRange
from distlab.common.limits import Limits
from distlab.common.logs import log_event
from distlab.common.rpc import error_from_rpc
from distlab.kvstore import codec
from distlab.kvstore.coordinator import (
    Outcome,
    QuorumConfig,
    ReadTracker,
    ReplicaTarget,
    WriteTracker,
    coordinator_for,
    plan_read,
    plan_write,
)
from distlab.kvstore.hints import HintStore
from distlab.kvstore.membership import (
    Membership,
    MembershipConfig,
    MemberState,
    MemberStatus,
    MergeResult,
)
from distlab.kvstore.merkle import MerkleTree
from distlab.kvstore.peers import Peers
from distlab.kvstore.replica import LocalReplica
from distlab.kvstore.storage import SCAN_ENTRIES_MAX, StorageEngine, StorageOptions
from distlab.kvstore.versioning import (
    CLOCK_ENTRIES_MAX_DEFAULT,
    Version,
    decode_context,
    decode_siblings,
    digest_encoded,
    encode_context,
    encode_siblings,
    last_writer_wins,
    read_context,
    write_context,
)
from distlab.proto import kvstore_pb2

logger = logging.getLogger("distlab.kvstore")

# A replica call gets at most this long even when the client allows more: a replica that slow is
# as good as down for this request, and the coordinator should decide while the client waits.
REPLICA_CALL_MS_DEFAULT = 2_000
# Gossip, handoff and anti-entropy calls are background work: short deadlines keep a dead peer
# from stalling a loop.
BACKGROUND_CALL_MS = 2_000
HANDOFF_INTERVAL_MS_DEFAULT = 1_000
# Dynamo runs anti-entropy continuously in the background; every 10 s with one random peer keeps
# a 3-node cluster within a few rounds of agreement at little cost.
ANTI_ENTROPY_INTERVAL_MS_DEFAULT = 10_000
MERKLE_DEPTH = 8  # 256 leaves: a few KiB per exchange; a differing leaf holds ~1/256 of keys
FETCH_PAGE_KEYS = 500  # keys per FetchKeys page: bounded message size and memory
FULL_CIRCLE = TokenRange(0, 0)
FORWARDED_METADATA_KEY = "distlab-forwarded"
# A tombstone must outlive every way an older value could still arrive: a hint on a fallback, a
# replica that was down, a write in flight. Cassandra's gc_grace_seconds defaults to 10 days for
# clusters repaired weekly; an hour suits a local cluster whose hints drain within seconds.
TOMBSTONE_GRACE_MS_DEFAULT = 60 * 60 * 1000
TOMBSTONE_GC_INTERVAL_MS_DEFAULT = 60 * 1000
# Background tasks (straggler replies, read repairs) held at once; past it new ones are dropped,
# and anti-entropy repairs what they would have (a limit on everything, TigerBeetle style).
BACKGROUND_TASKS_MAX = 10_000


# How long past its gRPC deadline a background call may run before the event loop cancels it.
CALL_OVERRUN_S = 1.0
# A gossip round does calls of a fraction of the interval and merges their replies: anything
# near this long is a hang, and the loop must go on beating.
GOSSIP_ROUND_S_MAX = 3.0


@dataclass(frozen=True, slots=True)
class KvNodeOptions:
    node_id: str
    data_dir: Path
    seeds: tuple[str, ...] = ()
    quorum: QuorumConfig = field(default_factory=QuorumConfig)
    weight: float = 1.0
    vnodes_per_node: int = DEFAULT_VNODES_PER_NODE
    join: bool = False  # start JOINING and fetch our ranges before serving them
    read_repair: bool = True
    hinted_handoff: bool = True  # False: fallbacks keep their hints and never deliver them
    last_writer_wins: bool = False  # lossy: see versioning.last_writer_wins
    anti_entropy_interval_ms: int = ANTI_ENTROPY_INTERVAL_MS_DEFAULT  # 0: off
    handoff_interval_ms: int = HANDOFF_INTERVAL_MS_DEFAULT
    replica_call_ms: int = REPLICA_CALL_MS_DEFAULT
    clock_entries_max: int = CLOCK_ENTRIES_MAX_DEFAULT
    tombstone_grace_ms: int = TOMBSTONE_GRACE_MS_DEFAULT
    tombstone_gc_interval_ms: int = TOMBSTONE_GC_INTERVAL_MS_DEFAULT  # 0: never collect
    tombstone_gc_interlock: bool = True  # collect only once every replica holds the tombstone
    membership: MembershipConfig = field(default_factory=MembershipConfig)
    storage: StorageOptions = field(default_factory=StorageOptions)
    seed: int | None = None  # for the gossip and anti-entropy choices; None: from the clock
    allow_fault_injection: bool = False  # serve SetBlockedPeers (tests and the chaos harness)
    # Peer address -> address to dial instead (the chaos harness's proxies); empty: direct.
    peer_routes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    context: bytes  # for the writer's next put (versioning.write_context)
    dot_node_id: str  # the new version's dot
    dot_counter: int
    trace: dict[str, Any] | None


@dataclass
class NodeCounters:
    hints_written: int = 0
    hints_delivered: int = 0
    read_repairs: int = 0
    anti_entropy_rounds: int = 0
    anti_entropy_keys_repaired: int = 0
    forwarded: int = 0
    tombstones_collected: int = 0


class KvNode:
    def __init__(self, options: KvNodeOptions, limits: Limits, clock: Clock | None = None) -> None:
        self.options = options
        self.node_id = options.node_id
        self.limits = limits
        self.clock = clock or SystemClock()
        self.engine = StorageEngine.open(options.data_dir / "data", options.storage)
        self.hints = HintStore.open(options.data_dir / "hints", options.storage)
        self.replica = LocalReplica(
            self.engine, self.node_id, last_writer_wins=options.last_writer_wins
        )
        self.peers = Peers(limits, routes=options.peer_routes)
        self.rng = random.Random(options.seed if options.seed is not None else time.time_ns())
        self.ring = HashRing(options.vnodes_per_node)
        self.counters = NodeCounters()
        self._membership: Membership | None = None
        self._loops: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self._ring_changed = asyncio.Event()

    # ------------------------------------------------------------------ lifecycle

    @property
    def membership(self) -> Membership:
        assert self._membership is not None, "start() sets membership"
        return self._membership

    async def start(self, address: str) -> None:
        """Enter the cluster at ``address`` (known only once the server is bound)."""
        status = MemberStatus.JOINING if self.options.join else MemberStatus.NORMAL
        own = MemberState(
            node_id=self.node_id,
            address=address,
            weight=self.options.weight,
            status=status,
            generation=self.clock.wall_ms(),  # a restart's state supersedes the old one's
            heartbeat=0,
        )
        seeds = tuple(seed for seed in self.options.seeds if seed != address)
        self._membership = Membership(own, seeds, self.rng, self.options.membership)
        self._rebuild_ring()
        self._loops.append(asyncio.create_task(self._gossip_loop(), name="gossip"))
        if self.options.hinted_handoff:
            handoff_s = self.options.handoff_interval_ms / 1000
            self._start_loop("handoff", lambda: handoff_s, self.hand_off_hints)
        if self.options.anti_entropy_interval_ms > 0:
            entropy_s = self.options.anti_entropy_interval_ms / 1000
            # Jittered, so nodes started together do not exchange in lockstep.
            self._start_loop(
                "anti-entropy",
                lambda: entropy_s * (0.5 + self.rng.random()),
                self._anti_entropy_round,
            )
        if self.options.tombstone_gc_interval_ms > 0:
            collect_s = self.options.tombstone_gc_interval_ms / 1000
            self._start_loop("tombstone-gc", lambda: collect_s, self.collect_tombstones)
        if self.options.join:
            self._loops.append(asyncio.create_task(self._bootstrap(), name="bootstrap"))
        log_event(logger, "joined_membership", node=self.node_id, status=status.name, seeds=seeds)

    def _start_loop(
        self, name: str, interval_s: Callable[[], float], body: Callable[[], Awaitable[object]]
    ) -> None:
        self._loops.append(asyncio.create_task(self._repeat(name, interval_s, body), name=name))

    async def _repeat(
        self, name: str, interval_s: Callable[[], float], body: Callable[[], Awaitable[object]]
    ) -> None:
        """Run ``body`` every interval until cancelled. A failed round is logged and the next
        one tried: a background loop that died silently would be a node that quietly stopped
        healing the cluster."""
        while True:
            await asyncio.sleep(interval_s())
            try:
                await body()
            except (grpc.RpcError, DistlabError) as error:
                log_event(logger, "round_failed", logging.DEBUG, loop=name, error=str(error))
            except Exception:
                logger.exception("round_crashed", extra={"loop": name})

    async def close(self) -> None:
        for task in self._loops:
            task.cancel()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._loops, *self._background, return_exceptions=True)
        await self.peers.close()
        await self.hints.close()
        await self.engine.close()

    # ------------------------------------------------------------------ ring and liveness

    def _now_ms(self) -> int:
        return self.clock.monotonic_ms()

    def _rebuild_ring(self) -> None:
        ring = HashRing(self.options.vnodes_per_node)
        for node_id, weight in self.membership.ring_members():
            ring.add_node(node_id, weight)
        if ring.nodes != self.ring.nodes:
            log_event(logger, "ring_changed", nodes=list(ring.nodes))
            self._ring_changed.set()
        self.ring = ring

    def _walk(self, key: bytes) -> list[str]:
        ring = self.ring
        if len(ring) == 0:
            raise DistlabError(errors.UNAVAILABLE, "the ring is empty: no node serves keys yet")
        return ring.preference_list(key, len(ring))

    def _live(self) -> frozenset[str]:
        return self.membership.live_nodes(self._now_ms())

    def _address(self, node_id: str) -> str:
        return self.membership.address_of(node_id)

    def _spawn(self, work: Awaitable[Any], name: str) -> None:
        if len(self._background) >= BACKGROUND_TASKS_MAX:
            log_event(logger, "background_dropped", logging.WARNING, task=name)
            return
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ coordinating a write

    async def write(
        self,
        key: bytes,
        value: bytes | None,
        context_bytes: bytes,
        w: int,
        *,
        want_trace: bool,
        forwarded: bool,
        deadline_s: float,
    ) -> WriteOutcome:
        """Coordinate a put (value) or delete (None): the new context, dot and trace."""
        context = _decode_client_context(context_bytes)
        config = self._quorum(r=0, w=w)
        walk = self._walk(key)
        live = self._live()
        plan = plan_write(walk, live, config)
        if not plan.achievable:  # step 1
            raise DistlabError(errors.NOT_ENOUGH_REPLICAS, plan.refusal_message())
        coordinator = coordinator_for(walk, live, config)
        # Dynamo 4.5: a node outside the key's top N forwards to the first live owner; an owner
        # coordinates itself (dots are per coordinator, so any owner may mint the version).
        forward = not plan.can_coordinate(self.node_id) and not forwarded
        if coordinator is not None and coordinator != self.node_id and forward:  # step 2
            return await self._forward_write(
                coordinator, key, value, context_bytes, w, want_trace, deadline_s
            )
        if not plan.can_coordinate(self.node_id):
            raise DistlabError(
                errors.NOT_ENOUGH_REPLICAS,
                "this node is not a replica of the key in its own view of the ring (the views "
                "are converging); retry",
            )
        started = time.monotonic()
        tracker = WriteTracker(plan, config.w, self.node_id)
        version, merged = await self.replica.write_new_version(  # step 3
            key, context, value, self.clock.wall_ms(), self.options.clock_entries_max
        )
        tracker.on_ack(self.node_id, _elapsed_ms(started))
        decided = asyncio.Event()
        # The whole merged set, not just the new version: a read context is a version vector,
        # so {A:2} also covers (A,1). A replica holding (A,2) without (A,1) would hand a reader
        # a context that silently drops (A,1), which that reader never saw.
        payload = encode_siblings(merged)
        hints_sent: list[str] = []
        for target in plan.targets:  # step 4
            if target.node_id == self.node_id:
                continue
            if target.hint_for is not None:
                hints_sent.append(f"{target.node_id} asked to hold a hint for {target.hint_for}")
            self._spawn(
                self._replicate(
                    key, payload, target, tracker, decided, started, deadline_s, hints_sent
                ),
                "replicate",
            )
        if tracker.outcome is Outcome.PENDING:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(decided.wait(), timeout=deadline_s)
            if tracker.outcome is Outcome.PENDING:
                tracker.on_deadline(_elapsed_ms(started))
        trace = _trace_dict(tracker.trace(), hints_sent=hints_sent) if want_trace else None
        if tracker.outcome is Outcome.SUCCEEDED:
            return WriteOutcome(
                encode_context(write_context(version, merged)),
                version.dot.node_id,
                version.dot.counter,
                trace,
            )
        raise DistlabError(tracker.failure_kind(), tracker.failure_message())

    async def _replicate(
        self,
        key: bytes,
        payload: bytes,
        target: ReplicaTarget,
        tracker: WriteTracker,
        decided: asyncio.Event,
        started: float,
        deadline_s: float,
        hints_sent: list[str],
    ) -> None:
        node_id, hint_for = target.node_id, target.hint_for
        request = kvstore_pb2.ReplicaPutRequest(
            key=key, siblings=payload, hint_for=hint_for or "", from_node=self.node_id
        )
        timeout_s = min(self.options.replica_call_ms / 1000, deadline_s)
        try:
            await self.peers.replica(self._address(node_id)).ReplicaPut(request, timeout=timeout_s)
        except grpc.RpcError as rpc_error:
            error = error_from_rpc(rpc_error)
            tracker.on_failure(node_id, _elapsed_ms(started), str(error), definite=error.definite)
            replacement = tracker.replacement_for(node_id)
            if replacement is not None:  # Dynamo 4.6: the next spare holds it, with a hint
                hints_sent.append(
                    f"{replacement.node_id} asked to hold a hint for {replacement.hint_for} "
                    f"after {node_id} failed"
                )
                self._spawn(
                    self._replicate(
                        key, payload, replacement, tracker, decided, started, deadline_s, hints_sent
                    ),
                    "replicate",
                )
        else:
            tracker.on_ack(node_id, _elapsed_ms(started))
            if hint_for is not None:
                self.counters.hints_written += 1
        if tracker.outcome is not Outcome.PENDING:
            decided.set()

    async def _forward_write(
        self,
        coordinator: str,
        key: bytes,
        value: bytes | None,
        context_bytes: bytes,
        w: int,
        want_trace: bool,
        deadline_s: float,
    ) -> WriteOutcome:
        """Dynamo 4.5: a node that is not in the key's top N forwards the write to one that is."""
        self.counters.forwarded += 1
        stub = self.peers.key_value(self._address(coordinator))
        metadata = ((FORWARDED_METADATA_KEY, self.node_id),)
        try:
            if value is None:
                response: Any = await stub.Delete(
                    kvstore_pb2.DeleteRequest(
                        key=key, context=context_bytes, w=w, trace=want_trace
                    ),
                    timeout=deadline_s,
                    metadata=metadata,
                )
            else:
                response = await stub.Put(
                    kvstore_pb2.PutRequest(
                        key=key, value=value, context=context_bytes, w=w, trace=want_trace
                    ),
                    timeout=deadline_s,
                    metadata=metadata,
                )
        except grpc.RpcError as rpc_error:
            raise error_from_rpc(rpc_error) from None
        trace = _decode_trace(response.trace_json)
        if trace is not None:
            trace["forwarded_by"] = self.node_id
        return WriteOutcome(response.context, response.dot.node_id, response.dot.counter, trace)

    # ------------------------------------------------------------------ coordinating a read

    async def read(
        self, key: bytes, r: int, *, want_trace: bool, deadline_s: float
    ) -> tuple[tuple[bytes, ...], bytes, dict[str, Any] | None]:
        """Coordinate a get: (live sibling values, context, trace). NOT_FOUND raises."""
        config = self._quorum(r=r, w=0)
        plan = plan_read(self._walk(key), self._live(), config)
        if not plan.achievable:  # step 1
            raise DistlabError(errors.NOT_ENOUGH_REPLICAS, plan.refusal_message())
        started = time.monotonic()
        tracker = ReadTracker(plan, config.r)
        decided = asyncio.Event()
        asks = [
            asyncio.ensure_future(
                self._ask(key, target.node_id, tracker, decided, started, deadline_s)
            )
            for target in plan.targets
        ]
        with contextlib.suppress(TimeoutError):  # step 2
            await asyncio.wait_for(decided.wait(), timeout=deadline_s)
        if tracker.outcome is Outcome.PENDING:
            tracker.on_deadline(_elapsed_ms(started))
        if self.options.read_repair:
            self._spawn(self._repair_after(key, asks, tracker), "read-repair")  # step 3
        else:
            for ask in asks:
                self._spawn(ask, "straggler")
        if tracker.outcome is not Outcome.SUCCEEDED:
            raise DistlabError(tracker.failure_kind(), tracker.failure_message())
        siblings = self._resolve(tracker.result())
        trace = _trace_dict(tracker.trace()) if want_trace else None
        values = tuple(version.value for version in siblings if version.value is not None)
        if not values:
            raise DistlabError(errors.NOT_FOUND, "no replica that answered holds a live value")
        return values, encode_context(read_context(siblings)), trace

    def _resolve(self, siblings: tuple[Version, ...]) -> tuple[Version, ...]:
        # Replicas already dropped losers when they stored; this only picks among replies.
        if not self.options.last_writer_wins or len(siblings) <= 1:
            return siblings
        winner, _ = last_writer_wins(siblings)
        return (winner,)

    async def _ask(
        self,
        key: bytes,
        node_id: str,
        tracker: ReadTracker,
        decided: asyncio.Event,
        started: float,
        deadline_s: float,
    ) -> None:
        try:
            if node_id == self.node_id:
                versions = self.replica.read(key)
            else:
                timeout_s = min(self.options.replica_call_ms / 1000, deadline_s)
                response = await self.peers.replica(self._address(node_id)).ReplicaGet(
                    kvstore_pb2.ReplicaGetRequest(key=key), timeout=timeout_s
                )
                versions = decode_siblings(response.siblings)
        except grpc.RpcError as rpc_error:
            tracker.on_failure(node_id, _elapsed_ms(started), str(error_from_rpc(rpc_error)))
        except ValueError as error:
            tracker.on_failure(node_id, _elapsed_ms(started), f"undecodable reply: {error}")
        else:
            tracker.on_reply(node_id, versions, _elapsed_ms(started))
        if tracker.outcome is not Outcome.PENDING:
            decided.set()

    async def _repair_after(
        self, key: bytes, asks: Sequence[asyncio.Future[None]], tracker: ReadTracker
    ) -> None:
        await asyncio.gather(*asks, return_exceptions=True)
        for repair in tracker.repairs():
            payload = encode_siblings(repair.versions)
            try:
                if repair.node_id == self.node_id:
                    await self.replica.merge(key, repair.versions)
                else:
                    await self.peers.replica(self._address(repair.node_id)).ReplicaPut(
                        kvstore_pb2.ReplicaPutRequest(
                            key=key, siblings=payload, from_node=self.node_id
                        ),
                        timeout=BACKGROUND_CALL_MS / 1000,
                    )
            except grpc.RpcError:
                continue  # anti-entropy will get there
            self.counters.read_repairs += 1

    def _quorum(self, *, r: int, w: int) -> QuorumConfig:
        try:
            return self.options.quorum.with_overrides(r=r or None, w=w or None)
        except ValueError as error:
            raise invalid_argument("r" if r else "w", str(error)) from error

    # ------------------------------------------------------------------ replica side

    async def replica_put(self, key: bytes, siblings: bytes, hint_for: str) -> None:
        try:
            versions = decode_siblings(siblings)
        except ValueError as error:
            raise invalid_argument("siblings", str(error)) from error
        if hint_for and hint_for != self.node_id:
            await self.hints.add(hint_for, key, versions)
            return
        await self.replica.merge(key, versions)

    def replica_get(self, key: bytes) -> bytes:
        return encode_siblings(self.replica.read(key))

    # ------------------------------------------------------------------ membership (4.8)

    async def gossip_received(self, states: list[MemberState]) -> tuple[MemberState, ...]:
        await self._apply_merge(self.membership.merge(states, self._now_ms()))
        return self.membership.digest()

    async def _apply_merge(self, result: MergeResult) -> None:
        if result.ring_changed:
            self._rebuild_ring()
        for node_id in result.recovered | result.restarted:
            if node_id != self.node_id:
                await self.peers.reset(self._address(node_id))

    async def _gossip_loop(self) -> None:
        interval_s = self.options.membership.gossip_interval_ms / 1000
        loop = asyncio.get_running_loop()
        next_round = loop.time()
        while True:
            # Rounds are timed start to start, and a round's calls run side by side with a
            # deadline inside the interval: a dead peer must not stretch the round, or every
            # heartbeat this node relays would age and healthy peers would look down.
            next_round += interval_s
            try:
                targets = self.membership.tick(self._now_ms())
                # A round that hangs, whatever the cause, would freeze our heartbeat: every
                # peer would see this node down although it serves. Bound it.
                async with asyncio.timeout(GOSSIP_ROUND_S_MAX):
                    await asyncio.gather(
                        *(self._gossip_with(target.address, interval_s * 0.8) for target in targets)
                    )
            except TimeoutError:
                log_event(logger, "gossip_round_overran", logging.WARNING, s=GOSSIP_ROUND_S_MAX)
            except Exception:
                logger.exception("round_crashed", extra={"loop": "gossip"})
            await asyncio.sleep(max(0.0, next_round - loop.time()))
            next_round = max(next_round, loop.time())

    async def _gossip_with(self, address: str, timeout_s: float) -> None:
        request = kvstore_pb2.GossipRequest(
            members=[codec.member_to_proto(state) for state in self.membership.digest()]
        )
        try:
            # The gRPC deadline should end the call; the event loop's own timeout makes sure a
            # call gRPC fails to end (seen under chaos: a peer paused mid-call) cannot stop the
            # gossip loop, which would freeze this node's heartbeat and make it look dead.
            async with asyncio.timeout(timeout_s + CALL_OVERRUN_S):
                response = await self.peers.replica(address).Gossip(request, timeout=timeout_s)
        except grpc.RpcError:
            return  # the failure detector notices through missing heartbeats, not errors
        except TimeoutError:
            log_event(logger, "call_overran_deadline", logging.WARNING, peer=address, rpc="Gossip")
            return
        states = [codec.member_from_proto(member) for member in response.members]
        await self._apply_merge(self.membership.merge(states, self._now_ms()))

    def ring_view(self) -> list[kvstore_pb2.RingMember]:
        live = self._live()
        shares = _primary_shares(self.ring)
        return [
            kvstore_pb2.RingMember(
                node_id=state.node_id,
                address=state.address,
                status=state.status.name,
                alive=state.node_id in live,
                vnodes=self.ring.vnode_count(state.node_id) if state.node_id in self.ring else 0,
                share=shares.get(state.node_id, 0.0),
            )
            for state in sorted(self.membership.members(), key=lambda state: state.node_id)
        ]

    # ------------------------------------------------------------------ hinted handoff (4.6)

    async def hand_off_hints(self) -> int:
        """Deliver the hints of every target that is alive again; returns how many."""
        delivered = 0
        live = self._live()
        for target in sorted(self.hints.targets()):
            if target not in live or target == self.node_id:
                continue
            address = self._address(target)
            for hint in self.hints.pending_for(target):
                request = kvstore_pb2.ReplicaPutRequest(
                    key=hint.key, siblings=encode_siblings(hint.versions), from_node=self.node_id
                )
                try:
                    await self.peers.replica(address).ReplicaPut(
                        request, timeout=BACKGROUND_CALL_MS / 1000
                    )
                except grpc.RpcError:
                    break  # the target went away again; try next round
                if await self.hints.remove_if_unchanged(hint):
                    delivered += 1
        if delivered:
            self.counters.hints_delivered += delivered
            self.hints.collect_garbage()
            log_event(logger, "hints_delivered", count=delivered)
        return delivered

    # ------------------------------------------------------------------ anti-entropy (4.7)

    async def _anti_entropy_round(self) -> None:
        peers = sorted((self._live() & set(self.ring.nodes)) - {self.node_id})
        if peers:
            await self.anti_entropy_with(self.rng.choice(peers))

    def merkle_tree(self, shared_with: str, depth: int) -> MerkleTree:
        """The tree of the keys this node and ``shared_with`` both replicate."""
        n = self.options.quorum.n
        items = []
        for key, encoded in self._stored_entries():
            owners = self.ring.preference_list(key, n)
            if self.node_id in owners and shared_with in owners:
                items.append((key, digest_encoded(encoded)))
        return MerkleTree.build(FULL_CIRCLE, items, depth)

    async def anti_entropy_with(self, peer: str) -> int:
        """One exchange: compare trees, pull the differing leaves, push ours. Returns the number
        of keys whose sibling sets were sent or merged."""
        local = self.merkle_tree(peer, MERKLE_DEPTH)
        replica_stub = self.peers.replica(self._address(peer))
        response = await replica_stub.MerkleTree(
            kvstore_pb2.MerkleTreeRequest(shared_with=self.node_id, depth=MERKLE_DEPTH),
            timeout=BACKGROUND_CALL_MS / 1000,
        )
        remote = MerkleTree.from_levels(FULL_CIRCLE, MERKLE_DEPTH, list(response.levels))
        leaves = MerkleTree.diff(local, remote).leaves
        self.counters.anti_entropy_rounds += 1
        if not leaves:
            return 0
        exchanged = 0
        async for key, encoded in self._fetch_pages(peer, for_node=self.node_id, leaves=leaves):
            outcome = await self.replica.merge(key, decode_siblings(encoded))
            exchanged += outcome.changed
        wanted = set(leaves)
        n = self.options.quorum.n
        for key, encoded in self._stored_entries():
            if local.leaf_of(key) in wanted and peer in self.ring.preference_list(key, n):
                await replica_stub.ReplicaPut(
                    kvstore_pb2.ReplicaPutRequest(
                        key=key, siblings=encoded, from_node=self.node_id
                    ),
                    timeout=BACKGROUND_CALL_MS / 1000,
                )
                exchanged += 1
        self.counters.anti_entropy_keys_repaired += exchanged
        log_event(logger, "anti_entropy", peer=peer, leaves=len(leaves), keys=exchanged)
        return exchanged

    def fetch_keys(
        self,
        for_node: str,
        joining: bool,
        weight: float,
        depth: int,
        leaves: list[int],
        after_key: bytes,
        limit: int,
    ) -> tuple[list[tuple[bytes, bytes]], bytes]:
        """A page of (key, siblings) that ``for_node`` replicates, and the next cursor."""
        ring = self.ring
        if joining and for_node not in ring:
            ring = ring.copy()
            ring.add_node(for_node, weight)
        leaf_filter = set(leaves)
        tree = MerkleTree.build(FULL_CIRCLE, [], depth) if leaf_filter else None
        n = self.options.quorum.n
        page: list[tuple[bytes, bytes]] = []
        start = after_key + b"\x00" if after_key else None
        while len(page) < limit:
            entries = self.engine.scan(start, None, SCAN_ENTRIES_MAX)
            if not entries:
                return page, b""
            for key, entry in entries:
                start = key + b"\x00"
                if entry.value is None:
                    continue
                if tree is not None and tree.leaf_of(key) not in leaf_filter:
                    continue
                if for_node in ring.preference_list(key, n):
                    page.append((key, entry.value))
                    if len(page) >= limit:
                        return page, key
        return page, page[-1][0] if page else b""

    async def _fetch_pages(
        self, peer: str, *, for_node: str, leaves: list[int] | None = None, joining: bool = False
    ) -> AsyncIterator[tuple[bytes, bytes]]:
        stub = self.peers.replica(self._address(peer))
        after = b""
        while True:
            response = await stub.FetchKeys(
                kvstore_pb2.FetchKeysRequest(
                    for_node=for_node,
                    for_node_joining=joining,
                    for_node_weight=self.options.weight,
                    depth=MERKLE_DEPTH,
                    leaves=leaves or [],
                    after_key=after,
                    limit=FETCH_PAGE_KEYS,
                ),
                timeout=BACKGROUND_CALL_MS / 1000,
            )
            for entry in response.entries:
                yield entry.key, entry.siblings
            if not response.next_after_key:
                return
            after = response.next_after_key

    def _stored_entries(self) -> list[tuple[bytes, bytes]]:
        """Every live stored key and its encoded siblings, in key order (in memory: the whole
        data set lives in the memtable anyway)."""
        result: list[tuple[bytes, bytes]] = []
        start: bytes | None = None
        while True:
            entries = self.engine.scan(start, None, SCAN_ENTRIES_MAX)
            if not entries:
                return result
            for key, entry in entries:
                if entry.value is not None:
                    result.append((key, entry.value))
            start = entries[-1][0] + b"\x00"

    # ------------------------------------------------------------------ tombstone GC

    async def collect_tombstones(self) -> int:
        """Drop keys whose every sibling is a tombstone older than the grace period and, with
        the interlock on, once every replica of the key holds exactly them or nothing (Dynamo
        leaves collecting deletes out; this follows Cassandra's gc_grace and Riak's delete_mode,
        plus a check of the replicas). Without the interlock a
        replica that missed the delete still holds the old value, and once the others have
        forgotten the tombstone, read repair or anti-entropy spreads that value back: the
        deleted key resurrects (the chaos harness shows it). Returns how many keys it dropped.
        Grace is judged on this node's wall clock, so a clock running fast collects early."""
        horizon_ms = self.clock.wall_ms() - self.options.tombstone_grace_ms
        collected = 0
        for key, encoded in self._stored_entries():
            versions = decode_siblings(encoded)
            if not all(version.is_tombstone for version in versions):
                continue
            if max(version.wall_ms for version in versions) > horizon_ms:
                continue
            if self.options.tombstone_gc_interlock and not await self._every_replica_agrees(
                key, versions
            ):
                continue
            if await self.replica.delete_if_unchanged(key, versions):
                collected += 1
        if collected:
            self.counters.tombstones_collected += collected
            self.engine.collect_tombstones(self.engine.stats().applied_sequence)
            log_event(logger, "tombstones_collected", count=collected)
        return collected

    async def _every_replica_agrees(self, key: bytes, tombstones: tuple[Version, ...]) -> bool:
        """The interlock: every other replica holds exactly these tombstones, or nothing.

        Nothing is safe: that replica either collected them already or never had a value, and
        neither can bring a value back. An older value is not safe even though the tombstones
        supersede it: once they are forgotten, nothing would supersede it any more, and read
        repair or anti-entropy would spread it again."""
        for node_id in self.ring.preference_list(key, self.options.quorum.n):
            if node_id == self.node_id:
                continue
            try:
                reply = await self.peers.replica(self._address(node_id)).ReplicaGet(
                    kvstore_pb2.ReplicaGetRequest(key=key), timeout=BACKGROUND_CALL_MS / 1000
                )
            except grpc.RpcError:
                return False  # a replica we cannot ask is a replica that may hold the value
            if decode_siblings(reply.siblings) not in ((), tombstones):
                return False
        return True

    # ------------------------------------------------------------------ join and leave

    async def _bootstrap(self) -> None:
        """A joining node fetches every key it will replicate, then turns NORMAL (4.9)."""
        while not (set(self.ring.nodes) - {self.node_id}):
            self._ring_changed.clear()
            await self._ring_changed.wait()
        fetched = await self._fetch_from_all(joining=True)
        self.membership.set_status(MemberStatus.NORMAL, self._now_ms())
        self._rebuild_ring()
        # A second pass picks up writes that reached the old owners while we were fetching.
        fetched += await self._fetch_from_all(joining=False)
        log_event(logger, "bootstrap_complete", keys=fetched)

    async def _fetch_from_all(self, *, joining: bool) -> int:
        fetched = 0
        for peer in sorted(set(self.ring.nodes) - {self.node_id}):
            for attempt in range(3):
                try:
                    async for key, encoded in self._fetch_pages(
                        peer, for_node=self.node_id, joining=joining
                    ):
                        await self.replica.merge(key, decode_siblings(encoded))
                        fetched += 1
                    break
                except grpc.RpcError:
                    await asyncio.sleep(0.5 * (attempt + 1))
        return fetched

    async def leave(self) -> int:
        """Decommission: hand every key to the nodes that gain it, then leave the ring."""
        after = self.ring.copy()
        if self.node_id in after:
            after.remove_node(self.node_id)
        if len(after) == 0:
            raise DistlabError(errors.FAILED_PRECONDITION, "the last node cannot leave")
        self.membership.set_status(MemberStatus.LEAVING, self._now_ms())
        try:
            handed = await self._hand_over(after)
        except (grpc.RpcError, KeyError) as error:
            # Stay a full member rather than half gone; the operator can retry the leave.
            self.membership.set_status(MemberStatus.NORMAL, self._now_ms())
            raise DistlabError(
                errors.UNAVAILABLE, f"handing over failed, still a member: {error}"
            ) from error
        self.membership.set_status(MemberStatus.LEFT, self._now_ms())
        self._rebuild_ring()
        for peer in sorted(after.nodes):  # tell everyone directly rather than wait for gossip
            await self._gossip_with(self._address(peer), BACKGROUND_CALL_MS / 1000)
        log_event(logger, "left", keys_handed_over=handed)
        return handed

    async def _hand_over(self, after: HashRing) -> int:
        """Send each stored key to the nodes that become its replicas once we are gone, and
        each hint to its key's new first owner. Returns the number of keys sent."""
        n = self.options.quorum.n
        handed = 0
        for key, encoded in self._stored_entries():
            before_owners = set(self.ring.preference_list(key, n))
            for node_id in after.preference_list(key, n):
                if node_id in before_owners:
                    continue
                await self.peers.replica(self._address(node_id)).ReplicaPut(
                    kvstore_pb2.ReplicaPutRequest(
                        key=key, siblings=encoded, from_node=self.node_id
                    ),
                    timeout=BACKGROUND_CALL_MS / 1000,
                )
                handed += 1
        for target in sorted(self.hints.targets()):
            for hint in self.hints.pending_for(target):
                owner = after.preference_list(hint.key, n)[0]
                await self.peers.replica(self._address(owner)).ReplicaPut(
                    kvstore_pb2.ReplicaPutRequest(
                        key=hint.key,
                        siblings=encode_siblings(hint.versions),
                        from_node=self.node_id,
                    ),
                    timeout=BACKGROUND_CALL_MS / 1000,
                )
                await self.hints.remove_if_unchanged(hint)
        return handed


# ---------------------------------------------------------------------- helpers


def _elapsed_ms(started: float) -> float:
    return (time.monotonic() - started) * 1000


def _decode_client_context(context_bytes: bytes) -> Any:
    try:
        return decode_context(context_bytes)
    except ValueError as error:
        raise invalid_argument("context", f"not a context this store issued: {error}") from error


def _trace_dict(trace: Any, **extra: Any) -> dict[str, Any]:
    result: dict[str, Any] = trace.to_dict()
    result.update({key: value for key, value in extra.items() if value})
    return result


def _decode_trace(trace_json: str) -> dict[str, Any] | None:
    if not trace_json:
        return None
    decoded: dict[str, Any] = json.loads(trace_json)
    return decoded


def _primary_shares(ring: HashRing) -> dict[str, float]:
    shares = {}
    for node_id in ring.nodes:
        shares[node_id] = sum(r.width for r in ring.ranges_of(node_id)) / TOKEN_COUNT
    return shares
