"""Client sessions (thesis 6.3) and the register state machine, without a node."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from distlab.raft.register import DELETE, PUT, KeyValueRegister, decode_answer, encode_command
from distlab.raft.sessions import SESSION_NONE, Outcome, SessionTable


class Counter:
    """A state machine where applying twice shows: each command adds one."""

    def __init__(self) -> None:
        self.value = 0

    def apply(self, command: bytes) -> bytes:
        self.value += 1
        return str(self.value).encode()


def test_a_retry_is_answered_from_the_table_and_not_applied_again() -> None:
    table, counter = SessionTable(), Counter()
    first = table.apply(7, 1, 10, b"+1", counter.apply)
    retry = table.apply(7, 1, 12, b"+1", counter.apply)
    assert (first.outcome, first.index, first.response) == (Outcome.APPLIED, 10, b"1")
    assert (retry.outcome, retry.index, retry.response) == (Outcome.DUPLICATE, 10, b"1")
    assert counter.value == 1
    assert table.apply(7, 2, 13, b"+1", counter.apply).response == b"2"


def test_commands_outside_a_session_apply_every_time() -> None:
    table, counter = SessionTable(), Counter()
    table.apply(SESSION_NONE, 0, 1, b"+1", counter.apply)
    table.apply(SESSION_NONE, 0, 2, b"+1", counter.apply)
    assert counter.value == 2
    assert len(table) == 0


def test_an_unknown_session_past_its_first_command_has_expired() -> None:
    table, counter = SessionTable(), Counter()
    result = table.apply(9, 4, 3, b"+1", counter.apply)
    assert result.outcome is Outcome.EXPIRED
    assert counter.value == 0


def test_a_retry_older_than_the_last_command_is_stale() -> None:
    table, counter = SessionTable(), Counter()
    table.apply(7, 1, 1, b"+1", counter.apply)
    table.apply(7, 2, 2, b"+1", counter.apply)
    assert table.apply(7, 1, 3, b"+1", counter.apply).outcome is Outcome.STALE
    assert counter.value == 2


def test_the_least_recently_used_session_expires_first() -> None:
    table, counter = SessionTable(sessions_max=2), Counter()
    table.apply(1, 1, 1, b"", counter.apply)
    table.apply(2, 1, 2, b"", counter.apply)
    table.apply(1, 1, 3, b"", counter.apply)  # a retry: session 1 is now the most recent
    table.apply(3, 1, 4, b"", counter.apply)  # the table is full: session 2 goes
    assert table.apply(1, 1, 5, b"", counter.apply).outcome is Outcome.DUPLICATE
    assert table.apply(2, 2, 6, b"", counter.apply).outcome is Outcome.EXPIRED


@given(
    st.lists(st.tuples(st.integers(1, 5), st.integers(1, 4), st.binary(max_size=8)), max_size=40)
)
def test_the_table_survives_encoding(commands: list[tuple[int, int, bytes]]) -> None:
    """A snapshot's table must answer every later command as the live one does."""
    table, counter = SessionTable(sessions_max=3), Counter()
    for index, (client_id, sequence, command) in enumerate(commands, start=1):
        table.apply(client_id, sequence, index, command, counter.apply)
    copy = SessionTable.decode(table.encode(), sessions_max=3)
    later_live, later_copy = Counter(), Counter()
    for client_id in range(1, 6):
        for sequence in range(1, 5):
            live = table.apply(client_id, sequence, 99, b"", later_live.apply)
            restored = copy.apply(client_id, sequence, 99, b"", later_copy.apply)
            assert (live.outcome, live.index) == (restored.outcome, restored.index)


@pytest.mark.parametrize("data", [b"", b"\x00\x00\x00\x02", b"\x00\x00\x00\x00extra"])
def test_a_damaged_table_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError, match=r"session table|cut short"):
        SessionTable.decode(data)


def test_the_register_applies_queries_and_restores() -> None:
    register = KeyValueRegister()
    register.apply(encode_command(PUT, b"a", b"1"))
    register.apply(encode_command(PUT, b"b", b""))
    register.apply(encode_command(PUT, b"c", b"3"))
    register.apply(encode_command(DELETE, b"c"))
    assert decode_answer(register.query(b"a")) == b"1"
    assert decode_answer(register.query(b"b")) == b""  # present, empty
    assert decode_answer(register.query(b"c")) is None
    restored = KeyValueRegister()
    restored.restore(register.snapshot())
    assert restored.values == {b"a": b"1", b"b": b""}
