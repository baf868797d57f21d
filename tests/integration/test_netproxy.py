"""The fault-injecting link proxy (toxiproxy's toxics, Jepsen's cut and heal) on loopback: plain
sockets against a small threaded echo server, and one real gRPC health check through a cut."""

from __future__ import annotations

import asyncio
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from types import TracebackType

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from distlab.chaos.netproxy import (
    HEALTHY,
    LinkCondition,
    LinkStats,
    ProxyNetwork,
)

# Long enough that a reply that was going to come would have (loopback answers in well under a
# millisecond), short enough to keep the file fast.
SILENCE_S = 0.5
# How long a closed or reset connection may take to show as such on a busy 2-core machine.
CLOSE_SEEN_WITHIN_S = 3.0
# Socket timeout for operations that should succeed at once.
SOCKET_TIMEOUT_S = 5.0
# The backpressure test gives up sending after this many bytes; half of it is more than the
# proxy's direction buffer plus the kernel's socket buffers (tcp_rmem may autotune to 32 MiB).
SENDER_BYTES_MAX = 128 * 1024 * 1024
# A sender whose socket is not writable for this long is stalled.
SENDER_STALLED_AFTER_S = 0.3
# How often the echo server's threads look at their stop flag.
ECHO_POLL_S = 0.05


