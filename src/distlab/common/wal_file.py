"""The write-ahead log on disk: append-only segment files, fsync policies, group commit among
threads, and crash recovery. The frame format is ``distlab.common.wal`` (pure); this module is
the I/O around it.

What it implements
------------------
A segmented redo log as etcd's WAL and Kafka's log keep one: a directory of append-only segment
files, each named by the first sequence it holds (``00000000000000000001.wal``), so the lexical
order of the names is the order of the log and old segments can be deleted whole once a
checkpoint covers them (``delete_through``). A record is never split across segments.

Fsync policies, named as Redis names its AOF ``appendfsync`` settings (always / everysec / no):

- ``ALWAYS``: ``append`` returns only once the record is on disk (fsynced). Concurrent appenders
  share one fsync (group commit; see ``append`` and ``distlab.common.group_commit``).
- ``INTERVAL``: ``append`` returns after the write; a background thread fsyncs every
  ``fsync_interval_ms``. A machine crash loses up to that much acknowledged data.
- ``NEVER``: the operating system decides when to write back. A machine crash may lose any
  amount of acknowledged data (a process crash loses none: the page cache survives it).

Whatever the policy, a segment is fsynced before the next one is created, so every segment but
the last is always complete on disk. Recovery relies on it.

Recovery (``WriteAheadLog.open``)
--------------------------------
Segments are decoded in order, checking that each one starts where the previous one ended.

1. A bad frame in any segment but the last is damage inside the log: refuse with
   ``WalCorruptionError`` (file, byte offset, what was wrong). So is a segment name that does not
   parse, a segment that overlaps the previous one, and a gap in sequences that the caller's
   checkpoint (``after_sequence``) does not cover.
2. A bad frame (torn or corrupt) in the last segment is a torn tail, the trace of a crash in the
   middle of a write, *unless* an intact record with one of the next
   ``TORN_TAIL_EVIDENCE_RECORDS`` sequences follows it in the file. A torn write leaves nothing
   valid behind it (we append, and a record is acknowledged only after an fsync that covers every
   byte before it), so a valid record after the damage means the damage hit a record that was
   already on disk, possibly acknowledged: refuse rather than cut off acknowledged records.
   (The chaos matrix, row 16: corruption is detected, never served, and repaired from a peer.)
3. Otherwise cut the last segment back to its last verified frame (truncate, then fsync) and
   continue appending after it.

The rule errs towards refusing: after a power loss on a file system that writes an append's pages
out of order, an *unacknowledged* record can survive behind a torn one, and recovery then asks
for an operator (or a peer) instead of guessing. It never drops a record silently that an intact
later record proves was followed by more of the log.

Failures (PostgreSQL's "fsyncgate", 2018; Rebello et al., "Can Applications Recover from fsync
Failures?", USENIX ATC 2020): once an fsync or a write fails, the kernel may already have dropped
the dirty pages and a retried fsync may report success for data that is gone. So the first
failure poisons the log: every waiting and every later ``write``, ``append`` and ``sync`` raises
``WalFailedError``, and ``durable_sequence`` never moves again. Recovery is a restart, which
reads back what is really on disk.

Locks. ``_sync_lock`` is held across every fsync and every close of a segment's file descriptor,
so at most one fsync runs at a time (a failed fsync poisons the log before any later fsync can
report success) and the descriptor an fsync uses cannot be closed under it. ``_lock`` guards the
log's state and is held for each ``write`` (one ``os.write``) but not across ``sync``'s fsync, so
writers keep appending while an fsync is in flight: that is what lets one fsync cover many
records. The one exception is rotation, about once per segment, which fsyncs the old segment
holding both locks. When both are needed, ``_sync_lock`` is taken first.

The chaos hook: ``durable_lengths()`` gives, per segment, the byte length covered by the last
successful fsync, so a harness can cut files back to it and simulate a machine crash (in the
spirit of ALICE, Pillai et al., "All File Systems Are Not Created Equal", OSDI 2014, which builds
crash states from the writes that reached the disk). With ``WalOptions.durable_ledger`` the log
keeps those lengths in a file beside it, and ``cut_to_durable`` applies them to a killed node's
files. ``fsync`` can be injected, to count fsyncs
or to make one fail with EIO (the chaos matrix, row 17).

What it leaves out: preallocating segments (etcd preallocates 64 MB so that an fsync need not
update the file size), ``fdatasync``, direct I/O, checksummed segment headers, reading records
back after ``open``, and repair from a peer (a refusal is where that would start).
"""

