"""The KV store's chaos checkers on hand-written histories: valid ones pass, each anomaly is
caught and names its operations (issue 5, "Checker unit tests on hand-written histories")."""

from __future__ import annotations

from typing import Any

import pytest

from distlab.chaos.checkers import CheckResult, CheckVerdict, exit_status, overall_verdict
from distlab.chaos.history import OBSERVER_PROCESS, HistoryRecorder, Op, OpType, dumps, loads
from distlab.kvstore.checker import (
    CONVERGENCE,
    LINEARIZABILITY,
    LOST_WRITES,
    STALE_READS,
    KvCheckConfig,
    check,
)
from distlab.kvstore.workload import FINAL_PROCESS

MS = 1_000_000
STRICT = KvCheckConfig(replicas=3, r=2, w=2, strict_quorum=True)
ONE_ONE = KvCheckConfig(replicas=3, r=1, w=1, strict_quorum=True)


class Script:
    """Writes a history the way the workload does, with times in milliseconds."""

    def __init__(self) -> None:
        self.recorder = HistoryRecorder()

    @property
    def ops(self) -> list[Op]:
        return self.recorder.ops

    def put(
        self,
        process: int,
        key: str,
        value: str,
        start_ms: int,
        end_ms: int,
        dot: tuple[str, int] | None,
        context: dict[str, int] | None = None,
        outcome: OpType = OpType.OK,
    ) -> tuple[int, int]:
        return self._write(process, "put", key, value, start_ms, end_ms, dot, context, outcome)

    def delete(
        self,
        process: int,
        key: str,
        start_ms: int,
        end_ms: int,
        dot: tuple[str, int] | None,
        context: dict[str, int] | None = None,
    ) -> tuple[int, int]:
        return self._write(process, "delete", key, None, start_ms, end_ms, dot, context, OpType.OK)

    def _write(
        self,
        process: int,
        f: str,
        key: str,
        value: str | None,
        start_ms: int,
        end_ms: int,
        dot: tuple[str, int] | None,
        context: dict[str, int] | None,
        outcome: OpType,
    ) -> tuple[int, int]:
        invoke = self.recorder.record(
            OpType.INVOKE,
            process,
            f,
            start_ms * MS,
            key=key,
            value=value,
            extra={"context": context or {}},
        )
        extra: dict[str, Any] = {"dot": list(dot)} if dot is not None else {}
        done = self.recorder.record(outcome, process, f, end_ms * MS, key=key, extra=extra)
        return invoke.index, done.index

    def get(
        self,
        process: int,
        key: str,
        start_ms: int,
        end_ms: int,
        values: list[str] | None,
        context: dict[str, int] | None = None,
        final: bool = False,
    ) -> tuple[int, int]:
        invoke = self.recorder.record(
            OpType.INVOKE,
            process,
            "get",
            start_ms * MS,
            key=key,
            extra={"final": True} if final else {},
        )
        extra = {"context": context or {}} if values is not None else {}
        done = self.recorder.record(
            OpType.OK, process, "get", end_ms * MS, key=key, value=values, extra=extra
        )
        return invoke.index, done.index

    def final(
        self, key: str, at_ms: int, values: list[str] | None, context: dict[str, int] | None = None
    ) -> tuple[int, int]:
        return self.get(FINAL_PROCESS, key, at_ms, at_ms + 1, values, context, final=True)

    def replicas(self, key: str, at_ms: int, digests: dict[str, str | None]) -> int:
        op = self.recorder.record(
            OpType.INFO,
            OBSERVER_PROCESS,
            "replica-state",
            at_ms * MS,
            key=key,
            value=digests,
            extra={"waited_s": 10.0},
        )
        return op.index


def by_name(results: list[CheckResult]) -> dict[str, CheckResult]:
    return {result.name: result for result in results}


def test_a_put_read_back_in_the_final_read_is_valid() -> None:
    script = Script()
    script.put(0, "k", "a", 0, 10, dot=("n1", 1))
    script.get(1, "k", 20, 25, ["a"], {"n1": 1})
    script.final("k", 100, ["a"], {"n1": 1})
    script.replicas("k", 110, {"n1": "d1", "n2": "d1", "n3": "d1"})

    results = check(script.ops, STRICT)

    assert all(result.verdict is CheckVerdict.VALID for result in results), results
    assert exit_status(overall_verdict(results)) == 0


