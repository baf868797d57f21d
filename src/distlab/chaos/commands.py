"""The ``distlab chaos`` command: ``run`` a cluster under faults, ``check`` a saved run.

    distlab chaos run --system kv --faults partition,kill,pause,clock,disk \\
        --duration 60 --rate 200 --seed 42 --out runs/
    distlab chaos run --replay runs/kv-seed42-20261123T101500
    distlab chaos check runs/kv-seed42-20261123T101500

Exit status: 0 the run is valid, 1 anomalies were found, 2 a check could not decide (or the
command was used wrongly, argparse's status). A run that is not valid prints its seed and the
command that replays it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from distlab.chaos.nemesis import FaultKind, Schedule
from distlab.common import eventloop

EXIT_USAGE = 2
RUNS_DIRECTORY_DEFAULT = Path("runs")
# A run this long holds a big history; longer soak runs should be several runs.
DURATION_S_MAX = 3600.0
NODES_MAX = 9


def add_chaos_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    chaos = subparsers.add_parser(
        "chaos",
        help="run a cluster under faults and check what its clients saw",
        description="Jepsen-style testing on this machine: start a cluster on loopback, run a "
        "workload that records every operation, inject faults on a seeded schedule, heal, then "
        "check the history and write a report (history.jsonl, results.json, latency.png, "
        "rate.png, index.html). Exit status: 0 valid, 1 anomalies found, 2 could not decide.",
    )
    commands = chaos.add_subparsers(title="commands", metavar="COMMAND", required=True)
    _add_run_parser(commands)
    _add_check_parser(commands)


def _add_run_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from distlab.chaos.systems import SYSTEMS

    run = commands.add_parser(
        "run",
        help="one chaos run",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    run.add_argument("--system", choices=sorted(SYSTEMS), default="kv")
    run.add_argument(
        "--faults",
        type=_fault_kinds,
        default=[FaultKind.PARTITION, FaultKind.KILL, FaultKind.PAUSE],
        help="comma-separated: " + ",".join(kind.value for kind in FaultKind),
    )
    run.add_argument("--duration", type=_duration, default=60.0, help="workload seconds")
    run.add_argument("--rate", type=_positive_float, default=100.0, help="operations/s")
    run.add_argument("--concurrency", type=_positive_int, default=10, help="client processes")
    run.add_argument("--seed", type=int, default=0, help="drives the schedule and the workload")
    run.add_argument("--out", type=Path, default=RUNS_DIRECTORY_DEFAULT, help="parent of runs")
    run.add_argument("--nodes", type=_node_count, default=3)
    run.add_argument("--interval", type=_positive_float, default=10.0, help="s between faults")
    run.add_argument(
        "--fault-duration",
        type=_range,
        default=(2.0, 6.0),
        metavar="MIN,MAX",
        help="each fault lasts between these many seconds",
    )
    run.add_argument("--quiet", type=float, help="fault-free seconds at the end (default: 15%%)")
    run.add_argument(
        "--schedule",
        type=Path,
        help="a scripted fault schedule (JSON, as in a run.json) instead of a drawn one",
    )
    run.add_argument(
        "--replay",
        type=Path,
        metavar="RUN_DIR",
        help="repeat that run's configuration, fault schedule and workload seed",
    )
    run.add_argument(
        "--workload-option",
        type=_workload_option,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set one of the workload's options (a JSON value, else a string), e.g. "
        "--workload-option leases=false for the cache's negative control (repeatable)",
    )
    kv = run.add_argument_group("key-value store")
    kv.add_argument("--replicas", type=_positive_int, default=3, help="N")
    kv.add_argument("--r", type=_positive_int, default=2)
    kv.add_argument("--w", type=_positive_int, default=2)
    kv.add_argument("--sloppy-quorum", action="store_true", help="default: strict quorum")
    kv.add_argument("--fsync", choices=["always", "interval", "never"], default="always")
    kv.add_argument(
        "--node-arg",
        action="append",
        default=[],
        metavar="FLAG",
        help="pass a flag to every node, e.g. --node-arg=--last-writer-wins (repeatable)",
    )
    kv.add_argument(
        "--require", action="append", default=[], metavar="CHECK", help="make a check required"
    )
    kv.add_argument(
        "--informative",
        action="append",
        default=[],
        metavar="CHECK",
        help="report a check without letting it fail the run",
    )
    kv.add_argument(
        "--converge-wait",
        type=float,
        default=10.0,
        help="seconds after healing for the replicas to agree",
    )
    run.set_defaults(func=_run)


def _add_check_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    check = commands.add_parser(
        "check",
        help="check a saved run's history again and rewrite its report",
    )
    check.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    check.set_defaults(func=_check)


def _run(args: argparse.Namespace) -> int:
    from distlab.chaos.runner import RunConfig, load_run, run, summary_lines
    from distlab.chaos.systems import SystemConfig

    command = shlex.join(["distlab", *sys.argv[1:]])
    schedule: Schedule | None = None
    if args.replay is not None:
        try:
            config, schedule, _ = load_run(args.replay)
        except (OSError, ValueError, KeyError, TypeError) as error:
            print(f"distlab chaos run: cannot replay {args.replay}: {error}", file=sys.stderr)
            return EXIT_USAGE
    else:
        try:
            config = RunConfig(
                system=args.system,
                duration_s=args.duration,
                seed=args.seed,
                faults=tuple(str(kind) for kind in args.faults),
                interval_s=args.interval,
                fault_s=args.fault_duration,
                quiet_s=args.quiet,
                system_config=SystemConfig(
                    nodes=args.nodes,
                    replicas=args.replicas,
                    r=args.r,
                    w=args.w,
                    strict_quorum=not args.sloppy_quorum,
                    fsync=args.fsync,
                    node_args=tuple(args.node_arg),
                    require=tuple(args.require),
                    informative=tuple(args.informative),
                    rate=args.rate,
                    concurrency=args.concurrency,
                    converge_wait_s=args.converge_wait,
                    extra={"workload": dict(args.workload_option)},
                ),
            )
            if args.schedule is not None:
                data = json.loads(args.schedule.read_text())
                schedule = Schedule.from_json(data.get("schedule", data))
        except (OSError, ValueError) as error:
            print(f"distlab chaos run: {error}", file=sys.stderr)
            return EXIT_USAGE
    print(f"chaos run: system {config.system}, seed {config.seed}", file=sys.stderr)
    outcome = eventloop.run(run(config, args.out, schedule=schedule, command=command))
    for line in summary_lines(outcome):
        print(line)
    return outcome.exit_status


def _workload_option(text: str) -> tuple[str, object]:
    name, separator, value = text.partition("=")
    if not separator or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


def _check(args: argparse.Namespace) -> int:
    from distlab.chaos.runner import check_run, summary_lines

    try:
        outcome = check_run(args.run_dir)
    except (OSError, ValueError, KeyError) as error:
        print(f"distlab chaos check: {args.run_dir}: {error}", file=sys.stderr)
        return EXIT_USAGE
    for line in summary_lines(outcome):
        print(line)
    return outcome.exit_status


def _fault_kinds(text: str) -> list[FaultKind]:
    kinds = []
    for name in filter(None, (part.strip() for part in text.split(","))):
        try:
            kinds.append(FaultKind(name))
        except ValueError:
            known = ",".join(kind.value for kind in FaultKind)
            raise argparse.ArgumentTypeError(f"unknown fault {name!r}; known: {known}") from None
    if not kinds:
        raise argparse.ArgumentTypeError("name at least one fault")
    return kinds


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def _duration(text: str) -> float:
    value = _positive_float(text)
    if value > DURATION_S_MAX:
        raise argparse.ArgumentTypeError(f"at most {DURATION_S_MAX:.0f} s")
    return value


def _node_count(text: str) -> int:
    value = _positive_int(text)
    if value > NODES_MAX:
        raise argparse.ArgumentTypeError(f"at most {NODES_MAX} nodes on one machine")
    return value


def _range(text: str) -> tuple[float, float]:
    parts: Sequence[str] = text.split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError("want MIN,MAX")
    low, high = (float(part) for part in parts)
    if not 0 < low <= high:
        raise argparse.ArgumentTypeError("want 0 < MIN <= MAX")
    return low, high
