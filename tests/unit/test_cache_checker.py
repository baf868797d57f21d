"""The cache chaos checker (``distlab.cache.checker``) on hand-written histories: each check
passes a history that keeps its promise and catches one that breaks it."""

from __future__ import annotations

from distlab.cache.checker import (
    PHANTOM_VALUES,
    READ,
    READ_ERRORS,
    STALE_READS,
    WRITE,
    CacheCheckConfig,
    check,
    parse_value,
    value_of,
)
from distlab.chaos.checkers import CheckResult, CheckVerdict
from distlab.chaos.history import HistoryRecorder, Op, OpType

MS = 1_000_000
GRACE_MS = 100


class History:
    def __init__(self) -> None:
        self.recorder = HistoryRecorder()

    @property
    def ops(self) -> list[Op]:
        return self.recorder.ops

    def write(self, process: int, key: str, version: int, at_ms: int, acked_ms: int | None) -> None:
        value = value_of(key, version)
        self.recorder.record(OpType.INVOKE, process, WRITE, at_ms * MS, key=key, value=value)
        if acked_ms is None:
            self.recorder.record(OpType.INFO, process, WRITE, at_ms * MS + 1, key=key)
        else:
            self.recorder.record(OpType.OK, process, WRITE, acked_ms * MS, key=key, value=value)

    def read(
        self, process: int, key: str, value: str | None, at_ms: int, source: str = "hit"
    ) -> None:
        self.recorder.record(OpType.INVOKE, process, READ, at_ms * MS, key=key)
        if value is None:
            self.recorder.record(
                OpType.INFO, process, READ, (at_ms + 1) * MS, key=key, error="timed out"
            )
        else:
            self.recorder.record(
                OpType.OK,
                process,
                READ,
                (at_ms + 1) * MS,
                key=key,
                value=value,
                extra={"source": source},
            )


def results(history: History) -> dict[str, CheckResult]:
    return {result.name: result for result in check(history.ops, CacheCheckConfig(GRACE_MS))}


def test_values_name_their_key_and_version() -> None:
    assert parse_value(value_of("k1", 7)) == ("k1", 7)
    assert parse_value("k@1@2") == ("k@1", 2)
    assert parse_value("no version") is None
    assert parse_value(None) is None


def test_fresh_reads_of_written_values_are_valid() -> None:
    history = History()
    history.read(1, "k", "k@0", at_ms=0, source="loaded")
    history.write(2, "k", 1, at_ms=10, acked_ms=20)
    history.read(1, "k", "k@1", at_ms=500, source="loaded")

    checked = results(history)

    assert all(result.verdict is CheckVerdict.VALID for result in checked.values())
    assert checked[READ_ERRORS].counts["loaded"] == 2


def test_a_value_never_written_for_the_key_is_a_phantom() -> None:
    history = History()
    history.write(2, "other", 1, at_ms=10, acked_ms=20)
    history.read(1, "k", "other@1", at_ms=30)  # another key's value
    history.read(1, "k", "k@5", at_ms=40)  # a version nobody wrote
    history.read(1, "k", "garbage", at_ms=50)

    phantoms = results(history)[PHANTOM_VALUES]

    assert phantoms.verdict is CheckVerdict.INVALID
    assert phantoms.anomaly_count == 3


def test_an_old_value_read_after_the_grace_is_stale_and_names_both_operations() -> None:
    history = History()
    history.write(2, "k", 1, at_ms=10, acked_ms=20)
    history.read(1, "k", "k@0", at_ms=20 + GRACE_MS + 1)

    stale = results(history)[STALE_READS]

    assert stale.verdict is CheckVerdict.INVALID
    assert stale.anomalies[0].kind == "stale-read"
    assert stale.anomalies[0].ops == (0, 1, 2, 3)


def test_an_old_value_within_the_grace_is_counted_not_flagged() -> None:
    history = History()
    history.write(2, "k", 1, at_ms=10, acked_ms=20)
    history.read(1, "k", "k@0", at_ms=20 + GRACE_MS - 1, source="stale")

    stale = results(history)[STALE_READS]

    assert stale.verdict is CheckVerdict.VALID
    assert stale.counts["stale_within_grace"] == 1


def test_an_unacknowledged_write_makes_no_old_value_stale() -> None:
    history = History()
    history.write(2, "k", 1, at_ms=10, acked_ms=None)
    history.read(1, "k", "k@0", at_ms=10_000)

    assert results(history)[STALE_READS].verdict is CheckVerdict.VALID


def test_the_newest_settled_write_counts_whatever_order_the_acks_came_in() -> None:
    # Version 2's invalidation was acknowledged before version 1's: a read of version 1 after
    # both is stale, because version 2 had been invalidated for longer than the grace.
    history = History()
    history.write(2, "k", 1, at_ms=10, acked_ms=50)
    history.write(3, "k", 2, at_ms=20, acked_ms=30)
    history.read(1, "k", "k@1", at_ms=50 + GRACE_MS + 1)

    assert results(history)[STALE_READS].anomaly_count == 1


def test_a_read_that_fails_is_an_error_of_get_or_load() -> None:
    history = History()
    history.read(1, "k", None, at_ms=0)
    history.read(2, "k", "k@0", at_ms=5, source="uncached")

    errors = results(history)[READ_ERRORS]

    assert errors.verdict is CheckVerdict.INVALID
    assert errors.counts["errors"] == 1
    assert errors.counts["uncached"] == 1
