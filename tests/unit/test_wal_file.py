"""The WAL's file layer (``distlab.common.wal_file``) on a real directory: segments and rotation,
recovery after torn and corrupted tails, refusal of damage in the middle of the log, fsync
policies, group commit among threads, and the fsyncgate rule (chaos matrix rows 15 to 17).
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from distlab.common.wal import RECORD_HEADER_BYTES, Record, encode_record
from distlab.common.wal_file import (
    SEGMENT_BYTES_MIN,
    FsyncPolicy,
    WalClosedError,
    WalCorruptionError,
    WalFailedError,
    WalOptions,
    WriteAheadLog,
    cut_to_durable,
    segment_name,
)

SEED = 715517
SMALL_SEGMENTS = WalOptions(segment_bytes_max=1024)
# Polling deadline for conditions that a background thread makes true; generous for busy CI.
POLL_DEADLINE_S = 10.0


def payload_for(sequence: int) -> bytes:
    """Payloads of varying length (0 to 96 bytes) that name their sequence."""
    return f"record {sequence}|".encode() * (sequence % 7)


def append_records(log: WriteAheadLog, count: int) -> list[Record]:
    records = []
    for _ in range(count):
        sequence = log.last_sequence + 1
        assert log.append(payload_for(sequence)) == sequence
        records.append(Record(sequence, payload_for(sequence)))
    return records


def reopen(
    directory: Path, options: WalOptions = SMALL_SEGMENTS, *, after_sequence: int = 0
) -> list[Record]:
    log, records = WriteAheadLog.open(directory, options, after_sequence=after_sequence)
    log.close()
    return records


def flip_bit(path: Path, byte_offset: int, bit: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[byte_offset] ^= 1 << bit
    path.write_bytes(bytes(data))


def frame_ends(records: list[Record], start: int = 0) -> list[int]:
    """Where each record's frame ends, for records laid out back to back from ``start``."""
    ends = []
    for record in records:
        start += RECORD_HEADER_BYTES + len(record.payload)
        ends.append(start)
    return ends


class ControlledFsync:
    """An fsync to inject: counts calls, and raises EIO while ``failing`` is set."""

    def __init__(self) -> None:
        self.failing = False
        self.calls = 0
        self.failures = 0
        self.on_failure: Callable[[], None] = lambda: None

    def __call__(self, descriptor: int) -> None:
        self.calls += 1
        if self.failing:
            self.failures += 1
            self.on_failure()
            raise OSError(errno.EIO, "injected fsync failure")
        os.fsync(descriptor)


@pytest.fixture
def log_directory(tmp_path: Path) -> Path:
    return tmp_path / "wal"


@pytest.fixture
def three_segment_log(tmp_path: Path) -> tuple[Path, list[Record]]:
    """A closed log of several segments, copied fresh for each case that damages it."""
    directory = tmp_path / "pristine"
    log, _ = WriteAheadLog.open(directory, SMALL_SEGMENTS)
    records = append_records(log, 60)  # the last one's payload is 40 bytes long
    log.close()
    assert len(log.segment_paths()) >= 3
    return directory, records


def last_segment_records(directory: Path, records: list[Record]) -> tuple[Path, list[Record]]:
    last = sorted(directory.glob("*.wal"))[-1]
    first_sequence = int(last.name.removesuffix(".wal"))
    return last, [record for record in records if record.sequence >= first_sequence]


def test_records_survive_reopen_across_several_segments(log_directory: Path) -> None:
    log, recovered = WriteAheadLog.open(log_directory, SMALL_SEGMENTS)
    assert recovered == []
    records = append_records(log, 200)
    segments = log.segment_paths()
    log.close()

    assert len(segments) >= 5
    assert [path.name for path in segments] == sorted(path.name for path in segments)
    assert segments[0].name == segment_name(1) == "00000000000000000001.wal"
    for path in segments:
        assert path.stat().st_size <= SMALL_SEGMENTS.segment_bytes_max
    log, recovered = WriteAheadLog.open(log_directory, SMALL_SEGMENTS)
    assert recovered == records
    assert log.last_sequence == log.durable_sequence == 200
    assert log.append(b"next") == 201
    log.close()
    assert reopen(log_directory)[-1] == Record(201, b"next")