def test_an_acknowledged_put_missing_from_the_final_read_is_a_lost_write() -> None:
    script = Script()
    put = script.put(0, "k", "a", 0, 10, dot=("n1", 1))
    other = script.put(1, "k", "b", 5, 12, dot=("n2", 1))  # concurrent: does not supersede "a"
    final = script.final("k", 100, ["b"], {"n2": 1})
    script.replicas("k", 110, {"n1": "d", "n2": "d", "n3": "d"})

    lost = by_name(check(script.ops, STRICT))[LOST_WRITES]

    assert lost.verdict is CheckVerdict.INVALID
    (anomaly,) = lost.anomalies
    assert anomaly.kind == "lost-write"
    assert set(anomaly.ops) == {*put, *final}
    assert not set(other) & set(anomaly.ops)
    assert "'a'" in anomaly.message
    assert exit_status(overall_verdict(check(script.ops, STRICT))) == 1


def test_a_put_superseded_by_a_later_put_that_saw_it_is_not_lost() -> None:
    script = Script()
    script.put(0, "k", "a", 0, 10, dot=("n1", 1))
    script.get(0, "k", 11, 12, ["a"], {"n1": 1})
    script.put(0, "k", "b", 13, 20, dot=("n1", 2), context={"n1": 1})
    script.final("k", 100, ["b"], {"n1": 2})

    assert by_name(check(script.ops, STRICT))[LOST_WRITES].verdict is CheckVerdict.VALID


def test_an_indefinite_put_that_saw_the_value_may_have_superseded_it() -> None:
    script = Script()
    script.put(0, "k", "a", 0, 10, dot=("n1", 1))
    script.put(1, "k", "b", 13, 2000, dot=None, context={"n1": 1}, outcome=OpType.INFO)
    script.final("k", 3000, ["b"], {"n1": 2})

    assert by_name(check(script.ops, STRICT))[LOST_WRITES].verdict is CheckVerdict.VALID


def test_a_value_nobody_wrote_is_a_phantom() -> None:
    script = Script()
    script.put(0, "k", "a", 0, 10, dot=("n1", 1))
    final = script.final("k", 100, ["a", "zzz"], {"n1": 1})

    lost = by_name(check(script.ops, STRICT))[LOST_WRITES]

    (anomaly,) = lost.anomalies
    assert anomaly.kind == "phantom"
    assert set(anomaly.ops) == set(final)
    assert "'zzz'" in anomaly.message


def test_a_value_back_after_an_acknowledged_delete_that_saw_it_is_resurrected() -> None:
    script = Script()
    put = script.put(0, "k", "a", 0, 10, dot=("n1", 1))
    delete = script.delete(1, "k", 20, 30, dot=("n2", 1), context={"n1": 1})
    final = script.final("k", 100, ["a"], {"n1": 1})

    lost = by_name(check(script.ops, STRICT))[LOST_WRITES]

    (anomaly,) = lost.anomalies
    assert anomaly.kind == "resurrected"
    assert set(anomaly.ops) == {*put, *delete, *final}


def test_not_found_after_a_delete_that_saw_the_put_is_valid() -> None:
    script = Script()
    script.put(0, "k", "a", 0, 10, dot=("n1", 1))
    script.delete(1, "k", 20, 30, dot=("n2", 1), context={"n1": 1})
    script.get(2, "k", 40, 45, None)
    script.final("k", 100, None)

    results = by_name(check(script.ops, STRICT))
    assert results[LOST_WRITES].verdict is CheckVerdict.VALID
    assert results[STALE_READS].verdict is CheckVerdict.VALID


def test_a_read_that_misses_a_write_acknowledged_before_it_began_is_stale() -> None:
    script = Script()
    put = script.put(0, "k", "a", 0, 10, dot=("n1", 1))
    newer = script.put(0, "k", "b", 20, 30, dot=("n1", 2), context={"n1": 1})
    script.get(1, "k", 25, 35, ["a"], {"n1": 1})  # overlaps "b": not stale
    stale = script.get(2, "k", 40, 45, ["a"], {"n1": 1})
    script.final("k", 100, ["b"], {"n1": 2})

    results = by_name(check(script.ops, STRICT))

    (anomaly,) = results[STALE_READS].anomalies
    assert anomaly.kind == "stale-read"
    assert set(anomaly.ops) == {*newer, *stale}
    assert not set(put) & set(anomaly.ops)
    assert results[STALE_READS].required
    assert overall_verdict(results.values()) is CheckVerdict.INVALID


