"""Time as an injected dependency (TigerBeetle style): cores take ``now_ms`` as an argument and
shells read it from a Clock, so tests and the simulator run on a ManualClock and the chaos
harness can skew one node's clock without touching the others.

Two readings, never mixed up: ``wall_ms`` (milliseconds since the Unix epoch; may jump, used only
to label things for humans and for last-writer-wins, which is why LWW is lossy) and
``monotonic_ms`` (never goes back; the only one leases, timeouts and failure detectors may use).
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def wall_ms(self) -> int: ...

    def monotonic_ms(self) -> int: ...


class SystemClock:
    """The machine's clocks, plus an offset the chaos harness may set on the wall clock."""

    def __init__(self, wall_offset_ms: int = 0) -> None:
        self.wall_offset_ms = wall_offset_ms

    def wall_ms(self) -> int:
        return time.time_ns() // 1_000_000 + self.wall_offset_ms

    def monotonic_ms(self) -> int:
        return time.monotonic_ns() // 1_000_000


class ManualClock:
    """A clock that moves only when told: for tests and deterministic simulation."""

    def __init__(self, wall_ms: int = 1_700_000_000_000, monotonic_ms: int = 0) -> None:
        self._wall_ms = wall_ms
        self._monotonic_ms = monotonic_ms

    def wall_ms(self) -> int:
        return self._wall_ms

    def monotonic_ms(self) -> int:
        return self._monotonic_ms

    def advance(self, milliseconds: int) -> None:
        if milliseconds < 0:
            raise ValueError(f"milliseconds must be >= 0, got {milliseconds}")
        self._wall_ms += milliseconds
        self._monotonic_ms += milliseconds

    def jump_wall(self, milliseconds: int) -> None:
        """Move only the wall clock, either way: what NTP steps and VM migrations do."""
        self._wall_ms += milliseconds