def test_every_segment_name_is_its_first_sequence(log_directory: Path) -> None:
    with WriteAheadLog.open(log_directory, SMALL_SEGMENTS)[0] as log:
        append_records(log, 100)
        segments = log.segment_paths()

    recovered = reopen(log_directory)
    for path in segments:
        first_sequence = int(path.name.removesuffix(".wal"))
        assert recovered[first_sequence - 1].sequence == first_sequence
        assert path.read_bytes()[8:16] == first_sequence.to_bytes(8, "little")  # its first frame


def test_truncating_the_last_record_at_every_offset_recovers_the_records_before_it(
    tmp_path: Path, three_segment_log: tuple[Path, list[Record]]
) -> None:
    pristine, records = three_segment_log
    last_segment, in_last = last_segment_records(pristine, records)
    ends = frame_ends(in_last)
    start_of_last_record = ends[-2]
    assert ends[-1] == last_segment.stat().st_size

    for cut in range(start_of_last_record, ends[-1]):
        directory = tmp_path / f"cut-{cut}"
        shutil.copytree(pristine, directory)
        segment = directory / last_segment.name
        segment.write_bytes(last_segment.read_bytes()[:cut])

        log, recovered = WriteAheadLog.open(directory, SMALL_SEGMENTS)

        assert recovered == records[:-1], f"cut at byte {cut}"
        assert segment.stat().st_size == start_of_last_record, f"cut at byte {cut}"
        assert log.append(b"after the crash") == records[-1].sequence, f"cut at byte {cut}"
        log.close()
        assert reopen(directory) == [
            *records[:-1],
            Record(records[-1].sequence, b"after the crash"),
        ]


def test_random_truncations_of_the_last_segment_recover_exactly_the_whole_records(
    tmp_path: Path, three_segment_log: tuple[Path, list[Record]]
) -> None:
    pristine, records = three_segment_log
    last_segment, in_last = last_segment_records(pristine, records)
    ends = frame_ends(in_last)
    before_last = len(records) - len(in_last)
    rng = random.Random(SEED)

    for trial in range(30):
        cut = rng.randrange(0, last_segment.stat().st_size + 1)
        directory = tmp_path / f"trial-{trial}"
        shutil.copytree(pristine, directory)
        (directory / last_segment.name).write_bytes(last_segment.read_bytes()[:cut])

        whole = sum(1 for end in ends if end <= cut)
        context = f"seed {SEED}, trial {trial}, cut at byte {cut}"
        assert reopen(directory) == records[: before_last + whole], context


def test_bit_flips_in_the_last_segment_cut_the_last_record_or_refuse(
    tmp_path: Path, three_segment_log: tuple[Path, list[Record]]
) -> None:
    """A damaged last record is a torn tail: cut it off. A damaged earlier record is followed by
    an intact one, which a torn write cannot leave: refuse, naming the file and offset."""
    pristine, records = three_segment_log
    last_segment, in_last = last_segment_records(pristine, records)
    ends = frame_ends(in_last)
    rng = random.Random(SEED)

    for trial in range(40):
        byte_offset = rng.randrange(0, last_segment.stat().st_size)
        bit = rng.randrange(8)
        damaged = next(index for index, end in enumerate(ends) if byte_offset < end)
        damaged_start = ends[damaged - 1] if damaged else 0
        directory = tmp_path / f"trial-{trial}"
        shutil.copytree(pristine, directory)
        segment = directory / last_segment.name
        flip_bit(segment, byte_offset, bit)
        size_before = segment.stat().st_size
        context = f"seed {SEED}, trial {trial}, bit {bit} of byte {byte_offset}"

        if damaged == len(in_last) - 1:
            assert reopen(directory) == records[:-1], context
            assert segment.stat().st_size == damaged_start, context
        else:
            with pytest.raises(WalCorruptionError) as raised:
                reopen(directory)
            assert segment.name in str(raised.value), context
            assert f"byte offset {damaged_start} " in str(raised.value), context
            assert segment.stat().st_size == size_before, f"{context}: refused, yet truncated"


