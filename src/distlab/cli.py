"""The ``distlab`` command: run nodes, talk to them, benchmark them.

    distlab node --data-dir data/node1 --port 7001
    distlab kv put greeting hello --to 127.0.0.1:7001
    distlab kv get greeting --to 127.0.0.1:7001
    distlab bench wal

Errors from the world (an unreachable node, a refused request, a bad flag) are printed as one
line on stderr with a non-zero exit status, never as a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from distlab.common import logs
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

ResultT = TypeVar("ResultT")


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

    parser = argparse.ArgumentParser(
        prog="distlab",
        description="Distributed primitives as small gRPC services, and the harness that "
        "breaks them.",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_node_parser(commands)
    _add_kv_parser(commands)
    add_bench_parser(commands)
    return parser


def _add_node_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from distlab.common.wal_file import FsyncPolicy

    node = commands.add_parser(
        "node",
        help="run one key-value node",
        description="Run one key-value node: recover its data directory, then serve gRPC "
        "(KeyValue, health, reflection) until SIGTERM or Ctrl-C, shutting down gracefully.",
    )
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
    node.add_argument("--node-id", default="", help="name used in logs (default: HOST:PORT)")
    node.add_argument(
        "--fsync",
        choices=[policy.value for policy in FsyncPolicy],
        default=FsyncPolicy.ALWAYS.value,
        help="when the WAL is fsynced: always (before every acknowledgement, group-committed), "
        "interval (every --fsync-interval-ms; may lose the last interval on a crash) or never "
        "(the OS decides; for benchmarks only). Default: %(default)s",
    )
    node.add_argument("--fsync-interval-ms", type=_positive_int, default=100)
    node.add_argument("--key-bytes-max", type=_positive_int, default=KEY_BYTES_MAX_DEFAULT)
    node.add_argument("--value-bytes-max", type=_positive_int, default=VALUE_BYTES_MAX_DEFAULT)
    node.add_argument(
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
    node.set_defaults(func=_run_node)


def _run_node(args: argparse.Namespace) -> int:
    from distlab.common.server import ServerOptions, ServerStartError
    from distlab.common.wal_file import FsyncPolicy, WalCorruptionError, WalOptions
    from distlab.kvstore.service import NodeConfig, run_node
    from distlab.kvstore.storage import StorageOptions, StorageRecoveryError

    try:
        limits = Limits(
            key_bytes_max=args.key_bytes_max,
            value_bytes_max=args.value_bytes_max,
            deadline_ms_max=args.deadline_ms_max,
        )
        wal_options = WalOptions(
            fsync_policy=FsyncPolicy(args.fsync), fsync_interval_ms=args.fsync_interval_ms
        )
    except ValueError as error:
        return _fail(f"bad option: {error}", EXIT_USAGE)
    if args.data_dir.exists() and not args.data_dir.is_dir():
        return _fail(f"--data-dir {args.data_dir} exists and is not a directory", EXIT_USAGE)
    node_id = args.node_id or f"{args.host}:{args.port}"
    logs.configure(node_id, getattr(logging, args.log_level.upper()))
    config = NodeConfig(
        data_dir=args.data_dir,
        server=ServerOptions(
            host=args.host,
            port=args.port,
            limits=limits,
            port_file=args.port_file,
            metrics_port=args.metrics_port,
        ),
        storage=StorageOptions(wal=wal_options),
        node_id=node_id,
    )
    try:
        asyncio.run(run_node(config))
    except ServerStartError as error:
        return _fail(str(error))
    except WalCorruptionError as error:
        return _fail(f"refusing to start: the write-ahead log is corrupt: {error}")
    except StorageRecoveryError as error:
        return _fail(f"refusing to start: {error}")
    except OSError as error:
        return _fail(f"cannot use data directory {args.data_dir}: {error}")
    return EXIT_OK


def _add_kv_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    kv = commands.add_parser(
        "kv", help="put, get and delete keys", description="Talk to a key-value node."
    )
    operations = kv.add_subparsers(title="operations", metavar="OPERATION", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--to", required=True, type=_target, metavar="HOST:PORT", help="the node")
        sub.add_argument(
            "--deadline-ms",
            type=_positive_int,
            default=CLIENT_DEADLINE_MS_DEFAULT,
            help="give up after this long (default: %(default)s)",
        )

    put = operations.add_parser("put", help="store a value", description="Store VALUE under KEY.")
    put.add_argument("key", help="the key (UTF-8 text)")
    put.add_argument("value", help="the value (UTF-8 text)")
    common(put)
    put.set_defaults(func=_kv_put)

    get = operations.add_parser(
        "get",
        help="read a value",
        description="Print the value of KEY (every sibling, one a line).",
    )
    get.add_argument("key", help="the key (UTF-8 text)")
    common(get)
    get.set_defaults(func=_kv_get)

    delete = operations.add_parser(
        "delete", help="delete a key", description="Delete KEY (writes a tombstone)."
    )
    delete.add_argument("key", help="the key (UTF-8 text)")
    common(delete)
    delete.set_defaults(func=_kv_delete)


def _kv_put(args: argparse.Namespace) -> int:
    from distlab.kvstore.client import KeyValueClient

    async def call() -> int:
        async with KeyValueClient(args.to, deadline_ms=args.deadline_ms) as client:
            return await client.put(args.key.encode(), args.value.encode())

    return _run_kv(args, call, lambda sequence: f"ok (sequence {sequence})")


def _kv_get(args: argparse.Namespace) -> int:
    from distlab.kvstore.client import KeyValueClient

    async def call() -> list[bytes]:
        async with KeyValueClient(args.to, deadline_ms=args.deadline_ms) as client:
            return await client.get(args.key.encode())

    return _run_kv(
        args, call, lambda values: "\n".join(value.decode(errors="replace") for value in values)
    )


def _kv_delete(args: argparse.Namespace) -> int:
    from distlab.kvstore.client import KeyValueClient

    async def call() -> int:
        async with KeyValueClient(args.to, deadline_ms=args.deadline_ms) as client:
            return await client.delete(args.key.encode())

    return _run_kv(args, call, lambda sequence: f"ok (sequence {sequence})")


def _run_kv(
    args: argparse.Namespace,
    call: Callable[[], Coroutine[Any, Any, ResultT]],
    render: Callable[[ResultT], str],
) -> int:
    try:
        result = asyncio.run(call())
    except DistlabError as error:
        if error.kind is NOT_FOUND:
            return _fail(f"not found: {args.key}")
        outcome = "did not happen" if error.definite else "may or may not have happened"
        return _fail(
            f"{args.to}: {error.kind.status} ({error.kind.code}): {error}; the operation {outcome}"
        )
    print(render(result))
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


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _target(text: str) -> str:
    host, separator, port = text.rpartition(":")
    if not separator or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    if _port(port) == 0:
        raise argparse.ArgumentTypeError(f"port must be in [1, 65535], got {port}")
    return text


if __name__ == "__main__":
    raise SystemExit(main())
