"""The shell around ``distlab.raft.core``: a Raft node with durable storage, a network and a
replicated state machine: ``propose(command) -> Applied`` and ``read(query) -> Applied`` over any
``StateMachine`` (``distlab raft node`` runs the key-value register of ``distlab.raft.register``).

The core does no I/O; this module does all of it, on one asyncio loop, in the order the core's
Ready recipe demands. One driver task owns the core: nothing else calls it, so a Ready is
always carried out completely before the core sees the next input.

The driver loop, each turn:

1. Feed the core what arrived since the last turn, in arrival order: ticks (one every
   ``tick_ms``), messages from peers, proposals and read requests from clients.
2. If it has a Ready: hand its hard state, entries and snapshot to the storage writer
   (``distlab.raft.writer``: one queue, written in order by a worker thread, one fsync for every
   group of writes that queued up while the previous group was on disk) and wait until it and
   every write before it are durable. A Ready that changes only the commit index needs no fsync:
   once the writer is idle, it is written directly.
3. Send its messages (each peer has a sender task writing batches on one long-lived stream; a
   full queue drops, as a lossy network would, and Raft retransmits). A leader's Ready
   (``Ready.send_before_persist``) promises nothing about its own disk, so it sends first and
   its followers write while it writes (thesis 10.2.1); any other Ready (a vote, an
   acknowledgement) sends only once its write is durable.
4. Apply its committed entries to the state machine in order, through the session table
   (thesis 6.3: a retried command is answered, not applied again), and answer the proposals
   waiting on them; install a received snapshot first; answer the reads whose read index is
   applied.
5. ``accept`` or ``advance`` the core; every ``snapshot_entries`` applied entries, compact: the
   sessions and the state machine's snapshot become the snapshot and the log before it is
   dropped (the writer compacts the stored log after the writes before it).

The batching (many entries per append, one fsync per batch) comes from that wait: while a
Ready's write is on its way, new proposals and appends queue up and go into the next Ready
together.

With ``async_writes`` (``--async-writes``; etcd's AsyncStorageWrites) a leader does not wait for
its own write at all: it hands it over, ``accept``-s the Ready, and goes on; the writer's report
goes into the core (``RaftCore.persisted``) like any other input, and only then does the leader's
own copy count toward commitment. That pays when the leader would otherwise sit idle on a slow
disk. It is off by default because on a machine whose CPU, not its disk, is the limit it does
worse: the leader no longer pauses for its fsync, so it takes many small Readies instead of a few
large ones. ``distlab bench raft`` on this 2-core machine (3 nodes, 64 clients, fsync always):
puts at 0.49-0.67x the echo waiting (mean 0.57 over 20 runs), 0.35-0.48x with
``--async-writes``.

A proposal is answered when its entry is applied: definitely failed when another entry took its
index (it was never committed and never will be), indefinitely (DEADLINE_EXCEEDED) if it is
still pending at the deadline. A read is served through ReadIndex (thesis 6.4): linearizable
without writing to the log. Writes and reads on a follower fail with FAILED_PRECONDITION naming
the leader.

What it leaves out: proposals forwarded by followers; membership changes from the command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc
import grpc.aio

from distlab.chaos.rpc_faults import LinkFaults, message_fate
from distlab.common import errors
from distlab.common.errors import DistlabError
from distlab.common.logs import log_event
from distlab.common.wal_file import WalOptions
from distlab.proto import raft_pb2, raft_pb2_grpc
from distlab.raft import codec
from distlab.raft.core import (
    Config,
    Entry,
    EntryKind,
    Message,
    NotLeaderError,
    ProposalDroppedError,
    RaftCore,
    Ready,
)
from distlab.raft.sessions import SESSION_NONE, Outcome, SessionTable
from distlab.raft.storage import RaftStorage
from distlab.raft.writer import StorageFailedError, StorageWriter

logger = logging.getLogger("distlab.raft")

# 50 ms ticks with the core's 10-tick election timeout: elections start 0.5-1 s after the
# leader goes quiet, well above loopback round trips and a busy machine's scheduling hiccups.
TICK_MS_DEFAULT = 50
ELECTION_TICKS_DEFAULT = 10
HEARTBEAT_TICKS_DEFAULT = 2
# Messages waiting per peer: beyond this the peer is slow or gone, and Raft resends anyway.
SEND_QUEUE_MESSAGES_MAX = 4096
SEND_BATCH_MESSAGES_MAX = 256
# A write to a peer's stream that takes longer than this (the peer is paused, or the link is
# cut) gives the stream up; a new one is opened for the next batch.
PEER_WRITE_TIMEOUT_S = 1.0
# After a broken stream, a pause before the next one, so a dead peer is not redialled in a
# tight loop (the channel adds its own reconnect backoff).
PEER_STREAM_RETRY_S = 0.1
# Every RPC has a deadline, a stream too: each lives at most this long, and is ended cleanly and
# replaced once it is older than STREAM_ROTATE_S, well before the deadline can cut off a write.
STREAM_DEADLINE_S = 120.0
STREAM_ROTATE_S = 60.0
STEP_METHOD = "Step"  # the name fault-injection rules match node-to-node messages by
# Inputs waiting for the driver: past this, clients are told to back off.
INBOX_MAX = 65_536
# Appends in flight to one follower. One: entries proposed while an append is out wait for its
# answer and go together in the next, which is what batches when the machine's CPU, not the
# link, is the limit. On this 2-core machine, 3 nodes, 64 clients, uvloop (``distlab bench raft``,
# two runs each): 0.589x and 0.589x the echo with one, 0.550x and 0.556x with four (before uvloop
# four did worse still: 1,273 puts/s against 1,763). Pipelining pays where the round trip is long
# compared with handling a batch (a WAN), which is why the core allows more.
INFLIGHT_APPENDS_DEFAULT = 1
# Compact after this many applied entries: restart replays at most this many.
SNAPSHOT_ENTRIES_DEFAULT = 10_000

# A logged command: the client's session id and sequence number (thesis 6.3), then the command.
_ENVELOPE = struct.Struct(">QQ")
# A snapshot: the session table's length, the table, then the state machine's snapshot.
_SNAPSHOT_HEADER = struct.Struct(">I")


class StateMachine(Protocol):
    """The application a Raft node replicates. It must be deterministic: every replica applies
    the same commands in the same order and must reach the same state and responses."""

    def apply(self, command: bytes) -> bytes:
        """Apply a committed command; the response goes back to the proposer."""
        ...

    def query(self, query: bytes) -> bytes:
        """Answer a read-only query from the applied state."""
        ...

    def snapshot(self) -> bytes: ...

    def restore(self, data: bytes) -> None: ...


@dataclass(frozen=True, slots=True)
class Session:
    """Who proposes (a random 64-bit id, not 0) and which of its commands this is (1, 2, ...,
    one at a time; a retry reuses the number): thesis 6.3."""

    client_id: int
    sequence: int

    def __post_init__(self) -> None:
        if not 0 < self.client_id < 2**64 or not 0 < self.sequence < 2**64:
            raise ValueError("a session needs a client id and a sequence number in [1, 2**64)")


@dataclass(frozen=True, slots=True)
class Applied:
    index: int  # the log index it was applied at (a read: the read index)
    response: bytes


@dataclass(frozen=True, slots=True)
class RaftNodeOptions:
    node_id: str
    data_dir: Path
    peers: dict[str, str]  # node id -> address, every voter including this node
    tick_ms: int = TICK_MS_DEFAULT
    election_ticks: int = ELECTION_TICKS_DEFAULT
    heartbeat_ticks: int = HEARTBEAT_TICKS_DEFAULT
    snapshot_entries: int = SNAPSHOT_ENTRIES_DEFAULT
    inflight_appends: int = INFLIGHT_APPENDS_DEFAULT
    # A leader hands its writes to the storage writer and goes on without waiting for them
    # (``RaftCore.accept``; etcd's AsyncStorageWrites). Off by default: see the module docstring.
    async_writes: bool = False
    wal: WalOptions = field(default_factory=WalOptions)
    seed: int | None = None
    peer_routes: dict[str, str] = field(default_factory=dict)  # address -> address to dial

    def __post_init__(self) -> None:
        if self.node_id not in self.peers:
            raise ValueError(f"--peers must name this node ({self.node_id}) with its address")


class _PeerStream:
    """One open ``Raft.Step`` stream to a peer, and when it was opened."""

    def __init__(self, stub: raft_pb2_grpc.RaftStub) -> None:
        # grpc.aio's writer style (a call opened without a request iterator, fed with write) is
        # not in the generated stubs, which know only the iterator style.
        open_stream: Any = stub.Step
        self.call: grpc.aio.StreamUnaryCall[raft_pb2.StepRequest, raft_pb2.StepResponse]
        self.call = open_stream(timeout=STREAM_DEADLINE_S)
        self.opened_at = time.monotonic()

    def expired(self) -> bool:
        return self.call.done() or time.monotonic() - self.opened_at > STREAM_ROTATE_S

    async def end(self) -> None:
        """Half-close and wait for the peer to take what was written; give up quietly."""
        try:
            async with asyncio.timeout(PEER_WRITE_TIMEOUT_S):
                await self.call.done_writing()
                await self.call
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError, TimeoutError):
            self.call.cancel()


@dataclass
class _Pending:
    term: int
    future: asyncio.Future[Applied]


class RaftNode:
    def __init__(
        self,
        options: RaftNodeOptions,
        state_machine: StateMachine,
        faults: LinkFaults | None = None,
        *,
        on_failure: Callable[[], None] | None = None,
    ) -> None:
        self.options = options
        self.state_machine = state_machine
        self.sessions = SessionTable()
        self.faults = faults or LinkFaults()
        self._closed = False
        self.node_id = options.node_id
        self.storage, recovered = RaftStorage.open(options.data_dir / "raft", options.wal)
        self.writer = StorageWriter(self.storage)
        seed = options.seed if options.seed is not None else time.time_ns()
        self.core = RaftCore(
            Config(
                node_id=options.node_id,
                election_ticks=options.election_ticks,
                heartbeat_ticks=options.heartbeat_ticks,
                max_inflight_appends=options.inflight_appends,
            ),
            options.peers.keys(),
            random.Random(seed),
            hard_state=recovered.hard_state,
            entries=recovered.entries,
            snapshot=recovered.snapshot,
        )
        if recovered.snapshot is not None:
            self._restore(recovered.snapshot.data)
        self._inbox: deque[Callable[[], None]] = deque()
        self._wake = asyncio.Event()
        self._proposals: dict[int, _Pending] = {}
        self._reads: dict[int, asyncio.Future[int]] = {}
        self._ready_reads: list[tuple[int, int]] = []  # (read index, request id)
        self._next_read_id = 1
        self._applied_since_snapshot = 0
        self._send_queues: dict[str, asyncio.Queue[Message]] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._tasks: list[asyncio.Task[None]] = []
        # Set when the driver fails; ``on_failure`` then asks the server to stop.
        self.failure: BaseException | None = None
        self._on_failure = on_failure

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self.writer.start()
        for peer in self.options.peers:
            if peer != self.node_id:
                self._send_queues[peer] = asyncio.Queue(SEND_QUEUE_MESSAGES_MAX)
                self._tasks.append(asyncio.create_task(self._sender(peer), name=f"send-{peer}"))
        self._tasks.append(asyncio.create_task(self._ticker(), name="ticker"))
        self._tasks.append(asyncio.create_task(self._driver(), name="driver"))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for channel in self._channels.values():
            await channel.close()
        for pending in self._proposals.values():
            if not pending.future.done():
                pending.future.set_exception(
                    DistlabError(
                        errors.DEADLINE_EXCEEDED,
                        "the node stopped before the write committed; it may still commit",
                    )
                )
        await self.writer.close()
        await asyncio.to_thread(self.storage.close)

    # ------------------------------------------------------------------ inputs

    def _submit(self, action: Callable[[], None]) -> None:
        if self.failure is not None:
            raise self._failed_error()
        if len(self._inbox) >= INBOX_MAX:
            raise DistlabError(errors.RESOURCE_EXHAUSTED, "the Raft node's inbox is full")
        self._inbox.append(action)
        self._wake.set()

    def receive(self, messages: list[Message]) -> None:
        """Messages from a peer. A full inbox drops them, as a congested network would: Raft
        resends what matters, and the peer's stream stays open."""
        for message in messages:
            if len(self._inbox) >= INBOX_MAX:
                return
            self._inbox.append(functools.partial(self.core.step, message))
        self._wake.set()

    async def propose(
        self, command: bytes, deadline_s: float, session: Session | None = None
    ) -> Applied:
        """Commit and apply ``command``; its response and the index it was applied at. With a
        session, a retry of a command already applied gets the first response (thesis 6.3)."""
        loop = asyncio.get_running_loop()
        applied: asyncio.Future[Applied] = loop.create_future()
        proposed_at: list[int] = []
        client_id, sequence = (
            (session.client_id, session.sequence) if session else (SESSION_NONE, 0)
        )
        data = _ENVELOPE.pack(client_id, sequence) + command

        def act() -> None:
            try:
                index = self.core.propose(data)
            except (NotLeaderError, ProposalDroppedError) as error:
                if not applied.done():  # it may have timed out in the inbox
                    applied.set_exception(self._not_leader(error))
                return
            self._proposals[index] = _Pending(self.core.term, applied)
            proposed_at.append(index)

        self._submit(act)
        try:
            async with asyncio.timeout(deadline_s):
                return await applied
        except TimeoutError:
            if proposed_at:
                self._proposals.pop(proposed_at[0], None)
            raise DistlabError(
                errors.DEADLINE_EXCEEDED, "not committed before the deadline; it may still be"
            ) from None

    async def read(self, query: bytes, deadline_s: float) -> Applied:
        """ReadIndex (thesis 6.4): the state machine's answer to ``query`` once the leader has
        confirmed it leads and applied everything committed when the read arrived."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[int] = loop.create_future()
        request_id = self._next_read_id
        self._next_read_id += 1

        def act() -> None:
            try:
                self.core.read_index(request_id)
            except (NotLeaderError, ProposalDroppedError) as error:
                if not done.done():
                    done.set_exception(self._not_leader(error))
                return
            self._reads[request_id] = done

        self._submit(act)
        try:
            async with asyncio.timeout(deadline_s):
                index = await done
        except TimeoutError:
            self._reads.pop(request_id, None)
            raise DistlabError(
                errors.UNAVAILABLE, "leadership could not be confirmed before the deadline"
            ) from None
        return Applied(index, self.state_machine.query(query))

    def _not_leader(self, error: Exception) -> DistlabError:
        leader = getattr(error, "leader", None) or self.core.leader
        address = self.options.peers.get(leader or "", "")
        return DistlabError(
            errors.FAILED_PRECONDITION,
            f"not the leader; leader={leader or 'unknown'} address={address or 'unknown'}",
        )

    def leader_address(self) -> str:
        return self.options.peers.get(self.core.leader or "", "")

    # ------------------------------------------------------------------ the driver

    async def _ticker(self) -> None:
        interval_s = self.options.tick_ms / 1000
        while True:
            await asyncio.sleep(interval_s)
            self._submit(self.core.tick)

    async def _driver(self) -> None:
        """Run the loop. If it fails (a write the disk refused, or a bug), the core may be
        halfway through a Ready and cannot go on: every waiting call fails and the node asks
        its server to stop, as a key-value node does when its WAL fails (chaos matrix row 17);
        a restart recovers from what the log holds."""
        try:
            await self._drive()
        except Exception as error:
            self.failure = error
            log_event(logger, "driver_failed", logging.CRITICAL, error=repr(error))
            failed = self._failed_error()
            for pending in self._proposals.values():
                if not pending.future.done():
                    pending.future.set_exception(failed)
            for read in self._reads.values():
                if not read.done():
                    read.set_exception(failed)
            if self._on_failure is not None:
                self._on_failure()
            if not isinstance(error, StorageFailedError):
                raise  # a bug: keep its traceback

    def _failed_error(self) -> DistlabError:
        kind = errors.STORAGE_FAILED if isinstance(self.failure, StorageFailedError) else None
        return DistlabError(
            kind or errors.UNAVAILABLE,
            f"the Raft node failed ({self.failure!r}) and is stopping; a write in progress may "
            "still commit",
        )

    async def _drive(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._inbox:  # step 1
                action = self._inbox.popleft()
                try:
                    action()
                except ValueError as error:
                    log_event(logger, "input_refused", logging.WARNING, error=str(error))
            while self.core.has_ready():
                await self._handle(self.core.ready())
                while self._inbox:
                    # Inputs that arrived during the fsync: into the core before the next
                    # Ready, so they share its fsync.
                    self._inbox.popleft()()

    async def _handle(self, ready: Ready) -> None:
        writes = ready.hard_state is not None or bool(ready.entries) or ready.snapshot is not None
        accepted = ready.send_before_persist and self.options.async_writes
        if ready.send_before_persist:
            self._send(ready.messages)  # step 3 first: a leader's followers write as it writes
        if accepted:
            if writes:  # step 2, left to the writer
                written = self.writer.save(
                    ready.hard_state, ready.entries, None, sync=ready.must_sync
                )
                last = ready.entries[-1] if ready.entries else None
                written.add_done_callback(functools.partial(self._on_written, last))
        elif ready.must_sync:  # step 2; the writer's queue is in order, so this waits for all
            await self.writer.save(ready.hard_state, ready.entries, ready.snapshot, sync=True)
        else:
            if not self.writer.idle():
                await self.writer.flushed()  # what its messages may promise
            if writes:
                # Only the commit index: a write to the page cache, too short to hand to a
                # thread. The writer is idle now, so writing here keeps the order.
                self.storage.save(ready.hard_state, (), None, sync=False)
        if not ready.send_before_persist:
            self._send(ready.messages)  # step 3
        if ready.snapshot is not None:  # step 4
            self._restore(ready.snapshot.data)
        for entry in ready.committed:
            self._apply(entry)
        self._ready_reads.extend((state.index, state.request_id) for state in ready.read_states)
        if accepted:  # step 5
            self.core.accept(ready)
        else:
            self.core.advance(ready)
        self._answer_reads()
        if self._applied_since_snapshot >= self.options.snapshot_entries:
            await self._compact()

    def _on_written(self, last: Entry | None, written: asyncio.Future[None]) -> None:
        """The writer finished a write nobody waited for: report it to the core through the
        inbox (never refused: the core must learn it), or stop the driver if it failed."""
        error = None if written.cancelled() else written.exception()
        if error is not None:
            log_event(logger, "storage_failed", logging.ERROR, error=str(error))
            self._inbox.append(functools.partial(_raise, error))
        elif last is not None:
            self._inbox.append(functools.partial(self.core.persisted, last.index, last.term))
        else:
            return
        self._wake.set()

    def _send(self, messages: tuple[Message, ...]) -> None:
        for message in messages:
            queue = self._send_queues.get(message.target)
            if queue is not None:
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(message)

    def _apply(self, entry: Entry) -> None:
        result = None
        if entry.kind is EntryKind.NORMAL:
            client_id, sequence = _ENVELOPE.unpack_from(entry.data)
            result = self.sessions.apply(
                client_id,
                sequence,
                entry.index,
                entry.data[_ENVELOPE.size :],
                self.state_machine.apply,
            )
        self._applied_since_snapshot += 1
        pending = self._proposals.pop(entry.index, None)
        if pending is None or pending.future.done():
            return
        if pending.term != entry.term:
            pending.future.set_exception(
                DistlabError(
                    errors.FAILED_PRECONDITION,
                    "leadership changed and another entry took this one's place; retry",
                )
            )
        elif result is None or result.outcome in (Outcome.APPLIED, Outcome.DUPLICATE):
            index, response = (result.index, result.response) if result else (entry.index, b"")
            pending.future.set_result(Applied(index, response))
        else:
            pending.future.set_exception(
                DistlabError(
                    errors.FAILED_PRECONDITION,
                    f"the session's command is {result.outcome.value}: not applied; "
                    "start a new session",
                )
            )

    def _restore(self, data: bytes) -> None:
        (length,) = _SNAPSHOT_HEADER.unpack_from(data)
        start = _SNAPSHOT_HEADER.size
        self.sessions = SessionTable.decode(data[start : start + length])
        self.state_machine.restore(data[start + length :])

    def _snapshot(self) -> bytes:
        sessions = self.sessions.encode()
        return _SNAPSHOT_HEADER.pack(len(sessions)) + sessions + self.state_machine.snapshot()

    def _answer_reads(self) -> None:
        applied = self.core.applied_index
        still_waiting = []
        for index, request_id in self._ready_reads:
            future = self._reads.pop(request_id, None)
            if future is None or future.done():
                continue
            if index <= applied:
                future.set_result(index)
            else:
                self._reads[request_id] = future
                still_waiting.append((index, request_id))
        self._ready_reads = still_waiting

    async def _compact(self) -> None:
        applied = self.core.applied_index
        self.core.compact(applied, self._snapshot())
        snapshot = self.core.snapshot
        assert snapshot is not None, "compact just made one"
        await self.writer.compact(snapshot)
        self._applied_since_snapshot = 0
        log_event(logger, "compacted", index=applied, sessions=len(self.sessions))

    # ------------------------------------------------------------------ the network

    def _channel(self, peer: str) -> grpc.aio.Channel:
        channel = self._channels.get(peer)
        if channel is None:
            address = self.options.peers[peer]
            channel = grpc.aio.insecure_channel(
                self.options.peer_routes.get(address, address),
                options=[
                    ("grpc.initial_reconnect_backoff_ms", 100),
                    ("grpc.max_reconnect_backoff_ms", 1000),
                ],
            )
            self._channels[peer] = channel
        return channel

    async def _sender(self, peer: str) -> None:
        """Write this peer's messages, in batches, on one long-lived stream (etcd's rafthttp
        stream transport): a message on an open stream costs a fraction of a unary call. Any
        trouble, a write that does not finish in time or a broken stream, loses the batch (Raft
        resends what matters) and the next batch opens a new stream."""
        queue = self._send_queues[peer]
        address = self.options.peers[peer]
        stream: _PeerStream | None = None
        try:
            while True:
                batch = [await queue.get()]
                while not queue.empty() and len(batch) < SEND_BATCH_MESSAGES_MAX:
                    batch.append(queue.get_nowait())
                fate = message_fate(self.faults, address, STEP_METHOD)
                if fate.delay_s > 0:
                    await asyncio.sleep(fate.delay_s)
                if fate.copies == 0:
                    continue
                request = raft_pb2.StepRequest(messages=[codec.message_to_proto(m) for m in batch])
                if stream is not None and stream.expired():
                    await stream.end()
                    stream = None
                if stream is None:
                    stream = _PeerStream(raft_pb2_grpc.RaftStub(self._channel(peer)))
                try:
                    async with asyncio.timeout(PEER_WRITE_TIMEOUT_S):
                        for _ in range(fate.copies):
                            await stream.call.write(request)
                except (grpc.aio.AioRpcError, asyncio.InvalidStateError, TimeoutError):
                    stream.call.cancel()
                    stream = None
                    await asyncio.sleep(PEER_STREAM_RETRY_S)
        finally:
            if stream is not None:
                stream.call.cancel()

    # ------------------------------------------------------------------ views

    def status(self) -> dict[str, Any]:
        core = self.core
        return {
            "node_id": self.node_id,
            "role": str(core.role),
            "term": core.term,
            "leader": core.leader or "",
            "leader_address": self.leader_address(),
            "commit_index": core.commit_index,
            "applied_index": core.applied_index,
            "voters": sorted(core.voters),
        }


def _raise(error: BaseException) -> None:
    raise error