def test_a_bit_flip_in_an_earlier_segment_is_refused_with_file_and_offset(
    three_segment_log: tuple[Path, list[Record]],
) -> None:
    directory, records = three_segment_log
    second = sorted(directory.glob("*.wal"))[1]
    first_sequence = int(second.name.removesuffix(".wal"))
    in_second = [record for record in records if record.sequence >= first_sequence]
    third_record_offset = frame_ends(in_second)[1]
    flip_bit(second, third_record_offset + RECORD_HEADER_BYTES)  # its payload's first byte
    size_before = second.stat().st_size

    with pytest.raises(WalCorruptionError, match="not the last one") as raised:
        reopen(directory)

    assert str(second) in str(raised.value)
    assert f"byte offset {third_record_offset} " in str(raised.value)
    assert f"expected sequence {first_sequence + 2}" in str(raised.value)
    assert second.stat().st_size == size_before


def test_a_torn_tail_in_an_earlier_segment_is_refused(
    three_segment_log: tuple[Path, list[Record]],
) -> None:
    directory, _ = three_segment_log
    first = sorted(directory.glob("*.wal"))[0]
    first.write_bytes(first.read_bytes()[:-3])

    with pytest.raises(WalCorruptionError, match=r"torn record at byte offset \d+"):
        reopen(directory)


def test_a_missing_middle_segment_is_refused(
    three_segment_log: tuple[Path, list[Record]],
) -> None:
    directory, _ = three_segment_log
    sorted(directory.glob("*.wal"))[1].unlink()

    with pytest.raises(WalCorruptionError, match="are missing"):
        reopen(directory)


def test_overlapping_segments_are_refused(three_segment_log: tuple[Path, list[Record]]) -> None:
    directory, _ = three_segment_log
    second = sorted(directory.glob("*.wal"))[1]
    first_sequence = int(second.name.removesuffix(".wal"))
    second.rename(directory / segment_name(first_sequence - 1))

    with pytest.raises(WalCorruptionError):
        reopen(directory)


def test_an_unparseable_segment_name_is_refused_and_other_files_are_ignored(
    log_directory: Path,
) -> None:
    with WriteAheadLog.open(log_directory)[0] as log:
        log.append(b"one")
    (log_directory / "notes.txt").write_text("not a segment")
    assert reopen(log_directory) == [Record(1, b"one")]

    (log_directory / "12.wal").write_bytes(b"")
    with pytest.raises(WalCorruptionError, match=r"12\.wal: not a segment name"):
        reopen(log_directory)


def test_after_sequence_filters_recovered_records(log_directory: Path) -> None:
    with WriteAheadLog.open(log_directory, SMALL_SEGMENTS)[0] as log:
        records = append_records(log, 50)

    assert reopen(log_directory, after_sequence=30) == records[30:]
    assert reopen(log_directory, after_sequence=50) == []


def test_a_checkpoint_beyond_the_log_starts_a_new_segment_after_it(log_directory: Path) -> None:
    with WriteAheadLog.open(log_directory, SMALL_SEGMENTS)[0] as log:
        append_records(log, 10)

    log, recovered = WriteAheadLog.open(log_directory, SMALL_SEGMENTS, after_sequence=80)
    assert recovered == []
    assert log.append(b"81") == 81
    assert log.segment_paths()[-1].name == segment_name(81)
    log.close()

    assert reopen(log_directory, after_sequence=80) == [Record(81, b"81")]
    # A caller whose checkpoint covers less would miss 11..80: refuse.
    with pytest.raises(WalCorruptionError, match=r"sequences 51\.\.80 are missing"):
        reopen(log_directory, after_sequence=50)


def test_sequences_start_after_the_checkpoint_in_an_empty_directory(log_directory: Path) -> None:
    log, recovered = WriteAheadLog.open(log_directory, after_sequence=1000)

    assert recovered == []
    assert (log.last_sequence, log.durable_sequence) == (1000, 1000)
    assert log.append(b"x") == 1001
    log.close()


