"""``distlab cache``: run a cache node, and talk to a cache cluster.

distlab cache node --port 7201 --capacity-mb 64 --policy tinylfu
distlab cache set greeting hello --ttl-ms 60000     # routed over --nodes
distlab cache get greeting
distlab cache delete greeting
distlab cache stats
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from distlab.common import eventloop, logs

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
CACHE_BASE_PORT_DEFAULT = 7201  # `distlab up` puts its cache nodes at 7201, 7202, 7203
DEFAULT_NODES = ",".join(f"127.0.0.1:{CACHE_BASE_PORT_DEFAULT + index}" for index in range(3))


def add_cache_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cache = subparsers.add_parser(
        "cache",
        help="a memcached-style cache cluster",
        description="A cache cluster: in-memory nodes bounded by bytes (LRU or W-TinyLFU), "
        "keys routed by the client (consistent hashing), leases against stale sets and "
        "thundering herds (Scaling Memcache at Facebook, NSDI 2013).",
    )
    commands = cache.add_subparsers(title="commands", metavar="COMMAND", required=True)
    node = commands.add_parser("node", help="run one cache node")
    node.add_argument("--node-id", default="cache", help="a name for the logs")
    node.add_argument(
        "--data-dir",
        type=Path,
        help="unused: a cache node keeps nothing on disk (accepted so every node starts alike)",
    )
    node.add_argument("--host", default="127.0.0.1")
    node.add_argument("--port", type=int, default=CACHE_BASE_PORT_DEFAULT, help="0 picks one")
    node.add_argument("--port-file", type=Path, help="write the bound port here once serving")
    node.add_argument("--capacity-mb", type=float, default=64.0, help="memory for items, MiB")
    node.add_argument("--policy", choices=["lru", "tinylfu"], default="lru")
    node.add_argument("--lease-ms", type=int, default=2_000, help="how long a lease is exclusive")
    node.add_argument(
        "--stale-ms", type=int, default=2_000, help="how long a deleted value may be served stale"
    )
    node.add_argument("--sweep-interval-ms", type=int, default=1_000)
    node.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    node.add_argument("--log-level", default="info")
    node.set_defaults(func=_run_node)
    router = commands.add_parser(
        "router",
        help="one endpoint that routes to the cache nodes (mcrouter-like)",
        description="Serve the Cache service and forward each call to the node its key is "
        "routed to, with the client's failover; keys with a --hot-prefix are kept on "
        "--hot-replicas nodes, writes going to all and reads to one at random.",
    )
    router.add_argument("--nodes", default=DEFAULT_NODES, metavar="HOST:PORT,...")
    router.add_argument("--router", choices=["consistent", "jump", "rendezvous"],
                        default="consistent")  # fmt: skip
    router.add_argument("--hot-prefix", action="append", default=[], metavar="PREFIX")
    router.add_argument("--hot-replicas", type=int, default=2)
    router.add_argument("--node-id", default="router", help="a name for the logs")
    router.add_argument("--data-dir", type=Path, help="unused, as for a cache node")
    router.add_argument("--host", default="127.0.0.1")
    router.add_argument("--port", type=int, default=7200, help="0 picks one")
    router.add_argument("--port-file", type=Path, help="write the bound port here once serving")
    router.add_argument("--log-level", default="info")
    router.set_defaults(func=_run_router)
    for name, help_text in [
        ("get", "read a key"),
        ("set", "write a key"),
        ("delete", "delete a key"),
        ("stats", "every node's counters"),
    ]:
        sub = commands.add_parser(name, help=help_text)
        if name != "stats":
            sub.add_argument("key")
        if name == "set":
            sub.add_argument("value")
            sub.add_argument("--ttl-ms", type=int, default=0, help="0: no expiry")
        sub.add_argument(
            "--nodes",
            default=DEFAULT_NODES,
            metavar="HOST:PORT,...",
            help="the cluster's nodes (default: %(default)s)",
        )
        sub.set_defaults(func=_run_client, operation=name)


def _run_node(args: argparse.Namespace) -> int:
    from distlab.cache.service import CacheNodeConfig, CacheNodeOptions, run_node
    from distlab.common.server import ServerOptions, ServerStartError

    try:
        options = CacheNodeOptions(
            capacity_bytes=int(args.capacity_mb * 1024 * 1024),
            policy=args.policy,
            lease_ms=args.lease_ms,
            stale_ms=args.stale_ms,
            sweep_interval_ms=args.sweep_interval_ms,
        )
    except ValueError as error:
        print(f"distlab cache node: {error}", file=sys.stderr)
        return EXIT_USAGE
    logs.configure(args.node_id, getattr(logging, args.log_level.upper(), logging.INFO))
    config = CacheNodeConfig(
        node=options,
        server=ServerOptions(
            host=args.host,
            port=args.port,
            port_file=args.port_file,
            metrics_port=args.metrics_port,
        ),
    )
    try:
        eventloop.run(run_node(config))
    except ServerStartError as error:
        print(f"distlab cache node: {error}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _run_router(args: argparse.Namespace) -> int:
    from distlab.cache.router import RouterConfig, RouterOptions, run_router
    from distlab.common.server import ServerOptions, ServerStartError

    try:
        options = RouterOptions(
            nodes=tuple(node.strip() for node in args.nodes.split(",") if node.strip()),
            router=args.router,
            hot_prefixes=tuple(prefix.encode() for prefix in args.hot_prefix),
            hot_replicas=args.hot_replicas,
        )
    except ValueError as error:
        print(f"distlab cache router: {error}", file=sys.stderr)
        return EXIT_USAGE
    logs.configure(args.node_id, getattr(logging, args.log_level.upper(), logging.INFO))
    server = ServerOptions(host=args.host, port=args.port, port_file=args.port_file)
    try:
        eventloop.run(run_router(RouterConfig(router=options, server=server)))
    except ServerStartError as error:
        print(f"distlab cache router: {error}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _run_client(args: argparse.Namespace) -> int:
    from distlab.common.errors import DistlabError

    nodes = [node.strip() for node in args.nodes.split(",") if node.strip()]
    if not nodes:
        print("error: --nodes names no node", file=sys.stderr)
        return EXIT_USAGE
    try:
        return eventloop.run(_client_call(args, nodes))
    except DistlabError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED


async def _client_call(args: argparse.Namespace, nodes: list[str]) -> int:
    from distlab.cache.client import CacheClient

    async with CacheClient(nodes) as client:
        if args.operation == "get":
            value = await client.get(args.key.encode())
            if value is None:
                print("(miss)")
                return EXIT_FAILED
            print(value.decode(errors="replace"))
        elif args.operation == "set":
            stored = await client.set(args.key.encode(), args.value.encode(), ttl_ms=args.ttl_ms)
            print("STORED" if stored else "NOT_STORED")
        elif args.operation == "delete":
            print("DELETED" if await client.delete(args.key.encode()) else "NOT_FOUND")
        else:
            stats = await client.stats()
            for address in nodes:
                reply = stats.get(address)
                if reply is None:
                    print(f"{address}  unreachable")
                    continue
                print(
                    f"{address}  items={reply.items} bytes={reply.bytes}/{reply.capacity_bytes} "
                    f"hits={reply.hits} misses={reply.misses} evictions={reply.evictions} "
                    f"expirations={reply.expirations} policy={reply.policy}"
                )
    return EXIT_OK
