"""A history of client operations, as Jepsen and Maelstrom record one.

Every client operation is recorded twice: an **invoke** when the client sends it, and a
**completion** when it learns the outcome. The completion's type says what the client knows:

- ``ok``: it happened, and ``value`` holds its result;
- ``fail``: it definitely did not happen (a definite error, ``distlab.common.errors``);
- ``info``: it may or may not have happened (a timeout, a lost connection, an indefinite error).
  "When in doubt, indefinite" (Maelstrom): a checker must allow both outcomes.

Each operation has a ``process``: one logical client that runs one operation at a time, so a
process's invoke and completion are adjacent among its own operations. A process whose operation
ends ``info`` is retired and a fresh process id takes its place (Jepsen's rule), because the
crashed operation may still take effect at any later time. The nemesis records its faults in
the same history with process ``NEMESIS_PROCESS`` and type ``info`` (``f`` "start" and "stop"),
and the harness its observations after the run (each replica's state) with ``OBSERVER_PROCESS``.

Times are monotonic nanoseconds since the start of the run. Histories are saved as JSON lines,
one operation a line, so a run that dies half way still leaves a readable prefix.

Pure: no I/O here except through the text the caller reads and writes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

NEMESIS_PROCESS = -1
# Observations the harness makes outside the workload (each replica's state after the run).
OBSERVER_PROCESS = -2
# A history line longer than this is refused on load: values are small in our workloads, and a
# checker must not be fed an unbounded line from a damaged file.
LINE_BYTES_MAX = 1 << 20


class OpType(StrEnum):
    INVOKE = "invoke"
    OK = "ok"
    FAIL = "fail"
    INFO = "info"


class HistoryError(ValueError):
    """A history that breaks the format's rules (bad line, completion without invoke...)."""


@dataclass(frozen=True, slots=True)
class Op:
    index: int
    type: OpType
    process: int
    f: str
    time_ns: int
    key: str | None = None
    value: Any = None
    error: str | None = None
    # Whatever else a workload records (a put's causal contexts, the node that served it).
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "index": self.index,
            "type": str(self.type),
            "process": self.process,
            "f": self.f,
            "time_ns": self.time_ns,
        }
        if self.key is not None:
            data["key"] = self.key
        if self.value is not None:
            data["value"] = self.value
        if self.error is not None:
            data["error"] = self.error
        if self.extra:
            data["extra"] = dict(self.extra)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Op:
        try:
            return cls(
                index=int(data["index"]),
                type=OpType(data["type"]),
                process=int(data["process"]),
                f=str(data["f"]),
                time_ns=int(data["time_ns"]),
                key=data.get("key"),
                value=data.get("value"),
                error=data.get("error"),
                extra=dict(data.get("extra") or {}),
            )
        except (KeyError, ValueError, TypeError) as error:
            raise HistoryError(f"bad operation {dict(data)!r}: {error}") from error


def dumps(op: Op) -> str:
    return json.dumps(op.to_json(), separators=(",", ":"), sort_keys=True)


def loads(lines: Iterable[str]) -> list[Op]:
    ops = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if len(line) > LINE_BYTES_MAX:
            raise HistoryError(f"line {number}: longer than {LINE_BYTES_MAX} bytes")
        try:
            data = json.loads(line)
        except json.JSONDecodeError as error:
            raise HistoryError(f"line {number}: not JSON: {error}") from error
        if not isinstance(data, dict):
            raise HistoryError(f"line {number}: not a JSON object")
        ops.append(Op.from_json(data))
    return ops


@dataclass(frozen=True, slots=True)
class Operation:
    """An invoke and its completion, paired. ``completion`` is None when the history ends
    before the operation did (treated as ``info``)."""

    invoke: Op
    completion: Op | None

    @property
    def type(self) -> OpType:
        return self.completion.type if self.completion is not None else OpType.INFO

    @property
    def process(self) -> int:
        return self.invoke.process

    @property
    def f(self) -> str:
        return self.invoke.f

    @property
    def key(self) -> str | None:
        return self.invoke.key

    @property
    def invoke_ns(self) -> int:
        return self.invoke.time_ns

    @property
    def complete_ns(self) -> int | None:
        """When the client learned the outcome; None for an operation that never completed."""
        return self.completion.time_ns if self.completion is not None else None

    @property
    def result(self) -> Any:
        return self.completion.value if self.completion is not None else None

    @property
    def indexes(self) -> tuple[int, ...]:
        done = (self.completion.index,) if self.completion is not None else ()
        return (self.invoke.index, *done)


def pair(ops: Iterable[Op]) -> list[Operation]:
    """Client operations as invoke/completion pairs, in invoke order; the nemesis's and the
    observer's entries (negative processes) are skipped.

    Raises HistoryError for a completion without an open invoke, or a second invoke by a
    process whose last operation is still open (a process runs one operation at a time).
    """
    open_by_process: dict[int, Op] = {}
    paired: dict[int, Operation] = {}
    for op in ops:
        if op.process < 0:
            continue
        if op.type is OpType.INVOKE:
            if op.process in open_by_process:
                raise HistoryError(
                    f"op {op.index}: process {op.process} invoked again while its operation "
                    f"{open_by_process[op.process].index} is still open"
                )
            open_by_process[op.process] = op
            continue
        invoke = open_by_process.pop(op.process, None)
        if invoke is None:
            raise HistoryError(f"op {op.index}: {op.type} by process {op.process} with no invoke")
        if invoke.f != op.f:
            raise HistoryError(f"op {op.index}: completes {op.f!r} but {invoke.f!r} was invoked")
        paired[invoke.index] = Operation(invoke, op)
    for invoke in open_by_process.values():
        paired[invoke.index] = Operation(invoke, None)
    return [paired[index] for index in sorted(paired)]


def nemesis_ops(ops: Iterable[Op]) -> Iterator[Op]:
    return (op for op in ops if op.process == NEMESIS_PROCESS)


@dataclass
class HistoryRecorder:
    """Builds a history in order, numbering operations; ``sink`` gets each line as written."""

    sink: Any = None  # a callable taking one str line, or None to only keep ops in memory
    ops: list[Op] = field(default_factory=list)

    def record(
        self,
        type: OpType,
        process: int,
        f: str,
        time_ns: int,
        key: str | None = None,
        value: Any = None,
        error: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Op:
        op = Op(
            index=len(self.ops),
            type=type,
            process=process,
            f=f,
            time_ns=time_ns,
            key=key,
            value=value,
            error=error,
            extra=dict(extra or {}),
        )
        self.ops.append(op)
        if self.sink is not None:
            self.sink(dumps(op))
        return op