class EchoServer:
    """Echoes every byte on 127.0.0.1, one thread per connection; counts what it received."""

    def __init__(self) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen()
        self._listener.settimeout(ECHO_POLL_S)
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._received_bytes = 0
        self._connections = 0
        self._start(self._accept_loop)

    @property
    def received_bytes(self) -> int:
        with self._lock:
            return self._received_bytes

    @property
    def connections(self) -> int:
        with self._lock:
            return self._connections

    def __enter__(self) -> EchoServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stopping.set()
        for thread in list(self._threads):
            thread.join(SOCKET_TIMEOUT_S)
        self._listener.close()

    def _start(self, target: Callable[..., None], *arguments: object) -> None:
        thread = threading.Thread(target=target, args=arguments, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            with self._lock:
                self._connections += 1
            self._start(self._echo, connection)

    def _echo(self, connection: socket.socket) -> None:
        with connection:
            connection.settimeout(ECHO_POLL_S)
            while not self._stopping.is_set():
                try:
                    data = connection.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                with self._lock:
                    self._received_bytes += len(data)
                try:
                    connection.sendall(data)
                except OSError:
                    return


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    with EchoServer() as server:
        yield server


@pytest.fixture
def network() -> Iterator[ProxyNetwork]:
    with ProxyNetwork(seed=7) as proxies:
        yield proxies


def connect(address: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    connection = socket.create_connection((host, int(port)), timeout=SOCKET_TIMEOUT_S)
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return connection


def is_refused_or_reset_soon(address: str) -> bool:
    """True if a new connection is reset during connect (the proxy accepts and resets it before
    connect() returns) or is closed or reset soon after."""
    try:
        connection = connect(address)
    except ConnectionResetError:
        return True
    with connection:
        return closes_soon(connection)


def receive_exactly(connection: socket.socket, size: int) -> bytes:
    chunks: list[bytes] = []
    remaining = size
    while remaining:
        chunk = connection.recv(min(remaining, 65536))
        if not chunk:
            raise AssertionError(f"connection closed with {remaining} of {size} bytes missing")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def round_trip(connection: socket.socket, message: bytes) -> bytes:
    connection.sendall(message)
    return receive_exactly(connection, len(message))


def stays_silent(connection: socket.socket) -> bool:
    """True if nothing arrives (and the connection is not closed) for SILENCE_S."""
    connection.settimeout(SILENCE_S)
    try:
        connection.recv(1)
    except TimeoutError:
        return True
    finally:
        connection.settimeout(SOCKET_TIMEOUT_S)
    return False


def closes_soon(connection: socket.socket) -> bool:
    """True if the peer closes or resets the connection within CLOSE_SEEN_WITHIN_S."""
    deadline = time.monotonic() + CLOSE_SEEN_WITHIN_S
    while (remaining_s := deadline - time.monotonic()) > 0:
        connection.settimeout(remaining_s)
        try:
            if not connection.recv(65536):
                return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
    return False


def wait_for_stats(
    network: ProxyNetwork, link: tuple[str, str], predicate: Callable[[LinkStats], bool]
) -> LinkStats:
    deadline = time.monotonic() + CLOSE_SEEN_WITHIN_S
    stats = network.stats(*link)
    while not predicate(stats):
        if time.monotonic() > deadline:
            raise AssertionError(f"stats of {link} never matched: {stats}")
        time.sleep(0.01)
        stats = network.stats(*link)
    return stats


def test_bytes_are_forwarded_both_ways_and_counted(network: ProxyNetwork, echo: EchoServer) -> None:
    address = network.add_link("client", "b", echo.address)
    assert network.address("client", "b") == address
    assert network.links() == [("client", "b")]
    payload = bytes(range(256)) * 400  # 100 KiB: several reads in each direction
    with connect(address) as connection:
        assert round_trip(connection, payload) == payload
        assert round_trip(connection, b"and back again") == b"and back again"
    sent = len(payload) + len(b"and back again")
    stats = wait_for_stats(network, ("client", "b"), lambda s: s.bytes_forwarded == 2 * sent)
    assert stats == LinkStats(connections=1, bytes_forwarded=2 * sent, bytes_dropped=0)
    assert echo.received_bytes == sent


def test_cut_drop_swallows_bytes_and_heal_resets_the_connection(
    network: ProxyNetwork, echo: EchoServer
) -> None:
    address = network.add_link("client", "b", echo.address)
    with connect(address) as before_cut:
        assert round_trip(before_cut, b"ping") == b"ping"
        network.cut([("client", "b")])
        before_cut.sendall(b"lost")
        assert stays_silent(before_cut), "a dropped link answered"
        with connect(address) as during_cut:
            # The handshake succeeds (as it would before the loss is noticed); nothing else does.
            during_cut.sendall(b"also lost")
            assert stays_silent(during_cut)
            assert echo.received_bytes == len(b"ping"), "bytes reached the target through a cut"
            assert echo.connections == 1, "the target was dialed during a cut"
            stats = wait_for_stats(network, ("client", "b"), lambda s: s.bytes_dropped == 13)
            assert stats.connections == 2
            network.heal()
            assert network.condition("client", "b") == HEALTHY
            # Both streams have a gap now; healing resets them and clients must reconnect.
            assert closes_soon(before_cut)
            assert closes_soon(during_cut)
    with connect(address) as after_heal:
        assert round_trip(after_heal, b"pong") == b"pong"


def test_cut_reset_fails_existing_and_new_connections_fast(
    network: ProxyNetwork, echo: EchoServer
) -> None:
    address = network.add_link("client", "b", echo.address)
    with connect(address) as existing:
        assert round_trip(existing, b"ping") == b"ping"
        network.cut([("client", "b")], mode="reset")
        assert closes_soon(existing)
    assert is_refused_or_reset_soon(address)
    network.heal()
    with connect(address) as after_heal:
        assert round_trip(after_heal, b"pong") == b"pong"


def test_a_cut_is_one_way(network: ProxyNetwork) -> None:
    with EchoServer() as node_a, EchoServer() as node_b:
        a_to_b = network.add_link("a", "b", node_b.address)
        b_to_a = network.add_link("b", "a", node_a.address)
        with connect(a_to_b) as from_a, connect(b_to_a) as from_b:
            network.cut([("a", "b")])
            assert round_trip(from_b, b"b reaches a") == b"b reaches a"
            from_a.sendall(b"a cannot reach b")
            assert stays_silent(from_a)
            assert node_b.received_bytes == 0
            assert network.condition("b", "a") == HEALTHY


def test_delay_applies_to_each_direction(network: ProxyNetwork, echo: EchoServer) -> None:
    address = network.add_link("client", "b", echo.address)
    network.set_condition("client", "b", LinkCondition(delay_ms=200))
    with connect(address) as connection:
        started = time.monotonic()
        assert round_trip(connection, b"slow") == b"slow"
        elapsed_s = time.monotonic() - started
    # 200 ms there and 200 ms back; the upper bound only catches a delay applied many times.
    assert 0.39 <= elapsed_s < 3.0


def test_cut_keeps_the_delay_and_heal_clears_it(network: ProxyNetwork, echo: EchoServer) -> None:
    network.add_link("client", "b", echo.address)
    network.set_condition("client", "b", LinkCondition(delay_ms=50, jitter_ms=5))
    network.cut([("client", "b")], mode="reset")
    assert network.condition("client", "b") == LinkCondition(
        cut=True, cut_mode="reset", delay_ms=50, jitter_ms=5
    )
    network.heal()
    assert network.condition("client", "b") == HEALTHY


def test_jitter_never_reorders_a_stream(network: ProxyNetwork, echo: EchoServer) -> None:
    address = network.add_link("client", "b", echo.address)
    network.set_condition("client", "b", LinkCondition(delay_ms=1, jitter_ms=20))
    messages = [f"{number:05d};".encode() for number in range(300)]
    expected = b"".join(messages)
    with connect(address) as connection:
        for message in messages:
            connection.sendall(message)  # TCP_NODELAY: mostly one chunk per message
        assert receive_exactly(connection, len(expected)) == expected


def test_bandwidth_cap_paces_each_direction(network: ProxyNetwork, echo: EchoServer) -> None:
    address = network.add_link("client", "b", echo.address)
    bytes_per_s = 50_000
    network.set_condition("client", "b", LinkCondition(bytes_per_s=bytes_per_s))
    payload = b"x" * 50_000
    with connect(address) as connection:
        started = time.monotonic()
        assert round_trip(connection, payload) == payload
        elapsed_s = time.monotonic() - started
    # One second of bytes at the cap, less the first slice (a twentieth) that goes at once; the
    # two directions pipeline, so the round trip takes about as long as one.
    assert 0.9 <= elapsed_s < 5.0


def test_a_slow_link_pushes_back_on_the_sender(network: ProxyNetwork, echo: EchoServer) -> None:
    address = network.add_link("client", "b", echo.address)
    network.set_condition("client", "b", LinkCondition(bytes_per_s=1000))
    chunk = b"y" * 65536
    sent_bytes = 0
    with connect(address) as connection:
        connection.setblocking(False)
        while sent_bytes < SENDER_BYTES_MAX:
            try:
                sent_bytes += connection.send(chunk)
                continue
            except BlockingIOError:
                pass
            _, writable, _ = select.select([], [connection], [], SENDER_STALLED_AFTER_S)
            if not writable:
                break  # the proxy stopped reading: backpressure reached the sender
    # What the proxy queues (DIRECTION_BUFFER_BYTES_MAX) plus what the kernel buffers on both
    # sides; without backpressure the proxy would read all of it into memory.
    assert sent_bytes < SENDER_BYTES_MAX // 2, f"the proxy took {sent_bytes} bytes"


def test_a_refused_target_closes_the_client(network: ProxyNetwork) -> None:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        nobody_listens = f"127.0.0.1:{placeholder.getsockname()[1]}"
    address = network.add_link("client", "b", nobody_listens)
    assert is_refused_or_reset_soon(address)


@pytest.mark.parametrize(
    "target",
    ["10.0.0.1:80", "192.168.1.1:50051", "8.8.8.8:53", "example.com:443", "[2001:db8::1]:80"],
)
def test_add_link_refuses_a_target_off_loopback(network: ProxyNetwork, target: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        network.add_link("client", "b", target)
    assert network.links() == []


def test_add_link_accepts_loopback_names_and_refuses_duplicates(network: ProxyNetwork) -> None:
    network.add_link("a", "b", "127.0.0.2:50051")
    network.add_link("a", "c", "localhost:50051")
    network.add_link("a", "d", "[::1]:50051")
    with pytest.raises(ValueError, match="already exists"):
        network.add_link("a", "b", "127.0.0.1:50052")
    with pytest.raises(ValueError, match="host:port"):
        network.add_link("a", "e", "127.0.0.1")
    with pytest.raises(KeyError):
        network.stats("a", "nowhere")
    with pytest.raises(KeyError):
        network.cut([("a", "b"), ("a", "nowhere")])
    assert network.condition("a", "b") == HEALTHY, "a cut naming an unknown link changed nothing"


@pytest.mark.parametrize(
    "fields",
    [
        {"delay_ms": -1.0},
        {"jitter_ms": -0.5},
        {"delay_ms": float("nan")},
        {"delay_ms": 3_600_000.0},
        {"bytes_per_s": -1},
        {"cut_mode": "blackhole"},
    ],
)
def test_a_bad_condition_is_refused(fields: dict[str, object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 (each field has its own message)
        LinkCondition(**fields)  # type: ignore[arg-type]


def test_control_calls_are_thread_safe(network: ProxyNetwork, echo: EchoServer) -> None:
    address = network.add_link("client", "b", echo.address)
    errors: list[BaseException] = []

    def fiddle(index: int) -> None:
        try:
            for round_number in range(25):
                delay_ms = float(index + round_number % 3)
                network.set_condition("client", "b", LinkCondition(delay_ms=delay_ms))
                network.stats("client", "b")
                network.links()
        except BaseException as error:  # reported below, on the test's thread
            errors.append(error)

    threads = [threading.Thread(target=fiddle, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    with connect(address) as connection:
        for _ in range(20):
            assert round_trip(connection, b"busy") == b"busy"
    for thread in threads:
        thread.join(SOCKET_TIMEOUT_S)
    assert errors == []


def test_control_calls_need_a_running_network() -> None:
    network = ProxyNetwork()
    with pytest.raises(RuntimeError, match="not started"):
        network.add_link("a", "b", "127.0.0.1:50051")
    network.start()
    network.add_link("a", "b", "127.0.0.1:50051")
    network.close()
    network.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        network.heal()
    with pytest.raises(RuntimeError):
        network.start()
    with pytest.raises(ValueError, match="loopback"):
        ProxyNetwork(host="0.0.0.0")


@pytest.mark.asyncio
async def test_grpc_health_check_hangs_through_a_drop_cut_and_recovers_after_heal() -> None:
    server = grpc.aio.server()
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    # Quick reconnects, so the channel comes back within the test's deadline after heal.
    options = [
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 500),
    ]
    try:
        with ProxyNetwork(seed=1) as network:
            address = network.add_link("client", "node1", f"127.0.0.1:{port}")
            async with grpc.aio.insecure_channel(address, options=options) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                request = health_pb2.HealthCheckRequest()
                reply = await stub.Check(request, timeout=SOCKET_TIMEOUT_S)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
                network.cut([("client", "node1")])
                with pytest.raises(grpc.aio.AioRpcError) as hung:
                    await stub.Check(request, timeout=SILENCE_S)
                assert hung.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
                network.heal()
                deadline = time.monotonic() + 10.0
                while True:
                    try:
                        reply = await stub.Check(request, timeout=1.0)
                        break
                    except grpc.aio.AioRpcError:
                        if time.monotonic() > deadline:
                            raise
                        await asyncio.sleep(0.05)  # poll interval while the channel reconnects
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await server.stop(None)