def test_delete_through_removes_whole_covered_segments_only(log_directory: Path) -> None:
    log, _ = WriteAheadLog.open(log_directory, SMALL_SEGMENTS)
    records = append_records(log, 100)
    segments = log.segment_paths()
    firsts = [int(path.name.removesuffix(".wal")) for path in segments]
    cut = firsts[3] + 1  # inside the fourth segment: only the first three are covered

    assert log.delete_through(cut) == 3
    assert log.segment_paths() == segments[3:]
    assert [path.exists() for path in segments] == [False] * 3 + [True] * (len(segments) - 3)
    assert set(log.durable_lengths()) == set(segments[3:])
    assert log.delete_through(cut) == 0
    assert log.delete_through(10**9) == len(segments) - 4  # never the active segment
    assert log.segment_paths() == segments[-1:]
    assert log.append(b"still writable") == 101
    log.close()

    recovered = reopen(log_directory, after_sequence=100)
    assert recovered == [Record(101, b"still writable")]
    assert reopen(log_directory, after_sequence=firsts[-1] - 1) == [
        *records[firsts[-1] - 1 :],
        Record(101, b"still writable"),
    ]
    with pytest.raises(WalCorruptionError, match="are missing"):
        reopen(log_directory, after_sequence=0)


def test_a_record_bigger_than_a_segment_gets_a_segment_of_its_own(log_directory: Path) -> None:
    big = bytes(range(256)) * 20  # 5120 bytes, five times segment_bytes_max
    with WriteAheadLog.open(log_directory, SMALL_SEGMENTS)[0] as log:
        log.append(b"small")
        log.append(big)
        log.append(b"after")
        segments = log.segment_paths()

    assert [path.stat().st_size for path in segments] == [
        RECORD_HEADER_BYTES + 5,
        RECORD_HEADER_BYTES + len(big),
        RECORD_HEADER_BYTES + 5,
    ]
    assert reopen(log_directory) == [Record(1, b"small"), Record(2, big), Record(3, b"after")]


def test_oversize_payload_is_refused_before_anything_is_written(log_directory: Path) -> None:
    from distlab.common.wal import RECORD_PAYLOAD_BYTES_MAX

    with WriteAheadLog.open(log_directory)[0] as log:
        with pytest.raises(ValueError, match="limit"):
            log.write(bytes(RECORD_PAYLOAD_BYTES_MAX + 1))
        assert log.last_sequence == 0


def test_never_policy_acknowledges_after_write_and_fsyncs_only_when_asked(
    log_directory: Path,
) -> None:
    log, _ = WriteAheadLog.open(log_directory, WalOptions(fsync_policy=FsyncPolicy.NEVER))
    fsyncs_at_open = log.fsync_count
    records = append_records(log, 20)

    assert log.fsync_count == fsyncs_at_open
    assert log.durable_sequence == 0
    assert log.durable_lengths() == {log.segment_paths()[0]: 0}
    assert log.sync() == 20
    assert log.durable_sequence == 20
    log.close()
    assert reopen(log_directory) == records


def test_interval_policy_fsyncs_in_the_background(log_directory: Path) -> None:
    options = WalOptions(fsync_policy=FsyncPolicy.INTERVAL, fsync_interval_ms=5)
    log, _ = WriteAheadLog.open(log_directory, options)
    records = append_records(log, 20)
    deadline = time.monotonic() + POLL_DEADLINE_S
    while log.durable_sequence < 20 and time.monotonic() < deadline:
        time.sleep(0.005)  # polling for the background thread, not synchronising by sleep

    assert log.durable_sequence == 20
    segment = log.segment_paths()[0]
    assert log.durable_lengths() == {segment: segment.stat().st_size}
    log.close()
    assert reopen(log_directory) == records


