"""What a checker says about a history, and how the checks of a run add up to one verdict.

A checker reads a history (``distlab.chaos.history``) and returns a ``CheckResult``: valid,
invalid (with the anomalies it found, each naming the operations involved), or unknown (it could
not decide, e.g. a search ran out of budget). As in Jepsen, "unknown" is not a pass: the chaos
matrix counts it as a failure of the run, with its own exit status.

A check is **required** (the system promises the property, so a violation fails the run) or
**informative** (reported for the reader, as the linearizability of a Dynamo-style store whose
quorums do not promise it). Which checks a run requires follows from the system's
configuration, and the user may require more (``distlab chaos run --require``).

Pure: standard library and the pure linearizability checker only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from distlab.chaos.history import Operation
from distlab.chaos.linearizability import Verdict, check_register_history

# The exit status of ``distlab chaos run`` and ``check``.
EXIT_VALID = 0
EXIT_INVALID = 1
EXIT_UNKNOWN = 2
# Anomalies kept per check in results.json: the first ones name the operations; thousands more
# of the same kind would only bury them. The count is always exact.
ANOMALIES_KEPT_MAX = 1000


class CheckVerdict(StrEnum):
    VALID = "valid"
    INVALID = "invalid"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Anomaly:
    check: str
    kind: str
    key: str | None
    message: str
    ops: tuple[int, ...]  # history indexes of the operations involved

    def to_json(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "kind": self.kind,
            "key": self.key,
            "message": self.message,
            "ops": list(self.ops),
        }


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    verdict: CheckVerdict
    required: bool
    summary: str
    anomalies: tuple[Anomaly, ...] = ()
    anomaly_count: int = 0
    counts: Mapping[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": str(self.verdict),
            "required": self.required,
            "summary": self.summary,
            "anomalies": self.anomaly_count,
            "counts": dict(self.counts),
        }


def result(
    name: str,
    required: bool,
    anomalies: Sequence[Anomaly],
    summary: str,
    undecided: int = 0,
    counts: Mapping[str, int] | None = None,
) -> CheckResult:
    """A check's result from its anomalies: invalid if any, else unknown if anything was left
    undecided, else valid."""
    if anomalies:
        verdict = CheckVerdict.INVALID
    elif undecided:
        verdict = CheckVerdict.UNKNOWN
    else:
        verdict = CheckVerdict.VALID
    return CheckResult(
        name=name,
        verdict=verdict,
        required=required,
        summary=summary,
        anomalies=tuple(anomalies[:ANOMALIES_KEPT_MAX]),
        anomaly_count=len(anomalies),
        counts=dict(counts or {}),
    )


def overall_verdict(results: Iterable[CheckResult]) -> CheckVerdict:
    """Invalid if a required check found anomalies; else unknown if one could not decide."""
    required = [check for check in results if check.required]
    if any(check.verdict is CheckVerdict.INVALID for check in required):
        return CheckVerdict.INVALID
    if any(check.verdict is CheckVerdict.UNKNOWN for check in required):
        return CheckVerdict.UNKNOWN
    return CheckVerdict.VALID


def exit_status(verdict: CheckVerdict) -> int:
    return {
        CheckVerdict.VALID: EXIT_VALID,
        CheckVerdict.INVALID: EXIT_INVALID,
        CheckVerdict.UNKNOWN: EXIT_UNKNOWN,
    }[verdict]


def linearizability(operations: Sequence[Operation], required: bool) -> CheckResult:
    """Each key as a linearizable register (Wing-Gong search, see ``linearizability``)."""
    name = "linearizability"
    keys = check_register_history(operations)
    anomalies = [
        Anomaly(
            check=name,
            kind="not-linearizable",
            key=key_result.key,
            message=key_result.explanation,
            ops=tuple(sorted({*key_result.stuck_calls, *key_result.linearization[-3:]})),
        )
        for key_result in keys
        if key_result.verdict is Verdict.ILLEGAL
    ]
    unknown = sum(1 for key_result in keys if key_result.verdict is Verdict.UNKNOWN)
    summary = (
        f"{len(anomalies)} of {len(keys)} keys not linearizable"
        + (f", {unknown} undecided (search budget)" if unknown else "")
        + ("" if required else " (informative: this configuration does not promise it)")
    )
    return result(
        name,
        required,
        anomalies,
        summary,
        undecided=unknown,
        counts={"keys": len(keys), "illegal": len(anomalies), "unknown": unknown},
    )
