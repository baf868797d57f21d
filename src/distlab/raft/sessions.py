"""Client sessions: each command applied at most once, however often a client retries it.

What it implements
------------------
Ongaro's thesis, "Consensus: Bridging Theory and Practice", Stanford 2014, section 6.3
("Implementing linearizable semantics"): a client that times out does not know whether its
command was committed, and retrying it could apply it twice (a counter incremented twice, a
queue message appended twice). So every command carries the client's id and a sequence number,
and the replicated state keeps, per client, the last sequence number applied and its response. A
command whose sequence number was already applied is answered from that record instead of being
applied again.

Theory of operation
-------------------
* A client picks a random 64-bit id and numbers its commands 1, 2, 3... one at a time: it sends
  the next only after an answer to the previous one, and retries the same number until it gets
  one. (The thesis has clients register through the log to get their id; a random id needs no
  round trip, at a collision risk of about n**2 / 2**65 for n live clients.)
* The table is part of the replicated state: every replica applies the same log in the same order
  and so reaches the same table, and the table travels in snapshots (``encode``/``decode``).
* Sessions expire deterministically, as the thesis requires: the table keeps at most
  ``sessions_max`` of them and, when full, forgets the one that applied a command least recently
  (by log order, the same on every replica; never by wall clock, which replicas do not share).
* A command of an unknown session must be number 1. A higher number means the session expired:
  the command is refused, definitely, rather than risk applying it twice (the thesis's
  SESSION_EXPIRED). A number below the last applied one is a stale retry whose response is gone:
  refused too.

What it leaves out: sessions with several commands in flight (the thesis's extension, keeping
the responses of every unacknowledged number); keep-alive entries that expire idle sessions by
the leader's clock.
"""

from __future__ import annotations

import enum
import struct
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

# Sessions remembered. Each holds one response: with the register's empty responses a full table
# is under a megabyte; a client idle while ten thousand others come and go must start anew.
SESSIONS_MAX_DEFAULT = 10_000
SESSION_NONE = 0  # a command outside any session: applied every time it is committed

_COUNT = struct.Struct(">I")
_SESSION = struct.Struct(">QQQI")  # client id, sequence, index, response length; then response


class Outcome(enum.Enum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"  # already applied: the recorded response, the original index
    EXPIRED = "expired"  # an unknown session past its first command: refused
    STALE = "stale"  # older than the last applied command of the session: refused


@dataclass(frozen=True, slots=True)
class SessionResult:
    outcome: Outcome
    index: int  # the log index the command was applied at (for a duplicate, the first time)
    response: bytes


@dataclass(frozen=True, slots=True)
class _Applied:
    sequence: int
    index: int
    response: bytes


class SessionTable:
    def __init__(self, sessions_max: int = SESSIONS_MAX_DEFAULT) -> None:
        if sessions_max < 1:
            raise ValueError("sessions_max must be at least 1")
        self.sessions_max = sessions_max
        # Least recently applied first: the order is the log's, so every replica agrees on it.
        self._sessions: OrderedDict[int, _Applied] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def apply(
        self,
        client_id: int,
        sequence: int,
        index: int,
        command: bytes,
        apply: Callable[[bytes], bytes],
    ) -> SessionResult:
        """Apply ``command`` (committed at ``index``) through ``apply`` unless its session has
        already applied it; deterministic, as every replica runs it on the same log."""
        if client_id == SESSION_NONE:
            return SessionResult(Outcome.APPLIED, index, apply(command))
        last = self._sessions.get(client_id)
        if last is None and sequence != 1:
            return SessionResult(Outcome.EXPIRED, index, b"")
        if last is not None:
            if sequence == last.sequence:
                self._sessions.move_to_end(client_id)
                return SessionResult(Outcome.DUPLICATE, last.index, last.response)
            if sequence < last.sequence:
                return SessionResult(Outcome.STALE, index, b"")
        response = apply(command)
        self._sessions[client_id] = _Applied(sequence, index, response)
        self._sessions.move_to_end(client_id)
        while len(self._sessions) > self.sessions_max:
            self._sessions.popitem(last=False)
        return SessionResult(Outcome.APPLIED, index, response)

    def encode(self) -> bytes:
        parts = [_COUNT.pack(len(self._sessions))]
        for client_id, applied in self._sessions.items():
            parts.append(
                _SESSION.pack(client_id, applied.sequence, applied.index, len(applied.response))
            )
            parts.append(applied.response)
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes, sessions_max: int = SESSIONS_MAX_DEFAULT) -> SessionTable:
        """ValueError if ``data`` is not what ``encode`` wrote."""
        table = cls(sessions_max)
        try:
            (count,) = _COUNT.unpack_from(data)
            offset = _COUNT.size
            for _ in range(count):
                client_id, sequence, index, length = _SESSION.unpack_from(data, offset)
                offset += _SESSION.size
                response = data[offset : offset + length]
                if len(response) != length:
                    raise ValueError("a session's response is cut short")
                offset += length
                table._sessions[client_id] = _Applied(sequence, index, response)
        except struct.error as error:
            raise ValueError(f"not a session table: {error}") from None
        if offset != len(data):
            raise ValueError(f"{len(data) - offset} bytes after the session table")
        while len(table._sessions) > sessions_max:
            table._sessions.popitem(last=False)
        return table