from __future__ import annotations

import enum
import errno
import json
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import NoReturn, Self

from distlab.common.wal import (
    RECORD_HEADER_BYTES,
    RECORD_PAYLOAD_BYTES_MAX,
    DecodeResult,
    DecodeStop,
    Record,
    decode_records,
    encode_record,
    find_intact_frame,
)


class FsyncPolicy(enum.Enum):
    ALWAYS = "always"
    INTERVAL = "interval"
    NEVER = "never"


# Below 1 KiB nearly every record would start a segment of its own, and each rotation costs two
# fsyncs (the old segment and the directory). Tests use small segments to exercise rotation.
SEGMENT_BYTES_MIN = 1024
# Recovery reads a whole segment into memory at once; 1 GiB bounds that.
SEGMENT_BYTES_MAX = 1024 * 1024 * 1024
# Kafka's log.segment.bytes is 1 GiB and etcd's segments are 64 MB; 64 MiB keeps recovery's
# memory small and lets a checkpoint free disk space in reasonable steps.
SEGMENT_BYTES_DEFAULT = 64 * 1024 * 1024
# Faster than 1 ms is ALWAYS in all but name; slower than a minute is NEVER in all but name.
FSYNC_INTERVAL_MS_MIN = 1
FSYNC_INTERVAL_MS_MAX = 60_000
# Redis's everysec is 1000 ms; 100 ms bounds what a machine crash loses in INTERVAL mode while
# costing only ten fsyncs a second.
FSYNC_INTERVAL_MS_DEFAULT = 100
# How many sequences after a damaged frame recovery looks for, as evidence that the log went on
# past the damage (recovery rule 2 above). One would catch any single damaged record; a few more
# catch a short damaged run (a lost disk sector holds several small records). Each costs one
# C-speed scan of the rest of the segment, and only when a segment's tail is bad.
TORN_TAIL_EVIDENCE_RECORDS = 8
# A segment is at most SEGMENT_BYTES_MAX, or one record bigger than its segment: anything larger
# was not written by this module, and reading it into memory is not something to try.
SEGMENT_FILE_BYTES_MAX = SEGMENT_BYTES_MAX + RECORD_HEADER_BYTES + RECORD_PAYLOAD_BYTES_MAX

SEGMENT_SUFFIX = ".wal"
# 20 digits hold any u64, so the lexical order of names is their numeric order.
_SEGMENT_NAME = re.compile(r"^([0-9]{20})\.wal$")


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")


@dataclass(frozen=True, slots=True)
class WalOptions:
    fsync_policy: FsyncPolicy = FsyncPolicy.ALWAYS
    segment_bytes_max: int = SEGMENT_BYTES_DEFAULT
    fsync_interval_ms: int = FSYNC_INTERVAL_MS_DEFAULT
    # Chaos mode: keep ``durable_lengths()`` in a ledger file beside the log, rewritten before
    # each fsync is acknowledged, so that after a kill the harness can cut the files back to
    # what a machine crash would have left (``cut_to_durable``).
    durable_ledger: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.fsync_policy, FsyncPolicy):
            raise TypeError(f"fsync_policy must be a FsyncPolicy, got {self.fsync_policy!r}")
        _check_range(
            "segment_bytes_max", self.segment_bytes_max, SEGMENT_BYTES_MIN, SEGMENT_BYTES_MAX
        )
        _check_range(
            "fsync_interval_ms",
            self.fsync_interval_ms,
            FSYNC_INTERVAL_MS_MIN,
            FSYNC_INTERVAL_MS_MAX,
        )


class WalCorruptionError(Exception):
    """Recovery found damage it must not repair by cutting the log: see the recovery rules."""


class WalFailedError(Exception):
    """A write or fsync failed earlier; the log acknowledges nothing more (fsyncgate)."""


