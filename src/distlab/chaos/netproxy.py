"""A fault-injecting TCP proxy for each directed link of a chaos cluster, as toxiproxy does it.

Follows toxiproxy (Shopify/toxiproxy): one listener per link, nodes dial their peers only through
it, and "toxics" act on the bytes: ``latency`` (delay plus jitter), ``bandwidth`` (a rate cap per
direction), ``timeout`` (data is swallowed and nothing comes back) and ``reset_peer`` (connections
are reset). The vocabulary is Jepsen's network nemesis (jepsen.nemesis/partitioner, jepsen.net): a
*cut* of a directed link, a *partition* as the set of links cut at once, *heal* to undo them all.
A link is directed: node A dialing node B goes through proxy (A, B), so cutting (A, B) leaves
(B, A) working, which is how one-way partitions are built.

Theory of operation:

- One thread runs one asyncio event loop that owns every listener, connection and counter. The
  control API is synchronous: each call is a message to that loop
  (``asyncio.run_coroutine_threadsafe``) with a short timeout, so the chaos harness may call it
  from its own event loop, and the proxies keep forwarding while the harness is busy.
- Each accepted connection has two *directions* (client to target, target to client). A direction
  is a reader task and a writer task joined by a queue. The reader stamps every chunk with its
  delivery time, ``max(previous delivery in this direction, now + delay + uniform(0, jitter))``,
  so jitter never reorders bytes within a stream; the writer sleeps until then, paces the chunk
  to the link's bandwidth cap and writes it.
- A cut in mode ``drop`` (Jepsen's dropped packets) marks every connection of the link as having
  a *gap*: from then on its bytes are read and counted as dropped, in both directions, and nothing
  is connected to the target for a connection accepted during the cut. Calls hang until their
  deadline. A byte stream with a gap cannot be resumed, so when the cut is lifted every gapped
  connection is reset, as TCP would after its retransmissions ran out; clients reconnect.
- A cut in mode ``reset`` (a refused connection, a fast failure) resets every connection of the
  link at once and resets each new one right after accept.

What it leaves out: packet-level faults below TCP (reordering, duplication and corruption of
segments, which TCP hides from the application anyway), toxiproxy's ``slicer`` and
``limit_data`` toxics, and non-loopback addresses, which this project never touches.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import ipaddress
import math
import random
import socket
import struct
import threading
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, Final, Self, TypeVar

T = TypeVar("T")

# Bytes queued in one direction of one connection, read but not yet written. Past it the reader
# stops reading, so TCP flow control pushes back on the sender instead of the proxy growing
# memory. 4 MiB covers a 1 MiB value plus gRPC framing several times over, and at a 200 ms
# delay still lets 20 MB/s through, far more than a loopback chaos test needs.
DIRECTION_BUFFER_BYTES_MAX: Final = 4 * 1024 * 1024
# One read: the StreamReader's default buffer limit, so a read takes what one wake-up brought.
READ_CHUNK_BYTES_MAX: Final = 64 * 1024
# Links per network: a 16-node cluster has 16 * 15 peer links plus 16 client links (256); 1024
# leaves room for 32 nodes, and each listener is a file descriptor.
LINKS_MAX: Final = 1024
# Open connections per link at once. A gRPC channel holds one connection and a harness a few
# channels per node; more means a leak, and each connection costs two file descriptors.
CONNECTIONS_PER_LINK_MAX: Final = 64
# Longest delay or jitter a condition may ask for: past a minute every deadline we use has
# expired, and a link that slow is better described as cut.
LINK_DELAY_MS_MAX: Final = 60_000.0
# How finely bandwidth is paced: a capped chunk is written in slices of a twentieth of a second's
# worth of bytes, so no 50 ms window carries more than the cap allows (plus one slice).
PACING_SLICES_PER_S: Final = 20
# Connecting to a target on loopback is refused or accepted at once; only a full accept backlog
# makes it wait, and then the client had better see a failure than a hang.
TARGET_CONNECT_TIMEOUT_S: Final = 5.0
# After both directions ended cleanly, a side's last bytes get this long to reach a peer that has
# stopped reading; then the connection is reset so its socket is not held forever.
FLUSH_TIMEOUT_S: Final = 5.0
# A control call waits this long for the proxy loop to answer. The work is a few dictionary
# updates or one bind(), so a loop that does not answer in this time is wedged.
CONTROL_CALL_TIMEOUT_S: Final = 5.0
# close() waits this long for listeners and connections to close and for the thread to end.
CLOSE_TIMEOUT_S: Final = 10.0

CUT_MODES: Final = frozenset({"drop", "reset"})
# SO_LINGER on with a zero timeout: close() sends RST instead of FIN, which is what a client sees
# from a refused or reset connection.
_LINGER_RESET: Final = struct.pack("ii", 1, 0)


@dataclass(frozen=True, slots=True)
class LinkCondition:
    """What one directed link does to its bytes. ``HEALTHY`` forwards them untouched.

    ``cut_mode`` "drop": bytes are swallowed, so calls hang until their deadline; "reset":
    connections are reset, so calls fail fast. ``delay_ms`` is one-way latency added to every
    chunk in both directions of a connection, ``jitter_ms`` a uniform extra 0..jitter_ms per
    chunk (order within a direction is kept), ``bytes_per_s`` a cap per direction (0: none).
    """

    cut: bool = False
    cut_mode: str = "drop"
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    bytes_per_s: int = 0

    def __post_init__(self) -> None:
        if self.cut_mode not in CUT_MODES:
            raise ValueError(f"cut_mode must be one of {sorted(CUT_MODES)}, got {self.cut_mode!r}")
        for name, value in (("delay_ms", self.delay_ms), ("jitter_ms", self.jitter_ms)):
            if not (math.isfinite(value) and 0.0 <= value <= LINK_DELAY_MS_MAX):
                raise ValueError(f"{name} must be within 0..{LINK_DELAY_MS_MAX:g}, got {value!r}")
        if self.bytes_per_s < 0:
            raise ValueError(f"bytes_per_s must be >= 0 (0: unlimited), got {self.bytes_per_s}")


HEALTHY: Final = LinkCondition()


@dataclass(frozen=True, slots=True)
class LinkStats:
    connections: int  # accepted so far, including those reset at once by a cut or a limit
    bytes_forwarded: int  # written to the other side, both directions
    bytes_dropped: int  # read and discarded by a drop cut, both directions


class _Cut(enum.Enum):
    OPEN = "open"
    DROP = "drop"
    RESET = "reset"


class _OnExisting(enum.Enum):
    """What a change of cut does to the connections a link already has."""

    KEEP = "keep"
    MARK_GAPPED = "mark gapped"  # their bytes are dropped from now on
    RESET_ALL = "reset all"


# Every change of cut is legal; the table says what it does to existing connections. In DROP
# every existing connection is gapped (marked at the cut, or accepted during it), and a gapped
# stream cannot be resumed, so leaving DROP resets them all. In RESET no connection survives.
_ON_CUT_CHANGE: Final[dict[tuple[_Cut, _Cut], _OnExisting]] = {
    (_Cut.OPEN, _Cut.OPEN): _OnExisting.KEEP,
    (_Cut.OPEN, _Cut.DROP): _OnExisting.MARK_GAPPED,
    (_Cut.OPEN, _Cut.RESET): _OnExisting.RESET_ALL,
    (_Cut.DROP, _Cut.OPEN): _OnExisting.RESET_ALL,
    (_Cut.DROP, _Cut.DROP): _OnExisting.KEEP,
    (_Cut.DROP, _Cut.RESET): _OnExisting.RESET_ALL,
    (_Cut.RESET, _Cut.OPEN): _OnExisting.KEEP,
    (_Cut.RESET, _Cut.DROP): _OnExisting.MARK_GAPPED,
    (_Cut.RESET, _Cut.RESET): _OnExisting.KEEP,
}


def _cut_of(condition: LinkCondition) -> _Cut:
    if not condition.cut:
        return _Cut.OPEN
    return _Cut.DROP if condition.cut_mode == "drop" else _Cut.RESET


class _Lifecycle(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    CLOSED = "closed"


_LIFECYCLE_TRANSITIONS: Final[dict[_Lifecycle, frozenset[_Lifecycle]]] = {
    _Lifecycle.NEW: frozenset({_Lifecycle.RUNNING, _Lifecycle.CLOSED}),
    _Lifecycle.RUNNING: frozenset({_Lifecycle.CLOSED}),
    _Lifecycle.CLOSED: frozenset(),
}


def _is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _split_address(address: str) -> tuple[str, int]:
    """'127.0.0.1:50051' or '[::1]:50051' -> (host, port); raises ValueError."""
    host, colon, port_text = address.rpartition(":")
    if not colon or not host or not port_text.isdigit():
        raise ValueError(f"address must be host:port, got {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be within 1..65535, got {port} in {address!r}")
    return host, port


def _join_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST, as a refused or reset connection looks to its peer."""
    transport_socket = writer.get_extra_info("socket")
    if transport_socket is not None:
        try:
            transport_socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        except OSError:
            pass  # already closed by the peer: aborting is all that is left to do
    writer.transport.abort()


