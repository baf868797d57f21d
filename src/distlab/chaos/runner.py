"""One chaos run, end to end: cluster, workload, nemesis, healing, final reads, checks, report.

The recipe (Jepsen's ``core/run!``), in the order that makes the verdict mean something:

1. Draw the fault schedule from the seed (``nemesis.random_schedule``), or take a scripted or
   replayed one. Save it with the configuration in ``run.json`` before anything starts, so a run
   that dies still leaves what is needed to repeat it.
2. Start the nodes behind their proxies (``cluster.ChaosCluster``) and wait until each serves.
3. Run the workload and the nemesis side by side for ``duration_s``. Every client operation and
   every fault goes into ``history.jsonl`` as it happens.
4. Heal everything, whatever the schedule said: reconnect the network, resume paused nodes,
   restart dead ones, put clocks back. Then let the system settle.
5. The system's final observations (for the KV store: a read of every key at R=N, then each
   replica's state, waited on for ``converge_wait_s``).
6. Check the history; write ``results.json`` and the report; stop the cluster.

Exit status (``checkers.exit_status``): 0 valid, 1 anomalies found, 2 could not decide.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from distlab.chaos import checkers, report
from distlab.chaos.checkers import CheckResult, CheckVerdict
from distlab.chaos.cluster import ChaosCluster
from distlab.chaos.history import NEMESIS_PROCESS, HistoryRecorder, Op, OpType, loads, pair
from distlab.chaos.nemesis import Fault, FaultKind, Schedule, random_schedule
from distlab.chaos.systems import SYSTEMS, ChaosSystem, SystemConfig
from distlab.proto import chaos_pb2

logger = logging.getLogger("distlab.chaos")

RUN_FILE = "run.json"
HISTORY_FILE = "history.jsonl"
RESULTS_FILE = "results.json"
PROGRESS_INTERVAL_S = 1.0


@dataclass(frozen=True, slots=True)
class RunConfig:
    system: str = "kv"
    duration_s: float = 30.0
    seed: int = 0
    faults: tuple[str, ...] = ("partition", "kill", "pause")
    interval_s: float = 6.0
    fault_s: tuple[float, float] = (2.0, 5.0)
    quiet_s: float | None = None  # None: a share of the duration (see quiet_tail_s)
    system_config: SystemConfig = field(default_factory=SystemConfig)

    def __post_init__(self) -> None:
        if self.system not in SYSTEMS:
            raise ValueError(f"unknown system {self.system!r} (known: {', '.join(SYSTEMS)})")
        system = SYSTEMS[self.system]()
        supported = system.fault_kinds
        unsupported = sorted(kind for kind in self.faults if FaultKind(kind) not in supported)
        if unsupported:
            raise ValueError(
                f"system {self.system} does not take faults {unsupported} "
                f"(it takes {', '.join(sorted(supported))})"
            )
        try:
            system.workload_options(self.system_config, self.duration_s, self.seed)
        except TypeError as error:
            raise ValueError(f"workload options of {self.system}: {error}") from None

    def quiet_tail_s(self) -> float:
        if self.quiet_s is not None:
            return self.quiet_s
        return min(10.0, max(2.0, self.duration_s * 0.15))

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["system_config"] = dataclasses.asdict(self.system_config)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunConfig:
        system_config = dict(data.get("system_config", {}))
        for name in ("node_args", "require", "informative"):
            system_config[name] = tuple(system_config.get(name, ()))
        fields = {**data, "system_config": SystemConfig(**system_config)}
        fields["faults"] = tuple(fields.get("faults", ()))
        fields["fault_s"] = tuple(fields.get("fault_s", (2.0, 5.0)))
        return cls(**fields)

    def node_names(self) -> list[str]:
        return [f"n{index + 1}" for index in range(self.system_config.nodes)]


@dataclass(frozen=True, slots=True)
class RunOutcome:
    run_dir: Path
    verdict: CheckVerdict
    results: dict[str, Any]

    @property
    def exit_status(self) -> int:
        return checkers.exit_status(self.verdict)


def schedule_for(config: RunConfig) -> Schedule:
    return random_schedule(
        shapes=SYSTEMS[config.system]().partition_shapes,
        seed=config.seed,
        nodes=config.node_names(),
        kinds=[FaultKind(kind) for kind in config.faults],
        duration_s=config.duration_s,
        interval_s=config.interval_s,
        fault_s=config.fault_s,
        quiet_s=config.quiet_tail_s(),
    )


def new_run_dir(out_dir: Path, config: RunConfig) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for attempt in range(1000):
        suffix = f"-{attempt}" if attempt else ""
        path = out_dir / f"{config.system}-seed{config.seed}-{stamp}{suffix}"
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"no free run directory name under {out_dir}")


def load_run(run_dir: Path) -> tuple[RunConfig, Schedule, str]:
    data = json.loads((run_dir / RUN_FILE).read_text())
    return (
        RunConfig.from_json(data["config"]),
        Schedule.from_json(data["schedule"]),
        data["command"],
    )


async def run(
    config: RunConfig,
    out_dir: Path,
    schedule: Schedule | None = None,
    command: str = "",
    progress_stream: TextIO | None = sys.stderr,
) -> RunOutcome:
    system = SYSTEMS[config.system]()
    schedule = schedule or schedule_for(config)
    unsupported = sorted({fault.kind for fault in schedule.faults} - system.fault_kinds)
    if unsupported:
        raise ValueError(f"system {system.name} does not take faults {unsupported}")
    run_dir = new_run_dir(out_dir, config)
    (run_dir / RUN_FILE).write_text(
        json.dumps(
            {"config": config.to_json(), "schedule": schedule.to_json(), "command": command},
            indent=1,
        )
    )
    start_ns = time.monotonic_ns()

    def now_ns() -> int:
        return time.monotonic_ns() - start_ns

    names = config.node_names()
    # Each node gets the system's arguments; they differ only by the node's index (its seed).
    arguments = {
        name: system.node_arguments(config.system_config, config.seed, index)
        for index, name in enumerate(names)
    }
    cluster = ChaosCluster(
        run_dir,
        names,
        arguments,
        seed=config.seed,
        command=system.command,
        peer_flags=system.peer_flags,
    )
    with (run_dir / HISTORY_FILE).open("w") as history_file:

        def sink(line: str) -> None:
            history_file.write(line + "\n")

        recorder = HistoryRecorder(sink=sink)
        try:
            await asyncio.to_thread(cluster.start)
            observations = await _run_phases(
                cluster, system, config, schedule, recorder, now_ns, progress_stream
            )
        finally:
            await asyncio.to_thread(cluster.stop)
    return finish_run(run_dir, config, schedule, recorder.ops, command, observations)


async def _run_phases(
    cluster: ChaosCluster,
    system: ChaosSystem,
    config: RunConfig,
    schedule: Schedule,
    recorder: HistoryRecorder,
    now_ns: Callable[[], int],
    progress_stream: TextIO | None,
) -> dict[str, Any]:
    nemesis = Nemesis(cluster, recorder, now_ns)
    progress = Progress(recorder, config.duration_s, nemesis, progress_stream)
    workload_started_ns = now_ns()
    progress_task = asyncio.create_task(progress.run(workload_started_ns, now_ns))
    nemesis_task = asyncio.create_task(nemesis.run(schedule, workload_started_ns))
    try:
        await system.run_workload(
            cluster,
            recorder,
            now_ns,
            config.system_config,
            config.duration_s,
            config.seed,
        )
        await nemesis_task
    finally:
        nemesis_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await nemesis_task
        await nemesis.heal_all()
        progress_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await progress_task
        progress.done()
    settled = await system.settle(cluster)
    observations = await system.finish(cluster, recorder, now_ns, config.system_config)
    return {**observations, **settled}


class Nemesis:
    """Executes a schedule against the cluster and records each fault in the history."""

    def __init__(
        self, cluster: ChaosCluster, recorder: HistoryRecorder, now_ns: Callable[[], int]
    ) -> None:
        self.cluster = cluster
        self.recorder = recorder
        self.now_ns = now_ns
        self.active: Fault | None = None
        self.crash_reports: list[dict[str, Any]] = []

    async def run(self, schedule: Schedule, started_ns: int) -> None:
        for number, fault in enumerate(schedule.faults):
            await self._sleep_until(started_ns, fault.start_s)
            self._record("start", number, fault)
            self.active = fault
            try:
                await self.apply(fault)
                await self._sleep_until(started_ns, fault.end_s)
            finally:
                self.active = None
                await self.heal(fault)
                self._record("stop", number, fault)

    async def _sleep_until(self, started_ns: int, at_s: float) -> None:
        delay_s = at_s - (self.now_ns() - started_ns) / 1e9
        if delay_s > 0:
            await asyncio.sleep(delay_s)

    def _record(self, f: str, number: int, fault: Fault) -> None:
        self.recorder.record(
            OpType.INFO,
            NEMESIS_PROCESS,
            f,
            self.now_ns(),
            value=fault.description,
            extra={"fault": number, "kind": str(fault.kind)},
        )

    async def apply(self, fault: Fault) -> None:
        cluster = self.cluster
        if fault.kind is FaultKind.PARTITION:
            assert fault.partition is not None
            cluster.cut(fault.partition.cuts)
        elif fault.kind is FaultKind.KILL:
            for name in fault.nodes:
                await asyncio.to_thread(cluster.kill, name)
        elif fault.kind is FaultKind.DISK:
            for name in fault.nodes:
                crash = await asyncio.to_thread(cluster.crash, name)
                self.crash_reports.append(dataclasses.asdict(crash))
        elif fault.kind is FaultKind.PAUSE:
            for name in fault.nodes:
                cluster.pause(name)
        elif fault.kind is FaultKind.CLOCK:
            for name, offset_ms in fault.clock_offsets_ms:
                await cluster.set_clock_offset(name, offset_ms)
        elif fault.kind is FaultKind.LATENCY:
            for name in fault.nodes:
                cluster.slow(name, fault.delay_ms, fault.jitter_ms)
        elif fault.kind is FaultKind.GRAY:
            rule = chaos_pb2.RpcFaultRule(
                action=fault.rpc_action,
                probability=fault.rpc_probability,
                delay_ms=fault.delay_ms,
            )
            for index, name in enumerate(fault.nodes):
                await cluster.set_rpc_faults(name, [rule], seed=index)

    async def heal(self, fault: Fault) -> None:
        cluster = self.cluster
        if fault.kind in (FaultKind.PARTITION, FaultKind.LATENCY):
            cluster.heal_network()
        elif fault.kind in (FaultKind.KILL, FaultKind.DISK):
            for name in fault.nodes:
                await asyncio.to_thread(cluster.restart, name)
        elif fault.kind is FaultKind.PAUSE:
            for name in fault.nodes:
                cluster.resume(name)
        elif fault.kind is FaultKind.CLOCK:
            for name, _ in fault.clock_offsets_ms:
                await cluster.set_clock_offset(name, 0)
        elif fault.kind is FaultKind.GRAY:
            for name in fault.nodes:
                await cluster.set_rpc_faults(name, [])

    async def heal_all(self) -> None:
        cluster = self.cluster
        cluster.heal_network()
        for name in cluster.names:
            cluster.resume(name)
            if not cluster.running(name):
                await asyncio.to_thread(cluster.restart, name)
            with contextlib.suppress(Exception):
                await cluster.set_clock_offset(name, 0)
            with contextlib.suppress(Exception):
                await cluster.set_rpc_faults(name, [])


class Progress:
    """One line on stderr, rewritten each second: time, operations by outcome, active fault."""

    def __init__(
        self,
        recorder: HistoryRecorder,
        duration_s: float,
        nemesis: Nemesis,
        stream: TextIO | None,
    ) -> None:
        self.recorder = recorder
        self.duration_s = duration_s
        self.nemesis = nemesis
        self.stream = stream

    def line(self, elapsed_s: float) -> str:
        counts = Counter(op.type for op in self.recorder.ops if op.process >= 0)
        fault = self.nemesis.active.description if self.nemesis.active else "none"
        return (
            f"[{elapsed_s:5.1f}/{self.duration_s:.0f} s] ok {counts[OpType.OK]} "
            f"fail {counts[OpType.FAIL]} info {counts[OpType.INFO]} | fault: {fault}"
        )

    async def run(self, started_ns: int, now_ns: Callable[[], int]) -> None:
        if self.stream is None:
            return
        while True:
            await asyncio.sleep(PROGRESS_INTERVAL_S)
            text = self.line((now_ns() - started_ns) / 1e9)
            if self.stream.isatty():
                self.stream.write("\r" + text[:120].ljust(120))
            else:
                self.stream.write(text + "\n")
            self.stream.flush()

    def done(self) -> None:
        if self.stream is not None and self.stream.isatty():
            self.stream.write("\n")
            self.stream.flush()


def finish_run(
    run_dir: Path,
    config: RunConfig,
    schedule: Schedule,
    ops: Sequence[Op],
    command: str,
    observations: dict[str, Any] | None = None,
) -> RunOutcome:
    """Check the history and write results.json and the report (also ``distlab chaos check``)."""
    system = SYSTEMS[config.system]()
    checks = system.check(ops, config.system_config)
    verdict = checkers.overall_verdict(checks)
    results = results_json(run_dir, config, schedule, ops, checks, verdict, command)
    if observations is not None:
        results["observations"] = observations
        (run_dir / "observations.json").write_text(json.dumps(observations, indent=1))
    elif (run_dir / "observations.json").exists():
        results["observations"] = json.loads((run_dir / "observations.json").read_text())
    (run_dir / RESULTS_FILE).write_text(json.dumps(results, indent=1, default=str))
    report.write_report(run_dir, ops, results)
    return RunOutcome(run_dir, verdict, results)


def check_run(run_dir: Path) -> RunOutcome:
    config, schedule, command = load_run(run_dir)
    with (run_dir / HISTORY_FILE).open() as lines:
        ops = loads(lines)
    return finish_run(run_dir, config, schedule, ops, command)


def results_json(
    run_dir: Path,
    config: RunConfig,
    schedule: Schedule,
    ops: Sequence[Op],
    checks: Sequence[CheckResult],
    verdict: CheckVerdict,
    command: str,
) -> dict[str, Any]:
    operations = pair(ops)
    counts = Counter(str(operation.type) for operation in operations)
    by_f: dict[str, Counter[str]] = {}
    for operation in operations:
        by_f.setdefault(operation.f, Counter())[str(operation.type)] += 1
    return {
        "verdict": str(verdict),
        "system": config.system,
        "seed": config.seed,
        "duration_s": config.duration_s,
        "command": command,
        "replay": f"distlab chaos run --replay {run_dir}",
        "config": {**dataclasses.asdict(config.system_config), "faults": list(config.faults)},
        "counts": {kind: counts.get(kind, 0) for kind in ("ok", "fail", "info")},
        "by_f": {f: dict(counter) for f, counter in sorted(by_f.items())},
        "checks": {check.name: check.to_json() for check in checks},
        "anomalies": [anomaly.to_json() for check in checks for anomaly in check.anomalies],
        "faults": [
            {
                "description": fault.description,
                "kind": str(fault.kind),
                "start_s": fault.start_s,
                "end_s": fault.end_s,
            }
            for fault in schedule.faults
        ],
        "logs": sorted(str(path.relative_to(run_dir)) for path in run_dir.glob("logs/*.log")),
    }


def summary_lines(outcome: RunOutcome) -> list[str]:
    results = outcome.results
    counts = results.get("counts", {})
    lines = [
        f"verdict: {results['verdict'].upper()} (seed {results['seed']})",
        f"operations: ok {counts.get('ok', 0)}, fail {counts.get('fail', 0)}, "
        f"info {counts.get('info', 0)}",
    ]
    for name, check in results.get("checks", {}).items():
        role = "required" if check["required"] else "informative"
        lines.append(f"  {name} ({role}): {check['verdict']}: {check['summary']}")
    lines.append(f"report: {outcome.run_dir / 'index.html'}")
    if outcome.verdict is not CheckVerdict.VALID:
        lines.append(f"replay: {results['replay']}")
    return lines