class WalClosedError(Exception):
    """The log was closed; it takes no more writes."""


def segment_name(first_sequence: int) -> str:
    """The file name of the segment whose first record has ``first_sequence``."""
    return f"{first_sequence:020d}{SEGMENT_SUFFIX}"


class WriteAheadLog:
    """An open write-ahead log. Create it with ``WriteAheadLog.open``; all methods are
    thread-safe."""

    def __init__(self, directory: Path, options: WalOptions, fsync: Callable[[int], None]) -> None:
        # Private: ``open`` builds the log, then ``_start`` gives it its active segment.
        self._directory = directory
        self._options = options
        self._fsync = fsync
        self._lock = threading.Lock()
        self._durable_changed = threading.Condition(self._lock)
        self._sync_lock = threading.Lock()
        # (first sequence, path) of every segment, oldest first; the last one is the active one.
        self._segments: list[tuple[int, Path]] = []
        self._durable_lengths: dict[Path, int] = {}
        self._active_descriptor = -1
        self._active_path = directory
        self._active_bytes = 0
        self._last_sequence = 0
        self._durable_sequence = 0
        self._failure: OSError | None = None
        self._closing = False
        self._sync_leader_active = False
        self._fsync_count = 0
        self._interval_stop = threading.Event()
        self._interval_thread: threading.Thread | None = None

    # ----------------------------------------------------------------------------- opening

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        options: WalOptions = WalOptions(),  # frozen, so one shared default is safe
        *,
        after_sequence: int = 0,
        fsync: Callable[[int], None] = os.fsync,
    ) -> tuple[WriteAheadLog, list[Record]]:
        """Recover the log in ``directory`` (created if missing) and open it for appending.

        Returns the log and the recovered records whose sequence is above ``after_sequence``
        (the sequence the caller's checkpoint covers). The next record gets
        max(last recovered sequence, after_sequence) + 1. ``fsync`` is the function used for
        every fsync, for tests and fault injection.
        """
        if after_sequence < 0:
            raise ValueError(f"after_sequence must be >= 0, got {after_sequence}")
        path = Path(directory)
        if not path.is_dir():
            path.mkdir(parents=True)
            _fsync_directory(path.parent, fsync)
        segments = _list_segments(path)
        records, next_expected = _recover_segments(segments, after_sequence, fsync)
        log = cls(path, options, fsync)
        try:
            log._start(segments, next_expected, after_sequence)
        except BaseException:
            if log._active_descriptor >= 0:
                os.close(log._active_descriptor)
            raise
        return log, records

    def _start(
        self, segments: list[tuple[int, Path]], next_expected: int, after_sequence: int
    ) -> None:
        next_sequence = max(next_expected, after_sequence + 1)
        self._segments = list(segments)
        self._durable_lengths = {path: path.stat().st_size for _, path in segments}
        if segments and next_expected == next_sequence:
            # Continue the last segment. Its recovered bytes may still be only in the page cache
            # (the previous process may have died before its fsync): fsync before calling them
            # durable.
            self._active_path = segments[-1][1]
            self._active_descriptor = os.open(self._active_path, _APPEND_FLAGS)
            self._fsync(self._active_descriptor)
        else:
            # A fresh log, or a checkpoint beyond the end of the log: start a segment at the next
            # sequence. Older segments stay until delete_through; recovery accepts the gap
            # because after_sequence covers it.
            self._active_path = self._directory / segment_name(next_sequence)
            self._active_descriptor = _create_segment(self._active_path)
            self._segments.append((next_sequence, self._active_path))
            self._durable_lengths[self._active_path] = 0
        _fsync_directory(self._directory, self._fsync)
        self._write_ledger_locked()
        self._active_bytes = self._durable_lengths[self._active_path]
        self._last_sequence = next_sequence - 1
        self._durable_sequence = next_sequence - 1
        if self._options.fsync_policy is FsyncPolicy.INTERVAL:
            self._interval_thread = threading.Thread(
                target=self._run_interval_syncs, name="wal-interval-fsync", daemon=True
            )
            self._interval_thread.start()

    # ----------------------------------------------------------------------------- appending

    def write(self, payload: bytes) -> int:
        """Assign the next sequence and write the record's frame (one ``os.write``). Returns the
        sequence. Not durable by itself: see ``sync`` and ``append``."""
        if len(payload) > RECORD_PAYLOAD_BYTES_MAX:
            raise ValueError(
                f"payload is {len(payload)} bytes; the limit is {RECORD_PAYLOAD_BYTES_MAX} bytes"
            )
        frame_bytes = RECORD_HEADER_BYTES + len(payload)
        with self._lock:
            self._check_writable_locked()
            if not self._rotation_needed_locked(frame_bytes):
                return self._write_locked(payload)
        # About once per segment: rotation fsyncs and closes a descriptor, which needs the sync
        # lock, and the sync lock comes first in the lock order.
        with self._sync_lock, self._lock:
            self._check_writable_locked()
            if self._rotation_needed_locked(frame_bytes):
                self._rotate_locked()
            return self._write_locked(payload)

    def sync(self) -> int:
        """Make every record written before this call durable; return the highest durable
        sequence.

        1. Under the write lock, note the last written sequence and the active segment.
        2. Without it (writers go on writing), fsync that segment. Segments rotated away were
           fsynced when they were rotated.
        3. Under the write lock again, publish durable_sequence = max(it, the noted sequence),
           unless the log failed meanwhile, and wake the appenders waiting for it.
        """
        with self._sync_lock:
            with self._lock:
                self._raise_if_failed_locked()
                covered_sequence = self._last_sequence
                if covered_sequence <= self._durable_sequence:
                    return self._durable_sequence  # an earlier fsync already covered it
                descriptor, path, length = (
                    self._active_descriptor,
                    self._active_path,
                    self._active_bytes,
                )
            try:
                self._fsync_counted(descriptor)
            except OSError as error:
                with self._lock:
                    self._fail_locked(error)
            with self._lock:
                self._raise_if_failed_locked()
                self._durable_lengths[path] = max(self._durable_lengths[path], length)
                self._write_ledger_locked()
                self._publish_durable_locked(covered_sequence)
                return self._durable_sequence

    def append(self, payload: bytes) -> int:
        """Write a record and return its sequence once it is acknowledged under the policy:
        ALWAYS once it is durable, INTERVAL and NEVER once it is written.

        Under ALWAYS, threads commit as a group (leader/follower; group commit as in DeWitt et
        al., "Implementation Techniques for Main Memory Database Systems", SIGMOD 1984):

        1. Write the frame (``write``).
        2. If an fsync since then made it durable, return.
        3. If no appender is syncing, become the leader: ``sync`` covers every record written
           before it started, including those of the threads waiting; then wake them all.
        4. Otherwise wait for the leader to finish, and go back to 2.
        """
        sequence = self.write(payload)
        if self._options.fsync_policy is FsyncPolicy.ALWAYS:
            self._wait_until_durable(sequence)
        return sequence

    def _wait_until_durable(self, sequence: int) -> None:
        while True:
            with self._lock:
                while True:
                    self._raise_if_failed_locked()
                    if self._durable_sequence >= sequence:
                        return
                    if not self._sync_leader_active:
                        self._sync_leader_active = True
                        break
                    self._durable_changed.wait()
            try:
                self.sync()
            finally:
                with self._lock:
                    self._sync_leader_active = False
                    self._durable_changed.notify_all()

    # ----------------------------------------------------------------------------- reading state

    @property
    def durable_sequence(self) -> int:
        """The highest sequence known to be on disk. (A single attribute read: atomic in
        CPython, so no lock; the asyncio committer reads it on its hot path.)"""
        return self._durable_sequence

    @property
    def last_sequence(self) -> int:
        """The highest sequence written (durable or not)."""
        return self._last_sequence

    @property
    def options(self) -> WalOptions:
        return self._options

    @property
    def directory(self) -> Path:
        return self._directory

    @property
    def fsync_count(self) -> int:
        """How many fsyncs (of segments and of the directory) this log made since ``open``."""
        return self._fsync_count

    def segment_paths(self) -> list[Path]:
        """Every segment, oldest first; the last one is the active one."""
        with self._lock:
            return [path for _, path in self._segments]

    def durable_lengths(self) -> dict[Path, int]:
        """Per segment, how many bytes from its start the last successful fsync covered: what a
        machine crash is sure to leave (the chaos hook)."""
        with self._lock:
            return dict(self._durable_lengths)

    # ----------------------------------------------------------------------------- retention

    def delete_through(self, sequence: int) -> int:
        """Delete the whole segments all of whose records have a sequence <= ``sequence``
        (never the active one), oldest first, then fsync the directory. Returns how many.

        Oldest first, so a crash part-way leaves a suffix of the log, never a hole; recovery then
        needs ``after_sequence`` to cover the deleted head, which a checkpoint does.
        """
        with self._sync_lock:
            with self._lock:
                self._raise_if_failed_locked()
                deleted: list[Path] = []
                # The last segment is the active one: it is never a candidate.
                for (_, path), (next_first, _) in zip(
                    self._segments, self._segments[1:], strict=False
                ):
                    if next_first - 1 > sequence:
                        break
                    deleted.append(path)
                del self._segments[: len(deleted)]
                for path in deleted:
                    del self._durable_lengths[path]
                self._write_ledger_locked()
            # Unlinking needs no write lock: writers only touch the active segment.
            try:
                for path in deleted:
                    path.unlink()
                if deleted:
                    self._fsync_directory_counted()
            except OSError as error:
                with self._lock:
                    self._fail_locked(error)
            return len(deleted)

    # ----------------------------------------------------------------------------- closing

    def close(self) -> None:
        """Sync (unless the log failed), stop the interval thread, close the active segment.
        Idempotent. Raises WalFailedError if the final sync fails."""
        with self._lock:
            if self._closing:
                return
            self._closing = True  # from here on, write() refuses
        if self._interval_thread is not None:
            self._interval_stop.set()
            self._interval_thread.join()
        try:
            with self._lock:
                failed = self._failure is not None
            if not failed:
                self.sync()
        finally:
            with self._sync_lock, self._lock:
                if self._active_descriptor >= 0:
                    os.close(self._active_descriptor)
                    self._active_descriptor = -1
                self._durable_changed.notify_all()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exception_type: type[BaseException] | None,
        exception: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # ----------------------------------------------------------------------------- internals

    def _check_writable_locked(self) -> None:
        self._raise_if_failed_locked()
        if self._closing:
            raise WalClosedError(f"the write-ahead log in {self._directory} is closed")

    def _rotation_needed_locked(self, frame_bytes: int) -> bool:
        # An empty segment takes any record, even one bigger than segment_bytes_max: a record is
        # never split, and refusing it would make a legal payload unwritable.
        return (
            self._active_bytes > 0
            and self._active_bytes + frame_bytes > self._options.segment_bytes_max
        )

    def _write_locked(self, payload: bytes) -> int:
        sequence = self._last_sequence + 1
        # Not re-verified before writing: the frame was built from the payload a moment ago in
        # this call and is immutable bytes, so re-running the checksum would check the same
        # computation on the same memory. Recovery verifies every frame it reads.
        frame = encode_record(sequence, payload)
        try:
            written = os.write(self._active_descriptor, frame)
        except OSError as error:
            self._fail_locked(error)
        if written != len(frame):
            # A short write to a regular file means the disk is full or failing; the partial
            # frame on disk is a torn tail that recovery will cut off.
            self._fail_locked(OSError(errno.EIO, f"short write: {written} of {len(frame)} bytes"))
        self._active_bytes += written
        self._last_sequence = sequence
        return sequence

    def _rotate_locked(self) -> None:
        """Close the active segment and start the next one. Both locks are held.

        1. fsync the old segment, so every segment but the last is complete on disk.
        2. Close it. 3. Create the new one (O_EXCL: never reuse a file). 4. fsync the directory,
        so the new segment's name is on disk before any record in it can be acknowledged.
        """
        next_sequence = self._last_sequence + 1
        path = self._directory / segment_name(next_sequence)
        try:
            self._fsync_counted(self._active_descriptor)
            self._durable_lengths[self._active_path] = self._active_bytes
            self._write_ledger_locked()
            self._publish_durable_locked(self._last_sequence)
            os.close(self._active_descriptor)
            self._active_descriptor = -1
            self._active_descriptor = _create_segment(path)
            self._fsync_directory_counted()
        except OSError as error:
            self._fail_locked(error)
        self._segments.append((next_sequence, path))
        self._durable_lengths[path] = 0
        self._active_path = path
        self._active_bytes = 0
        self._write_ledger_locked()

    def _write_ledger_locked(self) -> None:
        if not self._options.durable_ledger:
            return
        ledger = {path.name: length for path, length in self._durable_lengths.items()}
        # Not fsynced: the ledger only has to outlive a killed process, whose page cache the
        # kernel keeps; the harness itself plays the machine crash.
        temporary = _ledger_path(self._directory).with_suffix(".tmp")
        temporary.write_text(json.dumps(ledger, sort_keys=True))
        os.replace(temporary, _ledger_path(self._directory))

    def _publish_durable_locked(self, sequence: int) -> None:
        if sequence > self._durable_sequence:
            self._durable_sequence = sequence
            self._durable_changed.notify_all()

    def _fail_locked(self, error: OSError) -> NoReturn:
        """Poison the log (the first failure is the one reported) and raise."""
        if self._failure is None:
            self._failure = error
        self._durable_changed.notify_all()  # waiting appenders must raise, not wait forever
        self._raise_if_failed_locked()
        raise AssertionError("unreachable: the log was just poisoned")

    def _raise_if_failed_locked(self) -> None:
        if self._failure is not None:
            raise WalFailedError(
                f"the write-ahead log in {self._directory} failed ({self._failure!r}); it "
                "acknowledges nothing more: restart and recover from what is on disk"
            ) from self._failure

    def _fsync_counted(self, descriptor: int) -> None:
        self._fsync_count += 1  # only ever under _sync_lock, so no lost increments
        self._fsync(descriptor)

    def _fsync_directory_counted(self) -> None:
        self._fsync_count += 1
        _fsync_directory(self._directory, self._fsync)

    def _run_interval_syncs(self) -> None:
        interval_seconds = self._options.fsync_interval_ms / 1000
        while not self._interval_stop.wait(interval_seconds):
            try:
                self.sync()
            except WalFailedError:
                return  # poisoned: every later call raises, nothing is left to do


