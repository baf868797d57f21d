"""kill -9 of a process writing a WAL with fsync=always loses no acknowledged record (chaos
matrix row 15, process-crash half).

A writer subprocess (``wal_crash_writer.py``) appends and prints each acknowledged sequence; the
test reads acknowledgements until it has seen a seeded number of them, sends SIGKILL, and then
recovers the log itself: every acknowledged record must be there, intact, and the recovered
records must be a consecutive prefix of sequences with no damaged payload. Rounds repeat on the
same directory, so each writer also starts from a log recovered after a kill.

What this proves and what it does not: SIGKILL ends the process, not the machine; the page cache
survives, so even an un-fsynced write survives. The test therefore checks the ordering (an append
is acknowledged only after its write, and recovery after an abrupt stop at any point, including
in the middle of a write or a rotation, keeps every acknowledged record and never returns a
damaged one), not power-loss durability. Power loss is what ``durable_lengths()`` lets the chaos
harness simulate, by cutting files back to what was fsynced.
"""

from __future__ import annotations

import os
import queue
import random
import runpy
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from distlab.common.wal import Record
from distlab.common.wal_file import WalOptions, WriteAheadLog

WRITER_SCRIPT = Path(__file__).with_name("wal_crash_writer.py")
WRITER = runpy.run_path(str(WRITER_SCRIPT))
SEED = 90210
ROUNDS = 5
# Generous: a cold interpreter on a busy 2-core CI machine can take seconds to start.
ACKNOWLEDGEMENTS_DEADLINE_S = 60.0
EXIT_DEADLINE_S = 30.0
# Small enough that several rotations happen while the writer runs, so kills land near them too.
SEGMENT_BYTES_MAX = 8 * 1024


def run_writer_until_killed(
    directory: Path, round_number: int, threads: int, acknowledgements_wanted: int
) -> list[tuple[int, int, int, int]]:
    """Start a writer, SIGKILL it after ``acknowledgements_wanted`` acknowledgements, and return
    every acknowledgement it printed: (sequence, round, thread, counter)."""
    command = [
        sys.executable,
        str(WRITER_SCRIPT),
        str(directory),
        str(round_number),
        str(threads),
        str(SEGMENT_BYTES_MAX),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines: queue.Queue[bytes | None] = queue.Queue()

    def read_lines() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)  # end of output: the writer is gone

    reader = threading.Thread(target=read_lines, daemon=True)
    reader.start()
    acknowledgements: list[tuple[int, int, int, int]] = []
    try:
        deadline = time.monotonic() + ACKNOWLEDGEMENTS_DEADLINE_S
        while len(acknowledgements) < acknowledgements_wanted:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"only {len(acknowledgements)} acknowledgements within "
                    f"{ACKNOWLEDGEMENTS_DEADLINE_S} s"
                ) from None
            if line is None:
                assert process.stderr is not None
                raise AssertionError(f"writer exited early:\n{process.stderr.read().decode()}")
            acknowledgements.append(parse_acknowledgement(line))
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=EXIT_DEADLINE_S)
        reader.join(timeout=EXIT_DEADLINE_S)
        if process.stderr is not None:
            process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    # Acknowledgements printed before the kill landed count too: drain them.
    while (line := lines.get_nowait()) is not None:
        if line.endswith(b"\n"):  # an unterminated line was cut by the kill: not an ack
            acknowledgements.append(parse_acknowledgement(line))
    if process.stdout is not None:
        process.stdout.close()
    return acknowledgements


def parse_acknowledgement(line: bytes) -> tuple[int, int, int, int]:
    sequence, round_number, thread, counter = (int(field) for field in line.split())
    return sequence, round_number, thread, counter


def check_recovered(
    records: list[Record], acknowledged: dict[int, tuple[int, int, int]], context: str
) -> None:
    sequences = [record.sequence for record in records]
    assert sequences == list(range(1, len(records) + 1)), f"{context}: not a consecutive prefix"
    for record in records:
        # Every recovered record is one a writer wrote, byte for byte: never a damaged one.
        origin = WRITER["parse_label"](record.payload)
        assert record.payload == WRITER["payload_for"](*origin), (
            f"{context}: record {record.sequence} is damaged"
        )
    by_sequence = {record.sequence: record.payload for record in records}
    lost = sorted(sequence for sequence in acknowledged if sequence not in by_sequence)
    assert lost == [], f"{context}: acknowledged records lost: {lost[:20]}"
    for sequence, origin in acknowledged.items():
        assert by_sequence[sequence] == WRITER["payload_for"](*origin), (
            f"{context}: record {sequence} is not the one acknowledged"
        )


@pytest.mark.parametrize("threads", [1, 4, 16])
def test_kill_9_after_acknowledgement_loses_no_acknowledged_record(
    tmp_path: Path, threads: int
) -> None:
    rng = random.Random(SEED + threads)
    directory = tmp_path / "wal"
    acknowledged: dict[int, tuple[int, int, int]] = {}

    for round_number in range(ROUNDS):
        wanted = rng.randrange(200, 1000)
        context = f"seed {SEED + threads}, round {round_number}, {threads} threads"

        printed = run_writer_until_killed(directory, round_number, threads, wanted)
        for sequence, printed_round, thread, counter in printed:
            assert sequence not in acknowledged, f"{context}: sequence {sequence} acked twice"
            acknowledged[sequence] = (printed_round, thread, counter)

        log, records = WriteAheadLog.open(
            directory, WalOptions(segment_bytes_max=SEGMENT_BYTES_MAX)
        )
        log.close()
        check_recovered(records, acknowledged, context)
        assert len(acknowledged) >= wanted
