"""A cluster under test: real node processes on loopback, each link through a fault proxy.

What the harness controls, as Jepsen's ``db`` and ``net`` protocols do:

- **Processes** (``distlab.common.processes.NodeProcess``): start, kill -9, pause (SIGSTOP),
  resume (SIGCONT), restart at the same address. Each node has its own data directory and its
  log in ``<run>/logs/<node>.log``.
- **Machine crashes**: ``crash`` is a kill -9 followed by cutting every write-ahead log back to
  what was last fsynced (``wal_file.cut_to_durable``), what the page cache would have lost had
  the machine, not just the process, gone down. Nodes run with ``--durable-ledger`` for this.
- **The network**: one TCP proxy per directed link (``distlab.chaos.netproxy``): node A reaches
  node B only through proxy (A, B) (``--peer-routes``), and clients reach node B through
  (client, B). A partition cuts a set of directed links; latency slows links.
- **Clocks and gray failures**: through each node's FaultInjection service.

Ports are chosen before the nodes start (bind to port 0, note the port, release it), because
every node's route file must name every peer's address. Only processes started here are ever
signalled, by their own pid.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc.aio

from distlab.chaos.nemesis import CLIENT_NAME
from distlab.chaos.netproxy import LinkCondition, ProxyNetwork
from distlab.common.processes import NodeProcess, start_all
from distlab.common.wal_file import cut_to_durable
from distlab.proto import chaos_pb2, chaos_pb2_grpc

CLIENT = CLIENT_NAME
HOST = "127.0.0.1"
CONTROL_CALL_TIMEOUT_S = 5.0
LEDGER_SUFFIX = ".durable.json"


def reserve_ports(count: int, host: str = HOST) -> list[int]:
    """Ports free right now (held open together, so all distinct)."""
    with held_ports(count, host) as ports:
        return ports


@contextlib.contextmanager
def held_ports(count: int, host: str = HOST) -> Iterator[list[int]]:
    """Free ports, kept bound until the block ends, so that nothing else in this process (a
    proxy listening on port 0) is handed one of them meanwhile."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        yield [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class CrashReport:
    node: str
    bytes_lost: int
    segments_cut: int