# --------------------------------------------------------------------------------- chaos


def _ledger_path(directory: Path) -> Path:
    return directory.with_name(directory.name + ".durable.json")


def cut_to_durable(directory: str | os.PathLike[str]) -> dict[str, int]:
    """Play a machine crash on a killed node's log: cut every segment back to the length its
    last fsync covered, as recorded in the ledger (``WalOptions.durable_ledger``). A segment the
    ledger does not know was created after its last update, so nothing in it was durable.

    Returns the bytes cut per segment name (only those that lost some). Call it only while no
    process has the log open. Raises FileNotFoundError when the log kept no ledger.
    """
    path = Path(directory)
    ledger = json.loads(_ledger_path(path).read_text())
    cut: dict[str, int] = {}
    for _, segment in _list_segments(path):
        durable_bytes = int(ledger.get(segment.name, 0))
        size = segment.stat().st_size
        if size > durable_bytes:
            os.truncate(segment, durable_bytes)
            cut[segment.name] = size - durable_bytes
    return cut


# --------------------------------------------------------------------------------- recovery

_APPEND_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
_CREATE_FLAGS = _APPEND_FLAGS | os.O_CREAT | os.O_EXCL
_SEGMENT_FILE_MODE = 0o644


def _list_segments(directory: Path) -> list[tuple[int, Path]]:
    """(first sequence, path) of each ``*.wal`` file, in log order. Other files are not ours."""
    segments = []
    for path in directory.iterdir():
        if not path.name.endswith(SEGMENT_SUFFIX):
            continue
        match = _SEGMENT_NAME.match(path.name)
        if match is None or int(match.group(1)) < 1:
            raise WalCorruptionError(
                f"{path}: not a segment name (expected 20 digits naming the first sequence, "
                f"like {segment_name(1)})"
            )
        segments.append((int(match.group(1)), path))
    segments.sort()
    return segments


