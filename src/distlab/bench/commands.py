"""The ``distlab bench`` command and its workloads: ``wal``, ``kv``, ``raft``, and the cache's
offline tables ``cache-policy`` and ``cache-routing``.

``distlab.cli`` calls ``add_bench_parser(subparsers)`` and then ``args.func(args)``, which returns
the exit status. A new workload adds a subparser here with ``set_defaults(func=...)``; its run
function builds the workload's settings, calls ``distlab.bench.runner.run_benchmark`` per run and
hands the results to ``report``. Import heavy workload modules (anything that loads grpc) inside
the run function, so that ``distlab --help`` stays fast.

Bad arguments end in argparse's usage message and exit status 2, never in a traceback. A run in
which not a single operation succeeded exits with status 1, after printing the table.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from distlab.bench import kv, raft, wal
from distlab.bench.runner import (
    CONCURRENCY_MAX,
    DURATION_S_MAX,
    ROUNDS_DEFAULT,
    ROUNDS_MAX,
    WARMUP_S_MAX,
    BenchResult,
    format_table,
    write_json,
)
from distlab.common import eventloop
from distlab.common.wal_file import FsyncPolicy

EXIT_OK = 0
EXIT_FAILED = 1  # a run completed no operation, or the results could not be saved
EXIT_USAGE = 2  # argparse's own status for bad arguments

RESULTS_DIRECTORY_DEFAULT = Path("bench-results")


def add_bench_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = subparsers.add_parser(
        "bench",
        help="measure throughput and latency",
        description="Benchmarks: each workload runs concurrent workers in a closed loop for a "
        "warm-up, then a fixed duration, and prints operations/s and latency percentiles "
        "(p50/p99/p999) as a table, and saves them as JSON.",
    )
    workloads = bench.add_subparsers(title="workloads", metavar="WORKLOAD", required=True)
    _add_wal_parser(workloads)
    _add_kv_parser(workloads)
    _add_raft_parser(workloads)
    _add_cache_parser(workloads)
    _add_cache_policy_parser(workloads)
    _add_cache_routing_parser(workloads)


def _add_wal_parser(workloads: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = workloads.add_parser(
        "wal",
        help="write-ahead log appends/s and latency, per fsync policy and writers count",
        description="Append to a fresh write-ahead log (in a temporary directory, removed "
        "afterwards) from N concurrent writers through the group committer, and report "
        "acknowledged appends/s and latency for every combination of --writers and --fsync, "
        "then how many times more appends/s the most writers reach than the fewest. With "
        "fsync=always that ratio is what group commit buys.",
    )
    policies = ",".join(policy.value for policy in FsyncPolicy)
    parser.add_argument(
        "--writers",
        type=_writers_counts,
        default=wal.WRITERS_DEFAULT,
        metavar="N[,N...]",
        help=f"concurrent writers, one run each (1..{CONCURRENCY_MAX}; default: 1,64)",
    )
    parser.add_argument(
        "--fsync",
        type=_fsync_policies,
        default=wal.FSYNC_POLICIES_DEFAULT,
        metavar="POLICY[,POLICY...]",
        help=f"fsync policies to run, from {policies} (default: always)",
    )
    parser.add_argument(
        "--payload-bytes",
        type=_bounded_int(1, wal.PAYLOAD_BYTES_MAX),
        default=wal.PAYLOAD_BYTES_DEFAULT,
        metavar="BYTES",
        help=f"bytes per record (1..{wal.PAYLOAD_BYTES_MAX}; default: %(default)s)",
    )
    parser.add_argument(
        "--duration",
        type=_seconds(0.0, DURATION_S_MAX, zero_allowed=False),
        default=wal.DURATION_S_DEFAULT,
        metavar="SECONDS",
        help="measured time per run (default: %(default)s)",
    )
    parser.add_argument(
        "--warmup",
        type=_seconds(0.0, WARMUP_S_MAX, zero_allowed=True),
        default=wal.WARMUP_S_DEFAULT,
        metavar="SECONDS",
        help="unmeasured time before each run (default: %(default)s)",
    )
    parser.add_argument(
        "--dir",
        type=_existing_directory,
        default=None,
        metavar="DIRECTORY",
        help="where to create the temporary logs; the results are those of its file system "
        "(default: the system's temporary directory)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        metavar="PATH",
        help="where to save the results (default: bench-results/wal-<UTC timestamp>.json)",
    )
    parser.set_defaults(func=_run_wal)


def _run_wal(args: argparse.Namespace) -> int:
    try:
        settings = wal.WalBenchSettings(
            writers_counts=args.writers,
            fsync_policies=args.fsync,
            payload_bytes=args.payload_bytes,
            duration_s=args.duration,
            warmup_s=args.warmup,
            directory=args.dir,
        )
    except ValueError as error:
        return _fail(f"bench wal: {error}", EXIT_USAGE)
    started_at = datetime.now(UTC)
    try:
        results = eventloop.run(wal.run_wal_benchmarks(settings, progress=sys.stderr))
    except OSError as error:
        return _fail(f"bench wal: cannot run the write-ahead log: {error}")
    return report(
        results,
        benchmark=wal.BENCHMARK_NAME,
        json_path=args.json,
        started_at=started_at,
        summary=wal.group_commit_lines(results),
    )


def _add_kv_parser(workloads: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = workloads.add_parser(
        "kv",
        help="key-value store puts, gets and a read/write mix end to end, next to a gRPC echo",
        description="Measure the replicated key-value store end to end through gRPC: blind "
        "puts, gets of preloaded keys, and a mix of both, each row at the same concurrency, "
        "plus a bare gRPC echo (the health service's Check on an in-process server) as the "
        "reference that every row is also given as a ratio of. By default it starts its own "
        "local cluster (node processes on loopback, data in a temporary directory) and always "
        "stops and removes it; --to measures an existing cluster instead.",
    )
    policies = ",".join(policy.value for policy in FsyncPolicy)
    cluster = parser.add_argument_group(
        "cluster", "either --to, or the local cluster's --nodes, --fsync and --dir"
    )
    cluster.add_argument(
        "--to",
        type=_targets,
        default=(),
        metavar="HOST:PORT[,HOST:PORT...]",
        help=f"nodes of an existing cluster to measure, at most {kv.TARGETS_MAX}; its N, R, W "
        "and fsync policy are its own (default: start a local cluster)",
    )
    cluster.add_argument(
        "--nodes",
        type=_bounded_int(1, kv.NODES_MAX),
        default=None,
        metavar="N",
        help=f"node processes of the local cluster (1..{kv.NODES_MAX}; default: "
        f"{kv.NODES_DEFAULT}); replicas N=min(3, nodes), R=W=a majority of N",
    )
    cluster.add_argument(
        "--fsync",
        type=_fsync_policy,
        default=None,
        metavar="POLICY",
        help=f"the local nodes' WAL fsync policy, one of {policies} "
        f"(default: {kv.FSYNC_POLICY_DEFAULT.value})",
    )
    cluster.add_argument(
        "--dir",
        type=_existing_directory,
        default=None,
        metavar="DIRECTORY",
        help="where to create the local cluster's temporary directory; the results are those of "
        "its file system (default: the system's temporary directory)",
    )
    parser.add_argument(
        "--keys",
        type=_bounded_int(1, kv.KEYS_MAX),
        default=kv.KEYS_DEFAULT,
        metavar="COUNT",
        help=f"keys to choose from, uniformly (1..{kv.KEYS_MAX}; default: %(default)s)",
    )
    parser.add_argument(
        "--value-bytes",
        type=_bounded_int(1, kv.VALUE_BYTES_MAX),
        default=kv.VALUE_BYTES_DEFAULT,
        metavar="BYTES",
        help=f"bytes per value (1..{kv.VALUE_BYTES_MAX}; keys x bytes at most "
        f"{kv.DATA_SET_BYTES_MAX}; default: %(default)s)",
    )
    parser.add_argument(
        "--read-fraction",
        type=_fraction,
        default=kv.READ_FRACTION_DEFAULT,
        metavar="FRACTION",
        help="share of gets in the mixed workload, the rest blind puts ([0, 1]; "
        "default: %(default)s)",
    )
    parser.add_argument(
        "--concurrency",
        type=_bounded_int(1, kv.CONCURRENCY_MAX),
        default=kv.CONCURRENCY_DEFAULT,
        metavar="N",
        help=f"concurrent workers in every row (1..{kv.CONCURRENCY_MAX}; default: %(default)s)",
    )
    parser.add_argument(
        "--duration",
        type=_seconds(0.0, kv.DURATION_S_MAX, zero_allowed=False),
        default=kv.DURATION_S_DEFAULT,
        metavar="SECONDS",
        help="measured time per row (default: %(default)s)",
    )
    parser.add_argument(
        "--warmup",
        type=_seconds(0.0, WARMUP_S_MAX, zero_allowed=True),
        default=kv.WARMUP_S_DEFAULT,
        metavar="SECONDS",
        help="unmeasured time before each row (default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=kv.SEED_DEFAULT,
        metavar="INTEGER",
        help="seed of the key choices; worker i uses random.Random(seed + i) "
        "(default: %(default)s)",
    )
    _add_rounds_argument(parser)
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        metavar="PATH",
        help="where to save the results (default: bench-results/kv-<UTC timestamp>.json)",
    )
    parser.set_defaults(func=_run_kv)


def _run_kv(args: argparse.Namespace) -> int:
    local_only = [
        flag
        for flag, value in (("--nodes", args.nodes), ("--fsync", args.fsync), ("--dir", args.dir))
        if value is not None
    ]
    if args.to and local_only:
        return _fail(
            f"bench kv: {', '.join(local_only)}: only for the local cluster, not with --to",
            EXIT_USAGE,
        )
    try:
        settings = kv.KvBenchSettings(
            targets=tuple(args.to),
            nodes=kv.NODES_DEFAULT if args.nodes is None else args.nodes,
            fsync_policy=kv.FSYNC_POLICY_DEFAULT if args.fsync is None else args.fsync,
            directory=args.dir,
            keys=args.keys,
            value_bytes=args.value_bytes,
            read_fraction=args.read_fraction,
            concurrency=args.concurrency,
            duration_s=args.duration,
            warmup_s=args.warmup,
            seed=args.seed,
            rounds=args.rounds,
        )
    except ValueError as error:
        return _fail(f"bench kv: {error}", EXIT_USAGE)
    started_at = datetime.now(UTC)
    try:
        outcome = kv.run_kv_benchmarks(settings, progress=sys.stderr)
    except kv.KvBenchError as error:
        return _fail(f"bench kv: {error}")
    except OSError as error:
        return _fail(f"bench kv: cannot run the cluster: {error}")
    return report(
        outcome.results,
        benchmark=kv.BENCHMARK_NAME,
        json_path=args.json,
        started_at=started_at,
        summary=[*kv.echo_ratio_lines(outcome.results), *outcome.warnings],
    )


def _add_raft_parser(workloads: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = workloads.add_parser(
        "raft",
        help="linearizable puts and gets on a local Raft group, next to a gRPC echo",
        description="Start a local Raft group (distlab raft node processes on loopback, data "
        "in a temporary directory, always stopped and removed) and measure puts (committed "
        "and applied) and ReadIndex gets at the leader, plus a bare gRPC echo as the "
        "reference every row is also given as a ratio of.",
    )
    parser.add_argument("--nodes", type=_bounded_int(1, 7), default=raft.NODES_DEFAULT)
    parser.add_argument("--fsync", type=_fsync_policy, default=FsyncPolicy.ALWAYS)
    parser.add_argument("--keys", type=_bounded_int(1, kv.KEYS_MAX), default=raft.KEYS_DEFAULT)
    parser.add_argument(
        "--value-bytes", type=_bounded_int(0, kv.VALUE_BYTES_MAX), default=raft.VALUE_BYTES_DEFAULT
    )
    parser.add_argument("--concurrency", type=_bounded_int(1, CONCURRENCY_MAX), default=64)
    parser.add_argument(
        "--duration", type=_seconds(0.0, DURATION_S_MAX, zero_allowed=False), default=5.0
    )
    parser.add_argument(
        "--warmup", type=_seconds(0.0, WARMUP_S_MAX, zero_allowed=True), default=1.0
    )
    parser.add_argument("--seed", type=int, default=0)
    _add_rounds_argument(parser)
    parser.add_argument(
        "--async-writes",
        action="store_true",
        help="run the nodes with --async-writes: the leader does not wait for its own disk",
    )
    parser.add_argument("--json", type=Path, default=None, help="where to save the results")
    parser.set_defaults(func=_run_raft)


def _add_cache_parser(workloads: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from distlab.bench import cache

    defaults = cache.CacheBenchSettings()
    parser = workloads.add_parser(
        "cache",
        help="a local cache cluster: gets, a get/set mix, multi-gets; echo and memcached too",
        description="Start a local cache cluster (distlab cache node processes on loopback), "
        "load it, and measure unary gets, a get/set mix (with its hit ratio) and multi-gets "
        "through the routing client, all on zipfian keys; plus a bare gRPC echo, and "
        "memcached through pymemcache when both are installed, as references.",
    )
    parser.add_argument("--nodes", type=_bounded_int(1, 16), default=defaults.nodes)
    parser.add_argument("--keys", type=_bounded_int(200, 1_000_000), default=defaults.keys)
    parser.add_argument(
        "--value-bytes", type=_bounded_int(0, kv.VALUE_BYTES_MAX), default=defaults.value_bytes
    )
    parser.add_argument(
        "--capacity-mb", type=float, default=defaults.capacity_mb, help="memory of each node"
    )
    parser.add_argument("--policy", choices=["lru", "tinylfu"], default=defaults.policy)
    parser.add_argument("--get-fraction", type=float, default=defaults.get_fraction)
    parser.add_argument("--batch-keys", type=_bounded_int(1, 1000), default=defaults.batch_keys)
    parser.add_argument("--alpha", type=float, default=defaults.alpha, help="zipf skew")
    parser.add_argument("--concurrency", type=_bounded_int(1, CONCURRENCY_MAX), default=64)
    parser.add_argument(
        "--duration", type=_seconds(0.0, DURATION_S_MAX, zero_allowed=False), default=5.0
    )
    parser.add_argument(
        "--warmup", type=_seconds(0.0, WARMUP_S_MAX, zero_allowed=True), default=1.0
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-memcached", action="store_true", help="skip the memcached rows")
    _add_rounds_argument(parser)
    parser.add_argument("--json", type=Path, default=None, help="where to save the results")
    parser.set_defaults(func=_run_cache)


def _add_rounds_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rounds",
        type=_bounded_int(1, ROUNDS_MAX),
        default=ROUNDS_DEFAULT,
        help="the rows take turns this many times, each a share of --duration and --warmup, "
        "so a drift in the machine's speed reaches them alike (default: %(default)s)",
    )


def _run_cache(args: argparse.Namespace) -> int:
    from distlab.bench import cache

    try:
        settings = cache.CacheBenchSettings(
            nodes=args.nodes,
            keys=args.keys,
            value_bytes=args.value_bytes,
            capacity_mb=args.capacity_mb,
            policy=args.policy,
            get_fraction=args.get_fraction,
            batch_keys=args.batch_keys,
            alpha=args.alpha,
            concurrency=args.concurrency,
            duration_s=args.duration,
            warmup_s=args.warmup,
            seed=args.seed,
            memcached=not args.no_memcached,
            rounds=args.rounds,
        )
    except ValueError as error:
        return _fail(f"bench cache: {error}", EXIT_USAGE)
    started_at = datetime.now(UTC)
    try:
        results, notes = cache.run_cache_benchmarks(settings, progress=sys.stderr)
    except cache.CacheBenchError as error:
        return _fail(f"bench cache: {error}")
    return report(
        results,
        benchmark=cache.BENCHMARK_NAME,
        json_path=args.json,
        started_at=started_at,
        summary=cache.summary_lines(results, notes),
    )


def _add_cache_policy_parser(
    workloads: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    parser = workloads.add_parser(
        "cache-policy",
        help="hit ratios of LRU, W-TinyLFU and Belady's OPT on a trace, at several sizes",
        description="Replay a trace of keys against LRU, W-TinyLFU (Caffeine's) and Belady's "
        "optimal offline policy (the upper bound) at several cache sizes, and print each hit "
        "ratio. The trace is zipfian (--keys, --length, --alpha, --seed) unless --trace names "
        "a file of keys, one per line.",
    )
    parser.add_argument("--trace", type=Path, help="a file of keys, one per line")
    parser.add_argument("--keys", type=_bounded_int(1, 10_000_000), default=100_000)
    parser.add_argument("--length", type=_bounded_int(1, 10_000_000), default=500_000)
    parser.add_argument("--alpha", type=float, default=0.9, help="zipf skew (default: 0.9)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--sizes",
        type=_percents,
        default=[0.1, 1.0, 5.0],
        metavar="PERCENT[,PERCENT...]",
        help="cache sizes as percents of the key space: --keys, or a trace file's distinct "
        "keys (default: 0.1,1,5)",
    )
    parser.add_argument("--json", type=Path, default=None, help="where to save the table")
    parser.set_defaults(func=_run_cache_policy)


def _run_cache_policy(args: argparse.Namespace) -> int:
    from distlab.bench import cache_tables
    from distlab.cache.traces import read_trace, zipf_trace

    started_at = datetime.now(UTC)
    try:
        if args.trace is not None:
            with args.trace.open(encoding="utf-8") as lines:
                trace = read_trace(lines)
            parameters: dict[str, object] = {"trace": str(args.trace), "length": len(trace)}
            key_space = len(set(trace))
        else:
            trace = zipf_trace(args.keys, args.length, args.alpha, args.seed)
            parameters = {"keys": args.keys, "length": args.length, "alpha": args.alpha}
            parameters["seed"] = args.seed
            key_space = args.keys
    except (OSError, ValueError) as error:
        return _fail(f"cannot build the trace: {error}", EXIT_USAGE)
    if not trace:
        return _fail("the trace holds no key", EXIT_USAGE)
    print(f"trace: {len(trace):,} requests, {len(set(trace)):,} distinct keys", file=sys.stderr)
    rows = cache_tables.policy_table(trace, key_space, args.sizes, sys.stderr)
    print(cache_tables.format_policy_table(rows))
    return _save_table("cache-policy", parameters, rows, args.json, started_at)


def _add_cache_routing_parser(
    workloads: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    parser = workloads.add_parser(
        "cache-routing",
        help="keys moved and load spread of four routers when membership changes",
        description="Place --keys keys on --nodes nodes with consistent hashing, jump hash, "
        "rendezvous hashing and consistent hashing with bounded loads; add a node, remove the "
        "last, remove one from the middle; print the fraction of keys moved next to the ideal, "
        "and the load after the change (max/mean and coefficient of variation).",
    )
    parser.add_argument("--keys", type=_bounded_int(1, 1_000_000), default=100_000)
    parser.add_argument("--nodes", type=_bounded_int(2, 1_000), default=5)
    parser.add_argument("--json", type=Path, default=None, help="where to save the table")
    parser.set_defaults(func=_run_cache_routing)


def _run_cache_routing(args: argparse.Namespace) -> int:
    from distlab.bench import cache_tables

    started_at = datetime.now(UTC)
    rows = cache_tables.routing_table(args.keys, args.nodes, sys.stderr)
    print(cache_tables.format_routing_table(rows))
    parameters: dict[str, object] = {"keys": args.keys, "nodes": args.nodes}
    return _save_table("cache-routing", parameters, rows, args.json, started_at)


def _save_table(
    benchmark: str,
    parameters: dict[str, object],
    rows: Sequence[object],
    json_path: Path | None,
    started_at: datetime,
) -> int:
    from distlab.bench import cache_tables

    if json_path is None:
        timestamp = started_at.strftime("%Y%m%dT%H%M%SZ")
        json_path = RESULTS_DIRECTORY_DEFAULT / f"{benchmark}-{timestamp}.json"
    try:
        cache_tables.save(benchmark, parameters, rows, json_path)
    except OSError as error:
        return _fail(f"cannot save the table to {json_path}: {error}")
    print(f"table saved to {json_path}")
    return EXIT_OK


def _percents(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of percents: {text!r}") from None
    if not values or any(not 0 < value <= 100 for value in values):
        raise argparse.ArgumentTypeError("each size must be a percent in (0, 100]")
    return values


def _run_raft(args: argparse.Namespace) -> int:
    try:
        settings = raft.RaftBenchSettings(
            nodes=args.nodes,
            fsync_policy=args.fsync,
            keys=args.keys,
            value_bytes=args.value_bytes,
            concurrency=args.concurrency,
            duration_s=args.duration,
            warmup_s=args.warmup,
            seed=args.seed,
            rounds=args.rounds,
            async_writes=args.async_writes,
        )
    except ValueError as error:
        return _fail(f"bench raft: {error}", EXIT_USAGE)
    started_at = datetime.now(UTC)
    try:
        results = raft.run_raft_benchmarks(settings, progress=sys.stderr)
    except raft.RaftBenchError as error:
        return _fail(f"bench raft: {error}")
    return report(
        results,
        benchmark=raft.BENCHMARK_NAME,
        json_path=args.json,
        started_at=started_at,
        summary=kv.echo_ratio_lines(results),
    )


def report(
    results: Sequence[BenchResult],
    *,
    benchmark: str,
    json_path: Path | None,
    started_at: datetime,
    summary: Sequence[str] = (),
) -> int:
    """Print the table and the summary lines, save the JSON, and choose the exit status."""
    print(format_table(results))
    for line in summary:
        print(line)
    if json_path is None:
        timestamp = started_at.strftime("%Y%m%dT%H%M%SZ")
        json_path = RESULTS_DIRECTORY_DEFAULT / f"{benchmark}-{timestamp}.json"
    try:
        write_json(results, json_path, benchmark=benchmark, started_at=started_at)
    except OSError as error:
        return _fail(f"cannot save the results to {json_path}: {error}")
    print(f"results saved to {json_path}")
    if any(result.operations == 0 for result in results):
        return _fail("at least one run completed no operation (see the notes above)")
    return EXIT_OK


def _fail(message: str, status: int = EXIT_FAILED) -> int:
    print(f"distlab: error: {message}", file=sys.stderr)
    return status


def _comma_separated(text: str) -> list[str]:
    words = [word.strip() for word in text.split(",")]
    if not all(words):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return words


def _writers_counts(text: str) -> tuple[int, ...]:
    counts = []
    for word in _comma_separated(text):
        try:
            count = int(word)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {word!r}") from None
        if not 1 <= count <= CONCURRENCY_MAX:
            raise argparse.ArgumentTypeError(f"must be in [1, {CONCURRENCY_MAX}], got {count}")
        counts.append(count)
    if len(counts) > wal.RUNS_MAX:
        raise argparse.ArgumentTypeError(f"at most {wal.RUNS_MAX} writers counts")
    return tuple(dict.fromkeys(counts))  # duplicates would only repeat a run


def _fsync_policies(text: str) -> tuple[FsyncPolicy, ...]:
    policies = [_fsync_policy(word) for word in _comma_separated(text)]
    return tuple(dict.fromkeys(policies))


def _fsync_policy(text: str) -> FsyncPolicy:
    try:
        return FsyncPolicy(text.strip())
    except ValueError:
        choices = ", ".join(policy.value for policy in FsyncPolicy)
        raise argparse.ArgumentTypeError(
            f"unknown fsync policy {text!r} (choose from {choices})"
        ) from None


def _targets(text: str) -> tuple[str, ...]:
    targets = []
    for word in _comma_separated(text):
        host, separator, port = word.rpartition(":")
        if not separator or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise argparse.ArgumentTypeError(
                f"expected HOST:PORT with a port in [1, 65535], got {word!r}"
            )
        targets.append(word)
    if len(targets) > kv.TARGETS_MAX:
        raise argparse.ArgumentTypeError(f"at most {kv.TARGETS_MAX} targets")
    return tuple(dict.fromkeys(targets))  # a duplicate would only double one node's share


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:  # NaN fails both comparisons
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def _bounded_int(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in [{low}, {high}], got {value}")
        return value

    return parse


def _seconds(low: float, high: float, *, zero_allowed: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
        # Written so that NaN fails every comparison and is rejected.
        above_low = low <= value if zero_allowed else low < value
        if not (above_low and value <= high):
            bracket = "[" if zero_allowed else "("
            raise argparse.ArgumentTypeError(f"must be in {bracket}{low}, {high}], got {text}")
        return value

    return parse


def _existing_directory(text: str) -> Path:
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"not an existing directory: {text}")
    return path