@dataclass(frozen=True, slots=True)
class _Delivery:
    deliver_at_s: float  # loop time
    data: bytes  # empty: end of stream (the sender half-closed)


class _Link:
    """One directed link: its listener, condition, live connections and counters."""

    def __init__(
        self, source: str, target_name: str, target_host: str, target_port: int, rng: random.Random
    ) -> None:
        self.source = source
        self.target_name = target_name
        self.target_host = target_host
        self.target_port = target_port
        self.rng = rng
        self.condition = HEALTHY
        self.server: asyncio.Server | None = None
        self.address = ""
        self.connections: set[_Connection] = set()
        self.connections_accepted = 0
        self.bytes_forwarded = 0
        self.bytes_dropped = 0

    async def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections_accepted += 1
        cut = _cut_of(self.condition)
        if cut is _Cut.RESET or len(self.connections) >= CONNECTIONS_PER_LINK_MAX:
            _reset(writer)
            return
        connection = _Connection(self, reader, writer, gapped=cut is _Cut.DROP)
        self.connections.add(connection)
        try:
            await connection.run()
        except asyncio.CancelledError:
            # Only ProxyNetwork._shutdown cancels this task. Ending quietly keeps asyncio's
            # client_connected_cb callback from logging the cancellation as an error.
            pass
        finally:
            self.connections.discard(connection)

    def set_condition(self, condition: LinkCondition) -> None:
        action = _ON_CUT_CHANGE[(_cut_of(self.condition), _cut_of(condition))]
        self.condition = condition
        for connection in list(self.connections):
            if action is _OnExisting.MARK_GAPPED:
                connection.gapped = True
            elif action is _OnExisting.RESET_ALL:
                connection.close(reset=True)

    def stats(self) -> LinkStats:
        return LinkStats(self.connections_accepted, self.bytes_forwarded, self.bytes_dropped)