def _recover_segments(
    segments: list[tuple[int, Path]], after_sequence: int, fsync: Callable[[int], None]
) -> tuple[list[Record], int]:
    """Validate every segment in order; cut a torn tail off the last one. Returns the records
    above after_sequence and the sequence the next record should have."""
    records: list[Record] = []
    next_expected = 1
    for index, (first_sequence, path) in enumerate(segments):
        _check_continuity(path, first_sequence, next_expected, after_sequence, index == 0)
        data = _read_segment(path)
        decoded = decode_records(data, expected_sequence=first_sequence)
        if decoded.stop is not DecodeStop.END:
            if index < len(segments) - 1:
                raise WalCorruptionError(
                    f"{path}: {decoded.stop.value} record at byte offset {decoded.valid_length} "
                    f"(expected sequence {first_sequence + len(decoded.records)}) in a segment "
                    "that is not the last one: the log is damaged in the middle"
                )
            _cut_torn_tail(path, data, decoded, first_sequence, fsync)
        records.extend(record for record in decoded.records if record.sequence > after_sequence)
        next_expected = first_sequence + len(decoded.records)
    return records, next_expected


def _check_continuity(
    path: Path, first_sequence: int, next_expected: int, after_sequence: int, is_first: bool
) -> None:
    # Every sequence above after_sequence up to the end of the log must be present; sequences
    # at or below it are the caller's checkpoint's business (delete_through removed them).
    if not is_first and first_sequence < next_expected:
        raise WalCorruptionError(
            f"{path}: starts at sequence {first_sequence} but the previous segment ends at "
            f"{next_expected - 1}: segments overlap"
        )
    if first_sequence > next_expected and first_sequence - 1 > after_sequence:
        raise WalCorruptionError(
            f"{path}: starts at sequence {first_sequence}, so sequences "
            f"{max(next_expected, after_sequence + 1)}..{first_sequence - 1} are missing from "
            f"the log and not covered by after_sequence={after_sequence}"
        )


