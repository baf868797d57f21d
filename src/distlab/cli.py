"""The ``distlab`` command: run nodes, talk to them, benchmark them.

    distlab up                                   # a local 3-node cluster on 127.0.0.1:7001-7003
    distlab kv put greeting hello --to 127.0.0.1:7001
    distlab kv get greeting --to 127.0.0.1:7002 --trace
    distlab kv ring --to 127.0.0.1:7001
    distlab node --data-dir data/node4 --port 7004 --seeds 127.0.0.1:7001 --join
    distlab bench wal

Errors from the world (an unreachable node, a refused request, a bad flag) are printed as one
line on stderr with a non-zero exit status, never as a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distlab.common import eventloop, logs
from distlab.common.errors import NOT_FOUND, DistlabError
from distlab.common.limits import (
    CLIENT_DEADLINE_MS_DEFAULT,
    DEADLINE_MS_MAX_DEFAULT,
    KEY_BYTES_MAX_DEFAULT,
    VALUE_BYTES_MAX_DEFAULT,
    Limits,
)

EXIT_OK = 0
EXIT_FAILED = 1  # the request was refused or failed, or the node could not start
EXIT_USAGE = 2  # argparse's own status for bad arguments

DEFAULT_PORT = 7001

if TYPE_CHECKING:
    from distlab.kvstore.client import SyncKeyValueClient


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        status: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    return status


def build_parser() -> argparse.ArgumentParser:
    from distlab.bench.commands import add_bench_parser
    from distlab.cache.commands import add_cache_parser
    from distlab.chaos.commands import add_chaos_parser
    from distlab.raft.commands import add_raft_parser

    parser = argparse.ArgumentParser(
        prog="distlab",
        description="Distributed primitives as small gRPC services, and the harness that "
        "breaks them.",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_up_parser(commands)
    _add_node_parser(commands)
    _add_kv_parser(commands)
    add_bench_parser(commands)
    add_chaos_parser(commands)
    add_raft_parser(commands)
    add_cache_parser(commands)
    return parser


def _add_node_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    node = commands.add_parser(
        "node",
        help="run one key-value node",
        description="Run one node of the replicated key-value store: recover its data "
        "directory, join the cluster through its seeds, then serve gRPC (KeyValue, Replica, "
        "health, reflection) until SIGTERM or Ctrl-C, shutting down gracefully.",
    )
    _add_node_arguments(node)
    node.set_defaults(func=_run_node)


def _add_node_arguments(node: argparse.ArgumentParser) -> None:
    from distlab.common.wal_file import FsyncPolicy

    node.add_argument(
        "--data-dir", type=Path, required=True, help="where the WAL and checkpoints live"
    )
    node.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    node.add_argument(
        "--port",
        type=_port,
        default=DEFAULT_PORT,
        help="port; 0 picks a free one (default: %(default)s)",
    )
    node.add_argument(
        "--advertise-host", default="", help="host peers dial to reach this node (default: --host)"
    )
    node.add_argument(
        "--node-id",
        default="",
        help="stable name of this node on the ring (default: the data directory's name)",
    )
    node.add_argument(
        "--seeds",
        type=_targets,
        default=[],
        metavar="HOST:PORT,...",
        help="nodes to learn the cluster from (Dynamo 4.8); none: a cluster of one",
    )
    node.add_argument(
        "--join",
        action="store_true",
        help="join an existing cluster: fetch this node's ranges before serving them",
    )
    quorum = node.add_argument_group("replication (Dynamo 4.5-4.7)")
    quorum.add_argument("--replicas", "-n", type=_positive_int, default=3, help="N (default: 3)")
    quorum.add_argument("--r", type=_positive_int, default=2, help="default read quorum R")
    quorum.add_argument("--w", type=_positive_int, default=2, help="default write quorum W")
    quorum.add_argument(
        "--strict-quorum",
        action="store_true",
        help="only the top N owners count; no fallbacks and no hinted handoff (default: sloppy)",
    )
    quorum.add_argument(
        "--last-writer-wins",
        action="store_true",
        help="keep only the newest sibling by wall clock: LOSSY under clock skew and concurrent "
        "writes (it counts what it discards); for the chaos harness's negative control",
    )
    quorum.add_argument(
        "--no-read-repair", action="store_true", help="do not repair stale replicas after a get"
    )
    quorum.add_argument(
        "--no-hinted-handoff",
        action="store_true",
        help="fallbacks keep the hints they hold and never hand them over (sloppy quorum only)",
    )
    quorum.add_argument(
        "--anti-entropy-interval-ms",
        type=_non_negative_int,
        default=10_000,
        help="Merkle-tree exchange with a random peer this often; 0: off (default: %(default)s)",
    )
    quorum.add_argument(
        "--tombstone-grace-ms",
        type=_positive_int,
        default=3_600_000,
        help="keep a delete's tombstone at least this long (default: one hour)",
    )
    quorum.add_argument(
        "--tombstone-gc-interval-ms",
        type=_non_negative_int,
        default=60_000,
        help="look for collectable tombstones this often; 0: never (default: %(default)s)",
    )
    quorum.add_argument(
        "--no-tombstone-gc-interlock",
        action="store_true",
        help="collect a tombstone without checking that every replica has it: UNSAFE, a "
        "replica that missed the delete brings the value back (a chaos negative control)",
    )
    quorum.add_argument("--vnodes", type=_positive_int, default=128, help="virtual nodes per node")
    quorum.add_argument("--weight", type=float, default=1.0, help="share of vnodes relative to 1")
    quorum.add_argument("--gossip-interval-ms", type=_positive_int, default=500)
    quorum.add_argument(
        "--failure-timeout-ms",
        type=_positive_int,
        default=5_000,
        help="a peer whose heartbeat has not advanced this long is down (default: %(default)s)",
    )
    quorum.add_argument("--rng-seed", type=int, help="seed gossip and anti-entropy choices")
    quorum.add_argument(
        "--allow-fault-injection",
        action="store_true",
        help="serve the fault-injection RPCs: cut links, gray RPC faults, clock offset "
        "(tests and chaos only)",
    )
    chaos = node.add_argument_group("chaos harness")
    chaos.add_argument(
        "--peer-routes",
        type=Path,
        help="JSON file mapping peer host:port to the host:port to dial instead (proxies)",
    )
    chaos.add_argument(
        "--durable-ledger",
        action="store_true",
        help="record the WAL's fsynced lengths beside it, so a harness can play a machine crash",
    )
    storage = node.add_argument_group("storage and limits")
    storage.add_argument(
        "--fsync",
        choices=[policy.value for policy in FsyncPolicy],
        default=FsyncPolicy.ALWAYS.value,
        help="when the WAL is fsynced: always (before every acknowledgement, group-committed), "
        "interval (every --fsync-interval-ms; may lose the last interval on a crash) or never "
        "(the OS decides; for benchmarks only). Default: %(default)s",
    )
    storage.add_argument("--fsync-interval-ms", type=_positive_int, default=100)
    storage.add_argument("--key-bytes-max", type=_positive_int, default=KEY_BYTES_MAX_DEFAULT)
    storage.add_argument("--value-bytes-max", type=_positive_int, default=VALUE_BYTES_MAX_DEFAULT)
    storage.add_argument(
        "--deadline-ms-max",
        type=_positive_int,
        default=DEADLINE_MS_MAX_DEFAULT,
        help="no call runs longer than this, whatever deadline the client sent",
    )
    node.add_argument(
        "--metrics-port",
        type=_port,
        help="serve Prometheus metrics over HTTP on this port (0 picks one; default: off)",
    )
    node.add_argument("--port-file", type=Path, help="write the bound port here once serving")
    node.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def _run_node(args: argparse.Namespace) -> int:
    from distlab.common.server import ServerOptions, ServerStartError
    from distlab.common.wal_file import FsyncPolicy, WalCorruptionError, WalOptions
    from distlab.kvstore.coordinator import QuorumConfig
    from distlab.kvstore.membership import MembershipConfig
    from distlab.kvstore.node import KvNodeOptions
    from distlab.kvstore.service import NodeConfig, run_node
    from distlab.kvstore.storage import StorageOptions, StorageRecoveryError

    if args.data_dir.exists() and not args.data_dir.is_dir():
        return _fail(f"--data-dir {args.data_dir} exists and is not a directory", EXIT_USAGE)
    node_id = args.node_id or args.data_dir.resolve().name
    try:
        limits = Limits(
            key_bytes_max=args.key_bytes_max,
            value_bytes_max=args.value_bytes_max,
            deadline_ms_max=args.deadline_ms_max,
        )
        wal_options = WalOptions(
            fsync_policy=FsyncPolicy(args.fsync),
            fsync_interval_ms=args.fsync_interval_ms,
            durable_ledger=args.durable_ledger,
        )
        options = KvNodeOptions(
            node_id=node_id,
            data_dir=args.data_dir,
            seeds=tuple(args.seeds),
            quorum=QuorumConfig(n=args.replicas, r=args.r, w=args.w, sloppy=not args.strict_quorum),
            weight=args.weight,
            vnodes_per_node=args.vnodes,
            join=args.join,
            read_repair=not args.no_read_repair,
            hinted_handoff=not args.no_hinted_handoff,
            last_writer_wins=args.last_writer_wins,
            anti_entropy_interval_ms=args.anti_entropy_interval_ms,
            tombstone_grace_ms=args.tombstone_grace_ms,
            tombstone_gc_interval_ms=args.tombstone_gc_interval_ms,
            tombstone_gc_interlock=not args.no_tombstone_gc_interlock,
            membership=MembershipConfig(
                gossip_interval_ms=args.gossip_interval_ms,
                failure_timeout_ms=args.failure_timeout_ms,
            ),
            storage=StorageOptions(wal=wal_options),
            seed=args.rng_seed,
            allow_fault_injection=args.allow_fault_injection,
            peer_routes=_read_peer_routes(args.peer_routes),
        )
    except ValueError as error:
        return _fail(f"bad option: {error}", EXIT_USAGE)
    logs.configure(node_id, getattr(logging, args.log_level.upper()))
    config = NodeConfig(
        node=options,
        server=ServerOptions(
            host=args.host,
            port=args.port,
            limits=limits,
            port_file=args.port_file,
            metrics_port=args.metrics_port,
        ),
        advertise_host=args.advertise_host,
    )
    try:
        eventloop.run(run_node(config))
    except ServerStartError as error:
        return _fail(str(error))
    except WalCorruptionError as error:
        return _fail(f"refusing to start: the write-ahead log is corrupt: {error}")
    except StorageRecoveryError as error:
        return _fail(f"refusing to start: {error}")
    except OSError as error:
        return _fail(f"cannot use data directory {args.data_dir}: {error}")
    return EXIT_OK


def _add_up_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    up = commands.add_parser(
        "up",
        help="start a local cluster",
        description="Start a local key-value cluster and a cache cluster: one process per "
        "node on loopback, a data directory each, then wait. Ctrl-C stops every node "
        "gracefully.",
    )
    up.add_argument("--nodes", type=_positive_int, default=3, help="how many (default: 3)")
    up.add_argument("--base-port", type=_port, default=DEFAULT_PORT, help="node i gets base+i")
    up.add_argument(
        "--cache-nodes",
        type=_non_negative_int,
        default=3,
        help="cache nodes, 0 for none (default: 3)",
    )
    up.add_argument("--cache-base-port", type=_port, default=7201, help="cache node i gets base+i")
    up.add_argument("--data-dir", type=Path, default=Path("data"), help="parent of node dirs")
    up.add_argument(
        "node_arguments",
        nargs=argparse.REMAINDER,
        help="after --, flags passed to every `distlab node` (e.g. -- --strict-quorum)",
    )
    up.set_defaults(func=_run_up)


def _run_up(args: argparse.Namespace) -> int:
    import signal

    from distlab.common.processes import NodeProcess, NodeStartError, start_all

    extra = [argument for argument in args.node_arguments if argument != "--"]
    if args.base_port + args.nodes - 1 > 65535:
        return _fail("--base-port leaves no room for that many nodes", EXIT_USAGE)
    if args.cache_base_port + args.cache_nodes - 1 > 65535:
        return _fail("--cache-base-port leaves no room for that many nodes", EXIT_USAGE)
    addresses = [f"127.0.0.1:{args.base_port + index}" for index in range(args.nodes)]
    kv_nodes = [
        NodeProcess(
            name=f"node{index + 1}",
            data_dir=args.data_dir / f"node{index + 1}",
            log_path=args.data_dir / f"node{index + 1}.log",
            arguments=["--seeds", ",".join(addresses), *extra],
            port=args.base_port + index,
        )
        for index in range(args.nodes)
    ]
    cache_nodes = [
        NodeProcess(
            name=f"cache{index + 1}",
            data_dir=args.data_dir / f"cache{index + 1}",
            log_path=args.data_dir / f"cache{index + 1}.log",
            port=args.cache_base_port + index,
            command=("cache", "node"),
        )
        for index in range(args.cache_nodes)
    ]
    nodes = kv_nodes + cache_nodes
    stop_requested = False

    def request_stop(signal_number: int, frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    # Both explicitly: a shell starts background jobs with SIGINT ignored, and Ctrl-C in a
    # terminal reaches the nodes too (same process group), which then stop on their own.
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        start_all(nodes)
        print(f"{len(nodes)} nodes serving (logs and data under {args.data_dir}/):")
        for node in nodes:
            print(f"  {node.name}  {node.address}  pid {node.pid}")
        print(f"try: distlab kv put greeting hello --to {kv_nodes[0].address}")
        if cache_nodes:
            cache_addresses = ",".join(node.address for node in cache_nodes)
            print(f"     distlab cache set greeting hello --nodes {cache_addresses}")
        print("Ctrl-C stops the cluster.", flush=True)
        while not stop_requested:
            for node in nodes:
                if not node.running():
                    return _fail(f"{node.name} exited; last log lines:\n{node.log_tail()}")
            time.sleep(0.5)
    except NodeStartError as error:
        return _fail(str(error))
    finally:
        for node in nodes:
            node.terminate()
        print("stopped", flush=True)
    return EXIT_OK


def _add_kv_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    kv = commands.add_parser(
        "kv", help="put, get and delete keys", description="Talk to the key-value store."
    )
    operations = kv.add_subparsers(title="operations", metavar="OPERATION", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--to",
            required=True,
            type=_targets,
            metavar="HOST:PORT[,...]",
            help="node(s) to ask; any node coordinates any request",
        )
        sub.add_argument(
            "--deadline-ms",
            type=_positive_int,
            default=CLIENT_DEADLINE_MS_DEFAULT,
            help="give up after this long (default: %(default)s)",
        )

    def traced(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--trace",
            action="store_true",
            help="print how the quorum went: preference list, replies, fallbacks, hints, repairs",
        )

    put = operations.add_parser("put", help="store a value", description="Store VALUE under KEY.")
    put.add_argument("key", help="the key (UTF-8 text)")
    put.add_argument("value", help="the value (UTF-8 text)")
    put.add_argument(
        "--context",
        type=_hex,
        default=b"",
        help="context (hex) from a get; default: read the current one first, so the put "
        "replaces what is there",
    )
    put.add_argument(
        "--blind",
        action="store_true",
        help="write with no context: concurrent with any existing value, so both stay siblings",
    )
    put.add_argument("--w", type=_positive_int, default=0, help="write quorum for this put")
    common(put)
    traced(put)
    put.set_defaults(func=_kv_put)

    get = operations.add_parser(
        "get",
        help="read a value",
        description="Print the value(s) of KEY, one sibling a line; the context goes to stderr.",
    )
    get.add_argument("key", help="the key (UTF-8 text)")
    get.add_argument("--r", type=_positive_int, default=0, help="read quorum for this get")
    common(get)
    traced(get)
    get.set_defaults(func=_kv_get)

    delete = operations.add_parser(
        "delete", help="delete a key", description="Delete KEY (writes a tombstone)."
    )
    delete.add_argument("key", help="the key (UTF-8 text)")
    delete.add_argument(
        "--context",
        type=_hex,
        default=b"",
        help="context (hex) from a get; default: read the current one first",
    )
    delete.add_argument("--blind", action="store_true", help="delete with no context")
    delete.add_argument("--w", type=_positive_int, default=0, help="write quorum")
    common(delete)
    traced(delete)
    delete.set_defaults(func=_kv_delete)

    ring = operations.add_parser(
        "ring", help="show the ring", description="Print the members, their state and vnodes."
    )
    common(ring)
    ring.set_defaults(func=_kv_ring)

    join = operations.add_parser(
        "join",
        help="run a new node that joins a cluster",
        description="Run a new node that joins the cluster through --seeds: it fetches the "
        "keys it will replicate from the current owners, then takes its place on the ring. "
        "The same as `distlab node --join`.",
    )
    _add_node_arguments(join)
    join.set_defaults(func=_run_node, join=True)

    leave = operations.add_parser(
        "leave",
        help="decommission a node",
        description="Ask the node at --to to hand its ranges to their new owners and stop.",
    )
    common(leave)
    leave.set_defaults(func=_kv_leave)


def _kv_put(args: argparse.Namespace) -> int:
    def call(client: SyncKeyValueClient) -> str:
        context = _context_for(client, args)
        result = client.put(
            args.key.encode(), args.value.encode(), context=context, w=args.w, trace=args.trace
        )
        _print_trace(result.trace)
        return f"ok (context {result.context.hex()})"

    return _run_kv(args, call)


def _kv_get(args: argparse.Namespace) -> int:
    def call(client: SyncKeyValueClient) -> str:
        result = client.get(args.key.encode(), r=args.r, trace=args.trace)
        _print_trace(result.trace)
        if len(result.values) > 1:
            print(f"{len(result.values)} siblings", file=sys.stderr)
        print(f"context {result.context.hex()}", file=sys.stderr)
        return "\n".join(value.decode(errors="replace") for value in result.values)

    return _run_kv(args, call)


def _kv_delete(args: argparse.Namespace) -> int:
    def call(client: SyncKeyValueClient) -> str:
        context = _context_for(client, args)
        result = client.delete(args.key.encode(), context=context, w=args.w, trace=args.trace)
        _print_trace(result.trace)
        return "ok"

    return _run_kv(args, call)


def _context_for(client: SyncKeyValueClient, args: argparse.Namespace) -> bytes:
    """What a person typing put or delete means: replace what is there now. So read the
    current context first, unless one was given or --blind asks for a concurrent write."""
    if args.context or args.blind:
        return bytes(args.context)
    try:
        return client.get(args.key.encode()).context
    except DistlabError as error:
        if error.kind is NOT_FOUND:
            return b""
        raise


def _kv_ring(args: argparse.Namespace) -> int:
    def call(client: SyncKeyValueClient) -> str:
        members = client.ring()
        lines = [
            f"{'node':<12} {'address':<22} {'status':<8} {'alive':<5} {'vnodes':>6} {'share':>7}"
        ]
        for member in members:
            lines.append(
                f"{member.node_id:<12} {member.address:<22} {member.status:<8} "
                f"{'yes' if member.alive else 'no':<5} {member.vnodes:>6} {member.share:>7.1%}"
            )
        return "\n".join(lines)

    return _run_kv(args, call)


def _kv_leave(args: argparse.Namespace) -> int:
    def call(client: SyncKeyValueClient) -> str:
        return f"left; {client.leave()} keys handed over"

    return _run_kv(args, call)


def _print_trace(trace: dict[str, Any] | None) -> None:
    if trace is not None:
        print(json.dumps(trace, indent=2), file=sys.stderr)


def _run_kv(args: argparse.Namespace, call: Callable[[SyncKeyValueClient], str]) -> int:
    from distlab.kvstore.client import SyncKeyValueClient

    target = ",".join(args.to)
    try:
        with SyncKeyValueClient(args.to, deadline_ms=args.deadline_ms) as client:
            output = call(client)
    except DistlabError as error:
        if error.kind is NOT_FOUND:
            return _fail(f"not found: {args.key}")
        outcome = "did not happen" if error.definite else "may or may not have happened"
        return _fail(
            f"{target}: {error.kind.status} ({error.kind.code}): {error}; the operation {outcome}"
        )
    if output:
        print(output)
    return EXIT_OK


def _fail(message: str, status: int = EXIT_FAILED) -> int:
    print(f"distlab: error: {message}", file=sys.stderr)
    return status


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in [0, 65535], got {port}")
    return port


def _read_peer_routes(path: Path | None) -> dict[str, str]:
    if path is None:
        return {}
    try:
        routes = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"--peer-routes {path}: {error}") from error
    if not isinstance(routes, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in routes.items()
    ):
        raise ValueError(f"--peer-routes {path}: want a JSON object of host:port strings")
    return routes


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _hex(text: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not hexadecimal: {text!r}") from None


def _targets(text: str) -> list[str]:
    return [_target(part) for part in text.split(",") if part]


def _target(text: str) -> str:
    host, separator, port = text.rpartition(":")
    if not separator or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    if _port(port) == 0:
        raise argparse.ArgumentTypeError(f"port must be in [1, 65535], got {port}")
    return text


if __name__ == "__main__":
    raise SystemExit(main())
