"""``distlab raft``: run a node of the Raft register, and talk to one.

    distlab raft node --node-id n1 --data-dir data/r1 --port 7101 \\
        --peers n1=127.0.0.1:7101,n2=127.0.0.1:7102,n3=127.0.0.1:7103
    distlab raft put KEY VALUE --to 127.0.0.1:7101     # follows the leader hint
    distlab raft get KEY --to 127.0.0.1:7102
    distlab raft status --to 127.0.0.1:7103
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import re
import sys
from pathlib import Path

from distlab.common import eventloop, logs

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
CLIENT_DEADLINE_S = 5.0
# A client follows at most this many "not the leader" answers and retries before giving up.
REDIRECTS_MAX = 5
_LEADER_HINT = re.compile(r"address=(\S+)")
_RETRIED = frozenset({"DEADLINE_EXCEEDED", "UNAVAILABLE"})


def add_raft_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    raft = subparsers.add_parser(
        "raft",
        help="a linearizable key-value register on Raft",
        description="A linearizable key-value register replicated by Raft (Ongaro and "
        "Ousterhout 2014): every write is a log entry, every read a ReadIndex read.",
    )
    commands = raft.add_subparsers(title="commands", metavar="COMMAND", required=True)
    node = commands.add_parser("node", help="run one Raft node")
    node.add_argument("--node-id", required=True)
    node.add_argument("--data-dir", type=Path, required=True)
    node.add_argument("--host", default="127.0.0.1")
    node.add_argument("--port", type=int, default=0, help="0 picks a free one")
    node.add_argument("--port-file", type=Path, help="write the bound port here once serving")
    node.add_argument(
        "--peers",
        required=True,
        help="every voter as id=host:port, comma-separated, this node included",
    )
    node.add_argument("--tick-ms", type=int, default=50)
    node.add_argument("--fsync", choices=["always", "interval", "never"], default="always")
    node.add_argument("--snapshot-entries", type=int, default=10_000)
    node.add_argument(
        "--inflight-appends",
        type=int,
        default=1,
        help="appends in flight to each follower (1 batches best on a busy machine; more "
        "pipelines over a long round trip)",
    )
    node.add_argument(
        "--async-writes",
        action="store_true",
        help="a leader does not wait for its own disk (etcd's asynchronous storage writes)",
    )
    node.add_argument("--rng-seed", type=int)
    node.add_argument("--allow-fault-injection", action="store_true")
    node.add_argument("--peer-routes", type=Path, help="JSON map of peer address to dial")
    node.add_argument("--durable-ledger", action="store_true")
    node.add_argument("--seeds", default="", help=argparse.SUPPRESS)  # the chaos harness's
    node.add_argument("--log-level", default="info")
    node.set_defaults(func=_run_node)
    for name, help_text in [("put", "write a value"), ("get", "read a value"),
                            ("delete", "delete a key"), ("status", "a node's view")]:  # fmt: skip
        sub = commands.add_parser(name, help=help_text)
        if name != "status":
            sub.add_argument("key")
        if name == "put":
            sub.add_argument("value")
        sub.add_argument("--to", default="127.0.0.1:7101", metavar="HOST:PORT")
        sub.set_defaults(func=_run_client, operation=name)


def parse_peers(text: str) -> dict[str, str]:
    peers = {}
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        node_id, separator, address = part.partition("=")
        if not separator or not node_id or ":" not in address:
            raise ValueError(f"bad peer {part!r}: want id=host:port")
        peers[node_id] = address
    if not peers:
        raise ValueError("--peers names no node")
    return peers


def _run_node(args: argparse.Namespace) -> int:
    from distlab.common.server import ServerOptions, ServerStartError
    from distlab.common.wal_file import FsyncPolicy, WalOptions
    from distlab.raft.node import RaftNodeOptions
    from distlab.raft.service import RaftNodeConfig, run_node

    try:
        routes = json.loads(args.peer_routes.read_text()) if args.peer_routes else {}
        options = RaftNodeOptions(
            node_id=args.node_id,
            data_dir=args.data_dir,
            peers=parse_peers(args.peers),
            tick_ms=args.tick_ms,
            snapshot_entries=args.snapshot_entries,
            inflight_appends=args.inflight_appends,
            async_writes=args.async_writes,
            wal=WalOptions(
                fsync_policy=FsyncPolicy(args.fsync), durable_ledger=args.durable_ledger
            ),
            seed=args.rng_seed,
            peer_routes=routes,
        )
    except (ValueError, OSError) as error:
        print(f"distlab raft node: {error}", file=sys.stderr)
        return EXIT_USAGE
    logs.configure(args.node_id, getattr(logging, args.log_level.upper(), logging.INFO))
    config = RaftNodeConfig(
        node=options,
        server=ServerOptions(host=args.host, port=args.port, port_file=args.port_file),
        allow_fault_injection=args.allow_fault_injection,
    )
    try:
        eventloop.run(run_node(config))
    except ServerStartError as error:
        print(f"distlab raft node: {error}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _run_client(args: argparse.Namespace) -> int:
    import grpc

    from distlab.proto import raft_pb2, raft_pb2_grpc

    target = args.to
    # One session per command line (thesis 6.3): a write retried after a timeout is applied once.
    client_id = random.SystemRandom().randrange(1, 2**64)
    for _ in range(REDIRECTS_MAX):
        with grpc.insecure_channel(target) as channel:
            stub = raft_pb2_grpc.RaftKeyValueStub(channel)
            try:
                if args.operation == "put":
                    reply = stub.Put(
                        raft_pb2.RaftPutRequest(
                            key=args.key.encode(),
                            value=args.value.encode(),
                            client_id=client_id,
                            sequence=1,
                        ),
                        timeout=CLIENT_DEADLINE_S,
                    )
                    print(f"OK (index {reply.index})")
                elif args.operation == "delete":
                    deleted = stub.Delete(
                        raft_pb2.RaftDeleteRequest(
                            key=args.key.encode(), client_id=client_id, sequence=1
                        ),
                        timeout=CLIENT_DEADLINE_S,
                    )
                    print(f"OK (index {deleted.index})")
                elif args.operation == "get":
                    got = stub.Get(
                        raft_pb2.RaftGetRequest(key=args.key.encode()), timeout=CLIENT_DEADLINE_S
                    )
                    if not got.found:
                        print("(not found)")
                        return EXIT_FAILED
                    print(got.value.decode(errors="replace"))
                else:
                    status = stub.Status(raft_pb2.RaftStatusRequest(), timeout=CLIENT_DEADLINE_S)
                    print(status)
                return EXIT_OK
            except grpc.RpcError as error:
                call: grpc.Call = error  # type: ignore[assignment]
                hint = _LEADER_HINT.search(call.details() or "")
                if (
                    call.code() is grpc.StatusCode.FAILED_PRECONDITION
                    and hint is not None
                    and hint.group(1) not in ("unknown", target)
                ):
                    target = hint.group(1)
                    continue
                if call.code().name in _RETRIED:
                    continue  # with the same session: if the first try was applied, this one is not
                print(f"error: {call.code().name}: {call.details()}", file=sys.stderr)
                return EXIT_FAILED
    print("error: too many leader redirects or retries", file=sys.stderr)
    return EXIT_FAILED