def test_cutting_files_back_to_their_durable_lengths_keeps_every_synced_record(
    log_directory: Path,
) -> None:
    """The chaos hook: what a machine crash would leave under fsync=never."""
    options = WalOptions(fsync_policy=FsyncPolicy.NEVER, segment_bytes_max=1024)
    log, _ = WriteAheadLog.open(log_directory, options)
    synced = append_records(log, 30)
    log.sync()
    append_records(log, 30)  # written, never fsynced (rotation fsyncs some of them)
    durable_sequence = log.durable_sequence
    lengths = log.durable_lengths()
    log.close()

    for path, length in lengths.items():
        path.write_bytes(path.read_bytes()[:length])

    recovered = reopen(log_directory)
    assert recovered[: len(synced)] == synced
    assert recovered[-1].sequence == durable_sequence


def test_threads_share_fsyncs_and_lose_nothing(log_directory: Path) -> None:
    threads_count, appends_per_thread = 32, 200
    log, _ = WriteAheadLog.open(log_directory)
    fsyncs_at_open = log.fsync_count
    acknowledged: list[list[int]] = [[] for _ in range(threads_count)]
    not_durable_when_acknowledged: list[int] = []

    def appender(index: int) -> None:
        for counter in range(appends_per_thread):
            sequence = log.append(f"{index}:{counter}".encode())
            if sequence > log.durable_sequence:
                not_durable_when_acknowledged.append(sequence)
            acknowledged[index].append(sequence)

    threads = [threading.Thread(target=appender, args=(index,)) for index in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    fsyncs = log.fsync_count - fsyncs_at_open
    log.close()

    total = threads_count * appends_per_thread
    assert not_durable_when_acknowledged == []
    assert sorted(sequence for sequences in acknowledged for sequence in sequences) == list(
        range(1, total + 1)
    )
    assert fsyncs <= total // 4, f"{fsyncs} fsyncs for {total} appends: group commit not sharing"
    recovered = reopen(log_directory, WalOptions())
    assert [record.sequence for record in recovered] == list(range(1, total + 1))
    by_sequence = {record.sequence: record.payload for record in recovered}
    for index, sequences in enumerate(acknowledged):
        for counter, sequence in enumerate(sequences):
            assert by_sequence[sequence] == f"{index}:{counter}".encode()


def test_a_failed_fsync_poisons_the_log(log_directory: Path) -> None:
    fsync = ControlledFsync()
    log, _ = WriteAheadLog.open(log_directory, fsync=fsync)
    assert log.append(b"before") == 1
    fsync.failing = True

    with pytest.raises(WalFailedError, match="injected fsync failure") as raised:
        log.append(b"during")
    assert isinstance(raised.value.__cause__, OSError)
    assert raised.value.__cause__.errno == errno.EIO

    fsync.failing = False  # the disk "recovers": a retried fsync would now succeed, and lie
    calls_after_failure = fsync.calls
    operations: list[Callable[[], int]] = [
        lambda: log.append(b"after"),
        lambda: log.write(b"after"),
        log.sync,
        lambda: log.delete_through(1),
    ]
    for operation in operations:
        with pytest.raises(WalFailedError):
            operation()
    assert fsync.calls == calls_after_failure, "fsync retried after a failure"
    assert log.durable_sequence == 1
    assert log.last_sequence == 2  # "during" was written, never acknowledged
    log.close()  # no final sync on a failed log, and no error
    log.close()


def test_a_failed_fsync_wakes_every_waiting_thread_and_acknowledges_nothing_after(
    log_directory: Path,
) -> None:
    fsync = ControlledFsync()
    log, _ = WriteAheadLog.open(log_directory, fsync=fsync)
    durable_at_failure: list[int] = []
    fsync.on_failure = lambda: durable_at_failure.append(log.durable_sequence)
    acknowledged: list[int] = []
    outcomes: list[str] = []
    lock = threading.Lock()

    def appender() -> None:
        try:
            while True:
                sequence = log.append(b"payload")
                with lock:
                    acknowledged.append(sequence)
                    if len(acknowledged) == 300:
                        fsync.failing = True
        except WalFailedError:
            with lock:
                outcomes.append("failed")

    threads = [threading.Thread(target=appender) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "an appender hung after the failure"

    assert outcomes == ["failed"] * 8
    assert fsync.failures == 1, "fsync called again after it failed"
    assert log.durable_sequence == durable_at_failure[0]
    assert max(acknowledged) <= durable_at_failure[0], "acknowledged after the failed fsync"
    log.close()


def test_a_failed_fsync_during_rotation_poisons_the_log(log_directory: Path) -> None:
    fsync = ControlledFsync()
    log, _ = WriteAheadLog.open(
        log_directory,
        WalOptions(fsync_policy=FsyncPolicy.NEVER, segment_bytes_max=1024),
        fsync=fsync,
    )
    log.write(bytes(1000))
    fsync.failing = True

    with pytest.raises(WalFailedError):
        log.write(bytes(100))  # would overflow the segment: rotation fsyncs, which fails
    with pytest.raises(WalFailedError):
        log.write(b"")
    assert (log.last_sequence, log.durable_sequence) == (1, 0)
    log.close()


def test_closed_log_refuses_writes_and_close_is_idempotent(log_directory: Path) -> None:
    log, _ = WriteAheadLog.open(log_directory, WalOptions(fsync_policy=FsyncPolicy.NEVER))
    log.write(b"one")
    log.close()

    assert log.durable_sequence == 1  # close synced it
    with pytest.raises(WalClosedError):
        log.write(b"two")
    assert log.sync() == 1
    log.close()


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="segment_bytes_max"):
        WalOptions(segment_bytes_max=10)
    with pytest.raises(ValueError, match="segment_bytes_max"):
        WalOptions(segment_bytes_max=2**40)
    with pytest.raises(ValueError, match="fsync_interval_ms"):
        WalOptions(fsync_interval_ms=0)
    with pytest.raises(TypeError, match="FsyncPolicy"):
        WalOptions(fsync_policy="always")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="after_sequence"):
        WriteAheadLog.open("/nonexistent-never-created", after_sequence=-1)