class _Connection:
    """One accepted client connection and its connection to the target."""

    def __init__(
        self,
        link: _Link,
        client_reader: asyncio.StreamReader,
        client_writer: asyncio.StreamWriter,
        *,
        gapped: bool,
    ) -> None:
        self.link = link
        self.client_reader = client_reader
        self.client_writer = client_writer
        self.target_reader: asyncio.StreamReader | None = None
        self.target_writer: asyncio.StreamWriter | None = None
        # Set once bytes were lost to a drop cut: the stream can never be forwarded again.
        self.gapped = gapped
        self.closed = False
        self.tasks: list[asyncio.Task[None]] = []

    async def run(self) -> None:
        reset = True  # unless both directions end cleanly, the client sees a reset
        try:
            if not self.gapped and not await self._connect_target():
                return
            if self.gapped:
                await self._wait_all([self._swallow_until_closed()])
                return
            if await self._forward():
                return
            reset = False
            self.close(reset=False)
            await self._wait_flushed()
        finally:
            self.close(reset=reset)

    async def _connect_target(self) -> bool:
        """Dial the target; False if it refused or this connection was closed meanwhile."""
        try:
            self.target_reader, target_writer = await asyncio.wait_for(
                asyncio.open_connection(self.link.target_host, self.link.target_port),
                TARGET_CONNECT_TIMEOUT_S,
            )
        except (OSError, TimeoutError):
            return False  # the client is reset in turn, as if it had been refused itself
        if self.closed:
            _reset(target_writer)
            return False
        if self.gapped:
            # Cut while dialing: nothing may reach the target, so drop that connection and
            # swallow the client's bytes like any connection accepted during the cut.
            _reset(target_writer)
            self.target_reader = None
            return True
        self.target_writer = target_writer
        return True

    async def _forward(self) -> bool:
        """Pump both directions until both end; True if one failed (a peer reset)."""
        assert self.target_reader is not None
        assert self.target_writer is not None
        upstream = _Direction(self, self.target_writer)
        downstream = _Direction(self, self.client_writer)
        return await self._wait_all(
            [
                upstream.read_loop(self.client_reader),
                upstream.write_loop(),
                downstream.read_loop(self.target_reader),
                downstream.write_loop(),
            ]
        )

    async def _wait_all(self, coroutines: list[Coroutine[Any, Any, None]]) -> bool:
        """Run coroutines as tasks close() can cancel; True as soon as one raises."""
        self.tasks = [asyncio.create_task(coroutine) for coroutine in coroutines]
        for task in self.tasks:
            task.add_done_callback(_retrieve_exception)
        done, _ = await asyncio.wait(self.tasks, return_when=asyncio.FIRST_EXCEPTION)
        return any(not task.cancelled() and task.exception() is not None for task in done)

    async def _swallow_until_closed(self) -> None:
        while True:
            data = await self.client_reader.read(READ_CHUNK_BYTES_MAX)
            if not data:
                await _forever()  # the FIN is lost with the rest: see _forever
            self.link.bytes_dropped += len(data)

    async def _wait_flushed(self) -> None:
        """After a clean close, wait for both sides to flush what they still buffer, or reset."""
        writers = [writer for writer in (self.client_writer, self.target_writer) if writer]
        try:
            await asyncio.wait_for(
                asyncio.gather(*(writer.wait_closed() for writer in writers)), FLUSH_TIMEOUT_S
            )
        except (OSError, TimeoutError):
            self.close(reset=True)

    def close(self, *, reset: bool) -> None:
        """Close both sides (with RST if reset) and stop the pumps. Idempotent, except that a
        reset after a clean close aborts sides still flushing, which close() at shutdown needs."""
        if self.closed and not reset:
            return
        self.closed = True
        for writer in (self.client_writer, self.target_writer):
            if writer is None:
                continue
            if reset:
                _reset(writer)
            else:
                writer.close()
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()