def _read_segment(path: Path) -> bytes:
    size = path.stat().st_size
    if size > SEGMENT_FILE_BYTES_MAX:
        raise WalCorruptionError(
            f"{path}: {size} bytes, more than any segment this log writes "
            f"({SEGMENT_FILE_BYTES_MAX} bytes)"
        )
    return path.read_bytes()


def _cut_torn_tail(
    path: Path,
    data: bytes,
    decoded: DecodeResult,
    first_sequence: int,
    fsync: Callable[[int], None],
) -> None:
    """Recovery rules 2 and 3: refuse if an intact later record proves the log went on past the
    damage; otherwise truncate the segment to its verified prefix and fsync it."""
    bad_offset = decoded.valid_length
    bad_sequence = first_sequence + len(decoded.records)
    for sequence in range(bad_sequence, bad_sequence + TORN_TAIL_EVIDENCE_RECORDS):
        found_offset = find_intact_frame(data, bad_offset, sequence)
        if found_offset is not None:
            raise WalCorruptionError(
                f"{path}: {decoded.stop.value} record at byte offset {bad_offset} (expected "
                f"sequence {bad_sequence}), but an intact record with sequence {sequence} "
                f"follows at byte offset {found_offset}: the log is damaged in the middle, "
                "not torn at its tail; refusing to cut off records that may be acknowledged"
            )
    descriptor = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.ftruncate(descriptor, bad_offset)
        fsync(descriptor)
    finally:
        os.close(descriptor)


def _create_segment(path: Path) -> int:
    return os.open(path, _CREATE_FLAGS, _SEGMENT_FILE_MODE)


def _fsync_directory(directory: Path, fsync: Callable[[int], None]) -> None:
    """Make the directory's entries (created, deleted files) durable: an fsync of a file does
    not cover its name (Linux fsync(2): "Calling fsync() does not necessarily ensure that the
    entry in the directory containing the file has also reached disk")."""
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fsync(descriptor)
    finally:
        os.close(descriptor)