def test_recovery_verifies_frames_written_by_the_codec(log_directory: Path) -> None:
    # A segment written by hand with the codec is a valid log: the file layer adds no framing.
    log_directory.mkdir()
    frames = [encode_record(sequence, b"hand-written") for sequence in (1, 2, 3)]
    (log_directory / segment_name(1)).write_bytes(b"".join(frames))

    assert [record.sequence for record in reopen(log_directory)] == [1, 2, 3]


# ----------------------------------------------------------------------------- the chaos ledger


def test_cut_to_durable_keeps_exactly_the_fsynced_records(log_directory: Path) -> None:
    # fsync NEVER with small segments: each rotation fsyncs the old segment, the tail is never
    # fsynced; a machine crash keeps the rotated segments and loses the tail.
    options = WalOptions(
        fsync_policy=FsyncPolicy.NEVER, segment_bytes_max=SEGMENT_BYTES_MIN, durable_ledger=True
    )
    log, _ = WriteAheadLog.open(log_directory, options)
    records = append_records(log, 40)
    durable = log.durable_sequence
    assert 0 < durable < 40, "the test needs rotated (fsynced) segments and an unsynced tail"
    os.close(log._active_descriptor)  # a kill -9: no close(), so no final sync
    log._active_descriptor = -1

    cut = cut_to_durable(log_directory)

    assert sum(cut.values()) > 0
    assert reopen(log_directory, options) == records[:durable]


def test_cut_to_durable_cuts_nothing_when_every_append_was_fsynced(log_directory: Path) -> None:
    options = WalOptions(segment_bytes_max=SEGMENT_BYTES_MIN, durable_ledger=True)
    log, _ = WriteAheadLog.open(log_directory, options)
    records = append_records(log, 25)
    os.close(log._active_descriptor)
    log._active_descriptor = -1

    assert cut_to_durable(log_directory) == {}
    assert reopen(log_directory, options) == records


def test_cut_to_durable_needs_a_ledger(log_directory: Path) -> None:
    log, _ = WriteAheadLog.open(log_directory, WalOptions())
    log.close()
    with pytest.raises(FileNotFoundError):
        cut_to_durable(log_directory)