async def _forever() -> None:
    """Wait until cancelled. A gapped stream's end is lost like its bytes: only heal, a reset
    cut or close() ends the connection, so a client never sees a FIN from a cut link."""
    await asyncio.Event().wait()


def _retrieve_exception(task: asyncio.Task[None]) -> None:
    # A pump that fails after its connection was closed has nobody left to tell; retrieving the
    # exception keeps asyncio from logging "Task exception was never retrieved" for it.
    if not task.cancelled():
        task.exception()


class _Direction:
    """Bytes from one side of a connection to the other: a reader, a queue and a writer."""

    def __init__(self, connection: _Connection, destination: asyncio.StreamWriter) -> None:
        self.connection = connection
        self.link = connection.link
        self.destination = destination
        self.queue: asyncio.Queue[_Delivery] = asyncio.Queue()
        self.buffered_bytes = 0
        self.room = asyncio.Event()
        self.last_delivery_at_s = 0.0
        self.paced_until_s = 0.0

    async def read_loop(self, source: asyncio.StreamReader) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await source.read(READ_CHUNK_BYTES_MAX)
            if self.connection.gapped:
                if not data:
                    await _forever()
                self.link.bytes_dropped += len(data)
                continue
            condition = self.link.condition
            jitter_ms = (
                self.link.rng.uniform(0.0, condition.jitter_ms) if condition.jitter_ms else 0.0
            )
            due_at_s = loop.time() + (condition.delay_ms + jitter_ms) / 1000.0
            # Never before the previous chunk: jitter delays bytes but does not reorder them.
            self.last_delivery_at_s = max(self.last_delivery_at_s, due_at_s)
            self.queue.put_nowait(_Delivery(self.last_delivery_at_s, data))
            if not data:
                return
            self.buffered_bytes += len(data)
            while self.buffered_bytes >= DIRECTION_BUFFER_BYTES_MAX:
                self.room.clear()
                await self.room.wait()

    async def write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            delivery = await self.queue.get()
            wait_s = delivery.deliver_at_s - loop.time()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            if not delivery.data:
                if self.connection.gapped:
                    await _forever()
                self.destination.write_eof()
                return
            await self._write_paced(delivery.data)
            self.buffered_bytes -= len(delivery.data)
            if self.buffered_bytes < DIRECTION_BUFFER_BYTES_MAX:
                self.room.set()

    async def _write_paced(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        view = memoryview(data)
        while view:
            if self.connection.gapped:
                self.link.bytes_dropped += len(view)  # in flight when the cut came: lost
                return
            bytes_per_s = self.link.condition.bytes_per_s
            if bytes_per_s == 0:
                piece, view = view, view[len(view) :]
            else:
                wait_s = self.paced_until_s - loop.time()
                if wait_s > 0:
                    await asyncio.sleep(wait_s)
                    continue  # the link may have been cut or re-capped meanwhile
                slice_bytes = max(1, bytes_per_s // PACING_SLICES_PER_S)
                piece, view = view[:slice_bytes], view[slice_bytes:]
                self.paced_until_s = loop.time() + len(piece) / bytes_per_s
            self.destination.write(piece)
            # Counted before awaiting, so a stats() call that runs after the peer got the bytes
            # already sees them.
            self.link.bytes_forwarded += len(piece)
            await self.destination.drain()


class ProxyNetwork:
    """Every directed link's proxy on one background thread; a synchronous, thread-safe API.

    Usage: ``with ProxyNetwork(seed) as network: address = network.add_link("n1", "n2",
    n2_address)``, then point n1 at ``address`` for n2. ``cut``, ``set_condition`` and ``heal``
    inject and lift faults; ``stats`` reads a link's counters.

    Every call raises RuntimeError before start() or after close(), KeyError for a link that was
    never added, and TimeoutError if the proxy loop does not answer within
    CONTROL_CALL_TIMEOUT_S.
    """

    def __init__(self, seed: int = 0, host: str = "127.0.0.1") -> None:
        try:
            is_loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            is_loopback = False
        if not is_loopback:
            # An IP literal, so a listener on port 0 binds one socket and one port (a name like
            # "localhost" may resolve to both 127.0.0.1 and ::1 and get two ports).
            raise ValueError(
                f"host must be a loopback IP address (127.0.0.0/8 or ::1), got {host!r}"
            )
        self.host = host
        self.seed = seed
        self._rng = random.Random(seed)  # used on the proxy loop only
        self._links: dict[tuple[str, str], _Link] = {}  # owned by the proxy loop
        self._binding: set[tuple[str, str]] = set()  # links whose listener is being bound
        self._lifecycle = _Lifecycle.NEW
        self._lifecycle_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        with self._lifecycle_lock:
            self._move_to(_Lifecycle.RUNNING)
            loop = asyncio.new_event_loop()
            running = threading.Event()
            # A daemon thread, so a harness that forgets close() still lets the process exit.
            thread = threading.Thread(
                target=self._run_loop, args=(loop, running), name="distlab-netproxy", daemon=True
            )
            self._loop, self._thread = loop, thread
            thread.start()
            if not running.wait(CONTROL_CALL_TIMEOUT_S):
                raise RuntimeError("the proxy event loop did not start")

    def close(self) -> None:
        with self._lifecycle_lock:
            if self._lifecycle is _Lifecycle.CLOSED:
                return
            self._move_to(_Lifecycle.CLOSED)
            loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return  # never started
        if threading.get_ident() == thread.ident:
            raise RuntimeError("ProxyNetwork.close() called from its own proxy thread")
        try:
            future = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
            future.result(timeout=CLOSE_TIMEOUT_S)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(CLOSE_TIMEOUT_S)

    def add_link(
        self, source: str, target_name: str, target_address: str, listen_port: int = 0
    ) -> str:
        """Listen on host:listen_port (0: any free port), forward to target_address; the proxy's
        address. The target must be on loopback: this project never dials anything else."""
        target_host, target_port = _split_address(target_address)
        if not _is_loopback_host(target_host):
            raise ValueError(
                f"target {target_address!r} is not on loopback (127.0.0.0/8, ::1, localhost)"
            )
        if not 0 <= listen_port <= 65535:
            raise ValueError(f"listen_port must be within 0..65535, got {listen_port}")
        return self._call(
            self._add_link(source, target_name, target_host, target_port, listen_port)
        )

    def address(self, source: str, target_name: str) -> str:
        return self._call(self._on_loop(lambda: self._link(source, target_name).address))

    def links(self) -> list[tuple[str, str]]:
        return self._call(self._on_loop(lambda: list(self._links)))

    def set_condition(self, source: str, target_name: str, condition: LinkCondition) -> None:
        self._call(self._on_loop(lambda: self._link(source, target_name).set_condition(condition)))

    def condition(self, source: str, target_name: str) -> LinkCondition:
        return self._call(self._on_loop(lambda: self._link(source, target_name).condition))

    def cut(self, links: Iterable[tuple[str, str]], mode: str = "drop") -> None:
        """Cut each link in one step on the proxy loop, so a partition starts all at once. Each
        link keeps its delay, jitter and bandwidth for when it is healed by set_condition."""
        keys = list(links)
        LinkCondition(cut=True, cut_mode=mode)  # validates mode before anything changes

        def cut_all() -> None:
            chosen = [self._link(source, target_name) for source, target_name in keys]
            for link in chosen:
                link.set_condition(replace(link.condition, cut=True, cut_mode=mode))

        self._call(self._on_loop(cut_all))

    def heal(self) -> None:
        """Every link back to HEALTHY (connections gapped by a drop cut are reset)."""

        def heal_all() -> None:
            for link in self._links.values():
                link.set_condition(HEALTHY)

        self._call(self._on_loop(heal_all))

    def stats(self, source: str, target_name: str) -> LinkStats:
        return self._call(self._on_loop(lambda: self._link(source, target_name).stats()))

    # -- on the caller's thread --

    def _move_to(self, lifecycle: _Lifecycle) -> None:
        if lifecycle not in _LIFECYCLE_TRANSITIONS[self._lifecycle]:
            raise RuntimeError(
                f"ProxyNetwork is {self._lifecycle.value}; cannot become {lifecycle.value}"
            )
        self._lifecycle = lifecycle

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run coroutine on the proxy loop and wait (briefly) for its result."""
        with self._lifecycle_lock:
            if self._lifecycle is not _Lifecycle.RUNNING:
                coroutine.close()
                if self._lifecycle is _Lifecycle.NEW:
                    raise RuntimeError("ProxyNetwork is not started: call start() first")
                raise RuntimeError("ProxyNetwork is closed: control calls are refused")
            loop, thread = self._loop, self._thread
            assert loop is not None
            assert thread is not None
            if threading.get_ident() == thread.ident:
                coroutine.close()
                raise RuntimeError("ProxyNetwork control calls would deadlock on the proxy thread")
            future = asyncio.run_coroutine_threadsafe(coroutine, loop)
        try:
            return future.result(timeout=CONTROL_CALL_TIMEOUT_S)
        except concurrent.futures.CancelledError:
            raise RuntimeError("ProxyNetwork closed during the call") from None
        except TimeoutError:
            future.cancel()
            raise

    @staticmethod
    def _run_loop(loop: asyncio.AbstractEventLoop, running: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(running.set)
        try:
            loop.run_forever()
        finally:
            # A few more turns of the loop, so transports aborted during shutdown run their
            # connection_lost callbacks (which close the sockets) before the loop is closed.
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    # -- on the proxy loop --

    @staticmethod
    async def _on_loop(function: Callable[[], T]) -> T:
        """A plain function as a coroutine for _call: it runs on the loop, which owns the state."""
        return function()

    def _link(self, source: str, target_name: str) -> _Link:
        link = self._links.get((source, target_name))
        if link is None:
            raise KeyError(f"no link ({source!r}, {target_name!r})")
        return link

    async def _add_link(
        self, source: str, target_name: str, target_host: str, target_port: int, listen_port: int
    ) -> str:
        key = (source, target_name)
        if key in self._links or key in self._binding:
            raise ValueError(f"link {key!r} already exists")
        if len(self._links) + len(self._binding) >= LINKS_MAX:
            raise ValueError(f"at most {LINKS_MAX} links")
        link = _Link(source, target_name, target_host, target_port, self._rng)
        # Reserved while bind() runs, so a concurrent add_link of the same link is refused
        # rather than binding a second listener, and lookups never see a link with no address.
        self._binding.add(key)
        try:
            link.server = await asyncio.start_server(link.accept, self.host, listen_port)
        finally:
            self._binding.discard(key)
        port = link.server.sockets[0].getsockname()[1]
        link.address = _join_address(self.host, port)
        self._links[key] = link
        return link.address

    async def _shutdown(self) -> None:
        for link in self._links.values():
            if link.server is not None:
                link.server.close()
            for connection in list(link.connections):
                # Reset, not closed: a graceful close would wait for peers to read, and the
                # loop is about to stop.
                connection.close(reset=True)
        current = asyncio.current_task()
        tasks = [task for task in asyncio.all_tasks() if task is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for link in self._links.values():
            if link.server is not None:
                await link.server.wait_closed()
        # One more turn, so the transports closed above run connection_lost and close sockets.
        await asyncio.sleep(0)