def test_stale_reads_are_informative_when_r_plus_w_is_not_above_n() -> None:
    script = Script()
    script.put(0, "k", "a", 0, 10, dot=("n1", 1))
    script.get(2, "k", 40, 45, None)
    script.final("k", 100, ["a"], {"n1": 1})
    script.replicas("k", 110, {"n1": "d", "n2": "d", "n3": "d"})

    results = by_name(check(script.ops, ONE_ONE))

    assert results[STALE_READS].verdict is CheckVerdict.INVALID
    assert not results[STALE_READS].required
    assert overall_verdict(results.values()) is CheckVerdict.VALID


def test_the_linearizability_check_reports_a_stale_read_by_its_operation() -> None:
    script = Script()
    script.put(0, "k", "a", 0, 10, dot=("n1", 1))
    script.put(0, "k", "b", 20, 30, dot=("n1", 2), context={"n1": 1})
    stale_invoke, _ = script.get(2, "k", 40, 45, ["a"], {"n1": 1})
    script.final("k", 100, ["b"], {"n1": 2})

    linearizability = by_name(check(script.ops, ONE_ONE))[LINEARIZABILITY]

    assert linearizability.verdict is CheckVerdict.INVALID
    assert not linearizability.required
    (anomaly,) = linearizability.anomalies
    assert stale_invoke in anomaly.ops
    assert f"op {stale_invoke}" in anomaly.message


def test_replicas_that_still_differ_after_the_run_have_diverged() -> None:
    script = Script()
    script.put(0, "k", "a", 0, 10, dot=("n1", 1))
    script.final("k", 100, ["a"], {"n1": 1})
    observed = script.replicas("k", 110, {"n1": "d1", "n2": "d2", "n3": "d1"})
    script.put(0, "j", "b", 0, 10, dot=("n1", 1))
    script.final("j", 100, ["b"], {"n1": 1})
    missing = script.replicas("j", 110, {"n1": "d1", "n2": None, "n3": "d1"})

    convergence = by_name(check(script.ops, STRICT))[CONVERGENCE]

    assert convergence.verdict is CheckVerdict.INVALID
    assert sorted(anomaly.ops for anomaly in convergence.anomalies) == [
        (observed,),
        (missing,),
    ]


def test_a_key_with_no_final_read_leaves_the_run_undecided() -> None:
    script = Script()
    script.put(0, "k", "a", 0, 10, dot=("n1", 1))
    script.replicas("k", 110, {"n1": "d", "n2": "d", "n3": "d"})

    results = check(script.ops, STRICT)

    assert by_name(results)[LOST_WRITES].verdict is CheckVerdict.UNKNOWN
    assert exit_status(overall_verdict(results)) == 2


def test_required_and_informative_checks_follow_the_configuration() -> None:
    assert STRICT.required(STALE_READS)
    assert not ONE_ONE.required(STALE_READS)
    assert not KvCheckConfig(strict_quorum=False).required(STALE_READS)
    assert KvCheckConfig(strict_quorum=False, require=frozenset({STALE_READS})).required(
        STALE_READS
    )
    assert not STRICT.required(LINEARIZABILITY)
    assert not KvCheckConfig(informative=frozenset({LOST_WRITES})).required(LOST_WRITES)
    with pytest.raises(ValueError, match="unknown checks"):
        KvCheckConfig(require=frozenset({"speed"}))


def test_a_saved_history_checks_the_same_as_the_recorded_one() -> None:
    script = Script()
    script.put(0, "k", "a", 0, 10, dot=("n1", 1))
    script.put(1, "k", "b", 5, 12, dot=("n2", 1))
    script.final("k", 100, ["b"], {"n2": 1})

    reloaded = loads(dumps(op) for op in script.ops)

    assert reloaded == script.ops
    assert [r.to_json() for r in check(reloaded, STRICT)] == [
        r.to_json() for r in check(script.ops, STRICT)
    ]


def test_a_key_no_replica_holds_any_more_has_converged() -> None:
    script = Script()
    script.put(0, "k", "a", 0, 10, dot=("n1", 1))
    script.delete(0, "k", 20, 30, dot=("n1", 2), context={"n1": 1})
    script.final("k", 100, None)
    script.replicas("k", 110, {"n1": None, "n2": None, "n3": None})

    assert by_name(check(script.ops, STRICT))[CONVERGENCE].verdict is CheckVerdict.VALID