class ChaosCluster:
    def __init__(
        self,
        run_dir: Path,
        names: Sequence[str],
        node_arguments: Mapping[str, Sequence[str]],
        seed: int,
        command: tuple[str, ...] = ("node",),
        peer_flags: bool = True,
    ) -> None:
        self.run_dir = run_dir
        self.names = list(names)
        self.node_arguments = {name: list(node_arguments.get(name, ())) for name in names}
        self.command = command
        # Nodes that talk to peers get the harness's flags (routes through the proxies, seeds,
        # fault injection, the durable ledger); cache nodes have no peers and no disk.
        self.peer_flags = peer_flags
        self.network = ProxyNetwork(seed=seed)
        self.nodes: dict[str, NodeProcess] = {}
        self._started = False

    # ----------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        # The nodes' ports stay bound while the proxies pick theirs, or the kernel could give a
        # proxy a port a node is about to listen on.
        with held_ports(len(self.names)) as ports:
            self._prepare(ports)
        start_all(self.nodes.values())

    def _prepare(self, ports: list[int]) -> None:
        real = {name: f"{HOST}:{port}" for name, port in zip(self.names, ports, strict=True)}
        self.network.start()
        self._started = True
        for source in [*self.names, CLIENT]:
            for target in self.names:
                if source != target:
                    self.network.add_link(source, target, real[target])
        for name, port in zip(self.names, ports, strict=True):
            routes = {
                real[peer]: self.network.address(name, peer) for peer in self.names if peer != name
            }
            routes_file = self.run_dir / "nodes" / f"{name}.routes.json"
            routes_file.parent.mkdir(parents=True, exist_ok=True)
            routes_file.write_text(json.dumps(routes, indent=1))
            seeds = [real[peer] for peer in self.names if peer != name]
            # "{peers}" in a system's arguments: every node as id=address (Raft's --peers).
            peers = ",".join(f"{peer}={real[peer]}" for peer in self.names)
            arguments = [
                argument.replace("{peers}", peers) for argument in self.node_arguments[name]
            ]
            harness_flags = [
                "--allow-fault-injection",
                "--durable-ledger",
                "--peer-routes",
                str(routes_file),
                "--seeds",
                ",".join(seeds),
            ]
            self.nodes[name] = NodeProcess(
                name=name,
                data_dir=self.run_dir / "nodes" / name,
                log_path=self.run_dir / "logs" / f"{name}.log",
                arguments=[*(harness_flags if self.peer_flags else []), *arguments],
                host=HOST,
                port=port,
                command=self.command,
            )

    def stop(self) -> None:
        """Stop every node (resumed first, so SIGTERM is handled) and the proxies."""
        for node in self.nodes.values():
            with contextlib.suppress(ProcessLookupError):
                node.resume()
        for node in self.nodes.values():
            node.terminate()
        if self._started:
            self.network.close()
            self._started = False

    def __enter__(self) -> ChaosCluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ----------------------------------------------------------------------------- addresses

    def address(self, name: str) -> str:
        """The node's real address (for the harness's own control and observation calls)."""
        return self.nodes[name].address

    def client_addresses(self) -> list[str]:
        """Where clients dial each node: through the (client, node) proxy."""
        return [self.network.address(CLIENT, name) for name in self.names]

    # ----------------------------------------------------------------------------- processes

    def kill(self, name: str) -> None:
        self.nodes[name].kill()

    def crash(self, name: str) -> CrashReport:
        """kill -9, then lose what was not fsynced, as a power loss would."""
        node = self.nodes[name]
        node.kill()
        lost = cut = 0
        for ledger in node.data_dir.rglob(f"*{LEDGER_SUFFIX}"):
            wal_directory = ledger.with_name(ledger.name.removesuffix(LEDGER_SUFFIX))
            if wal_directory.is_dir():
                segments = cut_to_durable(wal_directory)
                lost += sum(segments.values())
                cut += len(segments)
        return CrashReport(name, lost, cut)

    def restart(self, name: str) -> None:
        node = self.nodes[name]
        if not node.running():
            node.start(wait=True)

    def pause(self, name: str) -> None:
        self.nodes[name].pause()

    def resume(self, name: str) -> None:
        self.nodes[name].resume()

    def running(self, name: str) -> bool:
        return self.nodes[name].running()

    # ----------------------------------------------------------------------------- network

    def cut(self, links: Iterable[tuple[str, str]]) -> None:
        self.network.cut(links)

    def slow(self, name: str, delay_ms: int, jitter_ms: int) -> None:
        """Delay every link into or out of ``name``, the client's included."""
        condition = LinkCondition(delay_ms=delay_ms, jitter_ms=jitter_ms)
        for source, target in self.network.links():
            if name in (source, target):
                self.network.set_condition(source, target, condition)

    def heal_network(self) -> None:
        self.network.heal()

    # ----------------------------------------------------------------------------- injection

    async def set_rpc_faults(
        self, name: str, rules: Sequence[chaos_pb2.RpcFaultRule], seed: int = 0
    ) -> None:
        """Replace the gray-failure rules of the calls ``name`` makes (empty: heal)."""
        async with grpc.aio.insecure_channel(self.address(name)) as channel:
            stub = chaos_pb2_grpc.FaultInjectionStub(channel)
            await stub.SetRpcFaults(
                chaos_pb2.SetRpcFaultsRequest(rules=list(rules), seed=seed),
                timeout=CONTROL_CALL_TIMEOUT_S,
            )

    async def set_clock_offset(self, name: str, offset_ms: int) -> None:
        async with grpc.aio.insecure_channel(self.address(name)) as channel:
            stub = chaos_pb2_grpc.FaultInjectionStub(channel)
            await stub.SetClockOffset(
                chaos_pb2.SetClockOffsetRequest(offset_ms=offset_ms),
                timeout=CONTROL_CALL_TIMEOUT_S,
            )
