"""The single-node storage engine of the key-value store: memtable + write-ahead log + checkpoints.

What it implements
------------------
Bigtable 2006, section 5.3 ("Tablet Serving"), on one node: writes go to a commit log and then to
an in-memory memtable; a *minor compaction* (our checkpoint) writes the memtable out so that the
log before it can be deleted and recovery reads only the log after it. Recovery is the redo half
of ARIES (Mohan et al., TODS 1992): start from the last checkpoint and repeat history by
re-applying every logged write after it. There is no undo half: there are no transactions to
abort, so every record in the log is a write that will take effect (a caller who got an error for
it got an indefinite one, "it may have happened"). Redo is idempotent because
every memtable entry carries the sequence of the write that made it (``memtable.Memtable.apply``
ignores a write no newer than the entry), as LevelDB and RocksDB tag entries with sequences.

Values are opaque bytes: the Dynamo-style store above keeps its versions (vector clocks,
siblings) inside them. Deletes leave tombstones, kept in memory and in snapshots until
``collect_tombstones`` drops them (the replicated store calls it once its GC grace has passed).

The write path (``put``, ``delete``, and their ``_sync`` twins)
-------------------------------------------------------------
1. Encode the mutation (``memtable.encode_mutation``).
2. Append it to the WAL and wait until it is acknowledged under the fsync policy (ALWAYS: on
   disk, the fsync shared with concurrent writers by group commit). The WAL assigns the sequence.
3. Apply it to the memtable, under the engine's lock, and mark the sequence applied.
4. Return the sequence to the caller.

Why this order: a reader only sees the memtable, so it can never see a value that a crash would
take away (step 3 after step 2), and a caller is answered only for a write that a restart will
redo (step 4 after steps 2 and 3). Concurrent writers may reach step 3 in any order; the sequence
rule makes the result the same as applying in log order. Between steps 2 and 3 a write is
durable but not yet visible; steps 2 and 3 run in a task shielded from the caller's cancellation,
so once a record may be in the log it always reaches the memtable.

Checkpoint (``checkpoint``; automatic after ``checkpoint_wal_bytes`` of log)
------------------------------------------------------------------------
Checkpoints run on one dedicated thread, never on the event loop, one at a time.

1. Under the lock, wait for an instant at which the applied sequences form a prefix 1..S (no
   record applied ahead of an earlier one still on its way from step 2 to step 3), and copy the
   memtable's two containers (about 40 ms per million keys; writers wait for this copy only).
2. Without the lock: write ``snapshot-<S>.snap.tmp``, fsync it, rename it to ``snapshot-<S>.snap``,
   fsync the directory. The rename is the commit point: a crash before it leaves a ``.tmp`` that
   the next open deletes.
3. Delete all but the newest ``snapshots_retained`` snapshots, then delete the WAL segments whose
   records are all covered by the *oldest retained* snapshot.

The snapshot at S is exactly the state after records 1..S (step 1's prefix instant; a copy taken
with a record applied ahead would hold a sequence above S, which after a crash under a lax fsync
policy could be reused for a different write). Keeping the WAL back to the oldest retained
snapshot is what makes an older snapshot a real fallback: if the newest is damaged, recovery
starts from the older one and replays the log across the gap.

Recovery (``StorageEngine.open``)
-------------------------------
1. Delete ``.tmp`` snapshots (checkpoints that never reached their rename).
2. Load the newest snapshot that decodes. A snapshot that does not decode is reported loudly and
   skipped; it is renamed ``.corrupt`` (kept for inspection) only once recovery has succeeded.
3. Open the WAL with ``after_sequence`` = the loaded snapshot's sequence; it returns the records
   after it (the tail). If a snapshot was skipped, the log must reach from the loaded snapshot
   through the skipped one's sequence, or what it held is lost: refuse with
   ``StorageRecoveryError`` rather than serve a state that silently lacks acknowledged writes.
4. Re-apply the tail to the memtable in log order.

Restart time
------------
Restart cost is linear in the snapshot (the live data set) plus the WAL it must read: the tail
after the snapshot (at most about ``checkpoint_wal_bytes``, replayed) and the stretch kept back to
the older retained snapshot plus the rest of the active segment (read and verified, not applied).
It does not depend on how many writes built the data set. Measured in a fresh process on a busy
2-core machine, 16-byte keys and 100-byte values, default options but fsync NEVER to fill quickly
(``test_restart_time_grows_with_the_data_set_not_with_its_history``, marked slow):

=====================================================  ========  =====================
data set (then a checkpoint, then a 10,000-write tail)  restart   of which snapshot
=====================================================  ========  =====================
100,000 keys                                            0.37 s    0.22 s (15 MB file)
1,000,000 keys                                          2.73 s    2.51 s (146 MB file)
1,000,000 keys, each written 3 times (3M writes)        2.82 s    2.55 s
=====================================================  ========  =====================

Replaying a full 64 MiB tail (about 470,000 such writes) adds about 2.3 s, so with the default
``checkpoint_wal_bytes`` a restart at a million keys stays under about 6 s however long the node
has been running. Half of the snapshot time is the WAL frame codec, half building entries; the
cyclic garbage collector is paused meanwhile (it would double the time).

What it leaves out
------------------
SSTables, levels and compaction (see ``memtable``): every checkpoint writes the whole data set,
so its cost grows with the data set, and a checkpoint competes for the GIL with the event loop
while it encodes. No snapshot streaming to peers, no incremental checkpoints, no read cache
(everything is in memory), and no limits on key and value sizes: those are checked at the gRPC
edge (``distlab.common.limits``) before a write reaches the engine.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import gc
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distlab.common.clock import Clock, SystemClock
from distlab.common.group_commit import AsyncGroupCommitter
from distlab.common.logs import log_event
from distlab.common.wal import RECORD_HEADER_BYTES, Record
from distlab.common.wal_file import WalCorruptionError, WalOptions, WriteAheadLog
from distlab.kvstore.memtable import (
    Delete,
    Entry,
    FrozenEntries,
    Memtable,
    Mutation,
    Put,
    SnapshotCorruptionError,
    decode_mutation,
    decode_snapshot,
    encode_mutation,
    encode_snapshot,
)

logger = logging.getLogger("distlab.kvstore.storage")

# Checkpoint after this much WAL (frames, headers included) since the last one. It bounds the log
# a restart must replay: 64 MiB is about 470,000 records of 100-byte values, replayed in roughly
# two seconds here. Smaller makes restarts faster but checkpoints more frequent, and each one
# writes the *whole* data set: at 64 MiB, a data set of 128 MiB is written out twice per 64 MiB
# of writes. It equals the WAL's segment size, so each checkpoint frees about one segment.
CHECKPOINT_WAL_BYTES_DEFAULT = 64 * 1024 * 1024
# Below this a checkpoint would follow every few writes; tests use it to trigger checkpoints.
CHECKPOINT_WAL_BYTES_MIN = 1024
# A week: past that, an interval is a typo, not a policy.
CHECKPOINT_INTERVAL_MS_MAX = 7 * 24 * 60 * 60 * 1000
# Two: the newest, and one to fall back to if the newest is damaged (with the WAL kept back to it,
# so the fallback is complete). One saves disk and WAL but turns a damaged snapshot into a
# refusal to start. More than a few only costs disk.
SNAPSHOTS_RETAINED_DEFAULT = 2
SNAPSHOTS_RETAINED_MAX = 16
# How long a checkpoint waits for an instant at which the applied records form a prefix (step 1
# of the checkpoint recipe). Such an instant comes within microseconds of each group commit, as
# the acknowledged writers apply their records; a second means something is stuck (a failed
# WAL), and the checkpoint gives up rather than hold its thread.
CHECKPOINT_CUT_WAIT_MS_MAX = 1000
# Entries one scan returns at most. A scan holds the engine's lock (and, on the event loop, every
# other request) while it copies; 10,000 entries take about 2 ms. Callers page with start.
SCAN_ENTRIES_MAX = 10_000

WAL_DIRECTORY_NAME = "wal"
CHECKPOINT_DIRECTORY_NAME = "checkpoints"
SNAPSHOT_SUFFIX = ".snap"
TEMPORARY_SUFFIX = ".tmp"
CORRUPT_SUFFIX = ".corrupt"
# 20 digits hold any u64, so the lexical order of names is their numeric order.
_SNAPSHOT_NAME = re.compile(r"^snapshot-([0-9]{20})\.snap$")


def snapshot_name(covered_sequence: int) -> str:
    return f"snapshot-{covered_sequence:020d}{SNAPSHOT_SUFFIX}"


class StorageError(Exception):
    """Base of the engine's own errors."""


class StorageClosedError(StorageError):
    """The engine is closed; the write was refused before anything was logged (definite)."""


class StorageRecoveryError(StorageError):
    """Recovery found no state it can vouch for; the engine refuses to open."""


class CheckpointError(StorageError):
    """A checkpoint could not be taken; the engine goes on and a later checkpoint may succeed."""


@dataclass(frozen=True, slots=True)
class StorageOptions:
    wal: WalOptions = field(default_factory=WalOptions)
    # Checkpoint after this many WAL bytes since the last checkpoint (see the constant's comment).
    checkpoint_wal_bytes: int = CHECKPOINT_WAL_BYTES_DEFAULT
    # Also checkpoint when this long has passed since the last one (checked at each write, so an
    # idle node takes none: it has nothing new to save); None: only by bytes. Restart time is
    # bounded by bytes alone; an interval also bounds how old the WAL's tail gets on a node that
    # writes slowly.
    checkpoint_interval_ms: int | None = None
    snapshots_retained: int = SNAPSHOTS_RETAINED_DEFAULT

    def __post_init__(self) -> None:
        if not isinstance(self.wal, WalOptions):
            raise TypeError(f"wal must be a WalOptions, got {self.wal!r}")
        if self.checkpoint_wal_bytes < CHECKPOINT_WAL_BYTES_MIN:
            raise ValueError(
                f"checkpoint_wal_bytes must be >= {CHECKPOINT_WAL_BYTES_MIN}, "
                f"got {self.checkpoint_wal_bytes}"
            )
        interval_ms = self.checkpoint_interval_ms
        if interval_ms is not None and not 1 <= interval_ms <= CHECKPOINT_INTERVAL_MS_MAX:
            raise ValueError(
                f"checkpoint_interval_ms must be None or in [1, {CHECKPOINT_INTERVAL_MS_MAX}], "
                f"got {interval_ms}"
            )
        if not 1 <= self.snapshots_retained <= SNAPSHOTS_RETAINED_MAX:
            raise ValueError(
                f"snapshots_retained must be in [1, {SNAPSHOTS_RETAINED_MAX}], "
                f"got {self.snapshots_retained}"
            )


@dataclass(frozen=True, slots=True)
class RecoveryStats:
    snapshot_sequence: int  # the sequence the loaded snapshot covers; 0: started from empty
    snapshot_entries_loaded: int
    records_replayed: int  # WAL records after the snapshot, re-applied to the memtable
    snapshot_seconds: float  # reading and decoding the snapshot
    wal_seconds: float  # opening (reading, verifying) the WAL and re-applying its tail
    seconds: float  # the whole of open
    rejected_snapshots: tuple[str, ...]  # snapshots that did not decode (now *.snap.corrupt)


@dataclass(frozen=True, slots=True)
class CheckpointInfo:
    written: bool  # False: nothing was applied since the last checkpoint, so none was written
    covered_sequence: int
    path: Path | None
    entries: int
    snapshot_bytes: int
    snapshots_deleted: int
    wal_segments_deleted: int
    seconds: float


@dataclass(frozen=True, slots=True)
class StorageStats:
    live_keys: int
    tombstones: int
    key_and_value_bytes: int
    applied_sequence: int  # every record up to it is in the memtable
    wal_segments: int
    wal_bytes_since_checkpoint: int
    last_checkpoint_sequence: int
    checkpoints_written: int
    recovery: RecoveryStats


class StorageEngine:
    """Memtable + WAL + checkpoints for one node. Build it with ``StorageEngine.open``.

    Thread-safe. Async writes must all come from one event loop (the group committer's); the
    ``_sync`` methods may be called from any thread without an event loop.
    """

    def __init__(
        self,
        directory: Path,
        options: StorageOptions,
        clock: Clock,
        memtable: Memtable,
        wal: WriteAheadLog,
        snapshot_sequence: int,
        recovery: RecoveryStats,
    ) -> None:
        # Private: ``open`` recovers the state and then builds the engine around it.
        self.directory = directory
        self.options = options
        self.recovery = recovery
        self._clock = clock
        self._checkpoint_directory = directory / CHECKPOINT_DIRECTORY_NAME
        self._wal = wal
        self._committer = AsyncGroupCommitter(wal)
        # Guards the memtable and everything below it; held for microseconds per operation.
        self._lock = threading.Lock()
        self._applied_changed = threading.Condition(self._lock)
        self._memtable = memtable
        # The applied watermark: every record <= _applied_through is in the memtable. Records
        # applied out of order wait in _applied_ahead until the gap below them fills. Its size
        # is bounded by the writes in flight (the group committer's PENDING_APPENDS_MAX).
        self._applied_through = wal.last_sequence
        self._applied_ahead: set[int] = set()
        self._wal_bytes_written = 0
        self._wal_bytes_at_last_cut = 0
        self._last_cut_ms = clock.monotonic_ms()
        self._last_checkpoint_sequence = snapshot_sequence
        self._checkpoints_written = 0
        self._checkpoint_scheduled = False
        self._closed = False
        # One worker: at most one checkpoint runs at a time, and never on the event loop.
        self._checkpoint_executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="kvstore-checkpoint"
        )
        self._checkpoint_lock = threading.Lock()  # manual and background checkpoints take turns
        self._writes_in_flight: set[asyncio.Task[int]] = set()

    # ----------------------------------------------------------------------------- opening

    @classmethod
    def open(
        cls,
        data_dir: str | os.PathLike[str],
        options: StorageOptions = StorageOptions(),  # frozen, so one shared default is safe
        *,
        clock: Clock | None = None,
    ) -> StorageEngine:
        """Recover the engine in ``data_dir`` (created if missing); see the recovery recipe."""
        started = time.perf_counter()
        directory = Path(data_dir)
        checkpoint_directory = directory / CHECKPOINT_DIRECTORY_NAME
        _make_directory(checkpoint_directory)
        _delete_temporary_snapshots(checkpoint_directory)  # step 1
        with _cyclic_gc_paused():
            snapshot = _load_newest_snapshot(checkpoint_directory)  # step 2
            snapshot_entries_loaded = len(snapshot.memtable)
            snapshot_finished = time.perf_counter()
            wal, tail = _open_wal(directory, options.wal, snapshot)  # step 3
            try:
                for record in tail:  # step 4
                    _replay(snapshot.memtable, record)
            except BaseException:
                wal.close()
                raise
            wal_finished = time.perf_counter()
        expected_last = max(snapshot.sequence, tail[-1].sequence if tail else 0)
        assert wal.last_sequence == expected_last, "the WAL resumes after the last record it gave"
        for rejected in snapshot.rejected:
            rejected.rename(rejected.with_name(rejected.name + CORRUPT_SUFFIX))
        if snapshot.rejected:
            _fsync_directory(checkpoint_directory)
        recovery = RecoveryStats(
            snapshot_sequence=snapshot.sequence,
            snapshot_entries_loaded=snapshot_entries_loaded,
            records_replayed=len(tail),
            snapshot_seconds=snapshot_finished - started,
            wal_seconds=wal_finished - snapshot_finished,
            seconds=time.perf_counter() - started,
            rejected_snapshots=tuple(str(path) for path in snapshot.rejected),
        )
        return cls(
            directory,
            options,
            clock or SystemClock(),
            snapshot.memtable,
            wal,
            snapshot.sequence,
            recovery,
        )

    def recovery_fields(self) -> dict[str, Any]:
        """The recovery figures as flat fields, for a structured log line."""
        return dataclasses.asdict(self.recovery)

    # ----------------------------------------------------------------------------- writing

    async def put(self, key: bytes, value: bytes) -> int:
        """Store ``value`` under ``key``; return the write's sequence once it is acknowledged."""
        return await self._write(Put(key, value))

    async def delete(self, key: bytes) -> int:
        """Write a tombstone for ``key`` (deleting a missing key is fine); return its sequence."""
        return await self._write(Delete(key))

    def put_sync(self, key: bytes, value: bytes) -> int:
        """``put`` for callers without an event loop (tools, tests); blocks until acknowledged."""
        return self._write_sync(Put(key, value))

    def delete_sync(self, key: bytes) -> int:
        """``delete`` for callers without an event loop; blocks until acknowledged."""
        return self._write_sync(Delete(key))

    async def _write(self, mutation: Mutation) -> int:
        payload = encode_mutation(mutation)  # step 1
        self._raise_if_closed()
        # Steps 2 and 3 run in their own task, shielded: if the caller is cancelled while the
        # record waits for its fsync, the record still becomes durable (the committer does not
        # take it back), so it must still be applied, or readers would miss a durable write and
        # the applied watermark would stop below it for good.
        task = asyncio.ensure_future(self._append_then_apply(payload, mutation))
        self._writes_in_flight.add(task)
        task.add_done_callback(self._forget_write)
        return await asyncio.shield(task)

    async def _append_then_apply(self, payload: bytes, mutation: Mutation) -> int:
        sequence = await self._committer.append(payload)  # step 2
        self._apply(sequence, mutation, len(payload))  # step 3
        return sequence  # step 4

    def _forget_write(self, task: asyncio.Task[int]) -> None:
        self._writes_in_flight.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a caller cancelled meanwhile no longer needs it

    def _write_sync(self, mutation: Mutation) -> int:
        payload = encode_mutation(mutation)  # step 1
        self._raise_if_closed()
        sequence = self._wal.append(payload)  # step 2 (thread group commit)
        self._apply(sequence, mutation, len(payload))  # step 3
        return sequence  # step 4

    def _apply(self, sequence: int, mutation: Mutation, payload_bytes: int) -> None:
        with self._lock:
            self._memtable.apply(sequence, mutation)
            self._mark_applied_locked(sequence)
            self._wal_bytes_written += RECORD_HEADER_BYTES + payload_bytes
            if not self._checkpoint_scheduled and self._checkpoint_due_locked():
                self._checkpoint_scheduled = True
                self._checkpoint_executor.submit(self._run_background_checkpoint)

    def _mark_applied_locked(self, sequence: int) -> None:
        assert sequence > self._applied_through, "a record is applied once, after recovery's"
        assert sequence not in self._applied_ahead, "a record is applied once"
        if sequence != self._applied_through + 1:
            self._applied_ahead.add(sequence)
            return
        self._applied_through = sequence
        while self._applied_through + 1 in self._applied_ahead:
            self._applied_through += 1
            self._applied_ahead.remove(self._applied_through)
        if not self._applied_ahead:
            self._applied_changed.notify_all()  # a checkpoint may be waiting for this instant

    def _raise_if_closed(self) -> None:
        if self._closed:
            raise StorageClosedError(f"the storage engine in {self.directory} is closed")

    # ----------------------------------------------------------------------------- reading

    def get(self, key: bytes) -> bytes | None:
        """The key's live value; None when it is missing or deleted."""
        with self._lock:
            return self._memtable.get(key)

    def entry(self, key: bytes) -> Entry | None:
        """The key's entry, tombstone included (None: never written, or tombstone collected)."""
        with self._lock:
            return self._memtable.entry(key)

    def scan(
        self, start: bytes | None, end: bytes | None, limit: int = SCAN_ENTRIES_MAX
    ) -> list[tuple[bytes, Entry]]:
        """Up to ``limit`` entries with start <= key < end in key order, tombstones included."""
        if not 0 <= limit <= SCAN_ENTRIES_MAX:
            raise ValueError(f"limit must be in [0, {SCAN_ENTRIES_MAX}], got {limit}")
        with self._lock:
            return self._memtable.scan(start, end, limit)

    def collect_tombstones(self, through_sequence: int) -> int:
        """Drop tombstones written at or before ``through_sequence``; return how many.

        Capped at the applied watermark: every record at or below it is already applied, so no
        older put can arrive late and slip past a tombstone that is gone. A collected tombstone
        may come back after a restart if the WAL tail holds it; that is harmless (it reads as
        missing) and the next collection drops it again.
        """
        with self._lock:
            return self._memtable.collect_tombstones(min(through_sequence, self._applied_through))

    @property
    def last_sequence(self) -> int:
        """The sequence of the last write: grows with every write and across restarts (what
        fsync made durable of it), so it can number events that must never repeat."""
        return self._wal.last_sequence

    def stats(self) -> StorageStats:
        wal_segments = len(self._wal.segment_paths())  # the WAL's own lock: not under ours
        with self._lock:
            return StorageStats(
                live_keys=self._memtable.live_key_count,
                tombstones=self._memtable.tombstone_count,
                key_and_value_bytes=self._memtable.key_and_value_bytes,
                applied_sequence=self._applied_through,
                wal_segments=wal_segments,
                wal_bytes_since_checkpoint=self._wal_bytes_written - self._wal_bytes_at_last_cut,
                last_checkpoint_sequence=self._last_checkpoint_sequence,
                checkpoints_written=self._checkpoints_written,
                recovery=self.recovery,
            )

    def wal_durable_lengths(self) -> dict[Path, int]:
        """The WAL's chaos hook: per segment, the bytes its last fsync covered, so a harness can
        cut the files back to them and so simulate a machine crash."""
        return self._wal.durable_lengths()

    # ----------------------------------------------------------------------------- checkpoints

    def checkpoint(self) -> CheckpointInfo:
        """Write a snapshot of the memtable and delete what it makes redundant (the checkpoint
        recipe). Blocks for as long as writing the data set takes: from a coroutine, use
        ``checkpoint_async``."""
        self._raise_if_closed()
        return self._checkpoint()

    def _checkpoint(self) -> CheckpointInfo:
        with self._checkpoint_lock:
            started = time.perf_counter()
            cut = self._cut()  # step 1
            if cut is None:
                return CheckpointInfo(False, self._last_checkpoint_sequence, None, 0, 0, 0, 0, 0.0)
            sequence, entries = cut
            path, snapshot_bytes = self._write_snapshot(sequence, entries)  # step 2
            snapshots_deleted, wal_segments_deleted = self._delete_redundant()  # step 3
            with self._lock:
                self._last_checkpoint_sequence = sequence
                self._checkpoints_written += 1
            info = CheckpointInfo(
                written=True,
                covered_sequence=sequence,
                path=path,
                entries=len(entries),
                snapshot_bytes=snapshot_bytes,
                snapshots_deleted=snapshots_deleted,
                wal_segments_deleted=wal_segments_deleted,
                seconds=time.perf_counter() - started,
            )
            log_event(logger, "checkpoint", **dataclasses.asdict(info))
            return info

    async def checkpoint_async(self) -> CheckpointInfo:
        """``checkpoint`` on the checkpoint thread, so the event loop keeps serving."""
        self._raise_if_closed()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._checkpoint_executor, self.checkpoint)

    def _cut(self) -> tuple[int, FrozenEntries] | None:
        """Step 1: (S, a copy of the memtable holding exactly records 1..S), or None if no record
        was applied since the last checkpoint."""
        with self._lock:
            consistent = self._applied_changed.wait_for(
                lambda: not self._applied_ahead, timeout=CHECKPOINT_CUT_WAIT_MS_MAX / 1000
            )
            if not consistent:
                raise CheckpointError(
                    f"records {sorted(self._applied_ahead)[:8]} stayed applied ahead of "
                    f"{self._applied_through + 1} for {CHECKPOINT_CUT_WAIT_MS_MAX} ms"
                )
            self._wal_bytes_at_last_cut = self._wal_bytes_written
            self._last_cut_ms = self._clock.monotonic_ms()
            if self._applied_through == self._last_checkpoint_sequence:
                return None
            return self._applied_through, self._memtable.items()

    def _write_snapshot(self, sequence: int, entries: FrozenEntries) -> tuple[Path, int]:
        """Step 2: write, fsync, rename, fsync the directory. Returns the path and its size."""
        path = self._checkpoint_directory / snapshot_name(sequence)
        temporary = path.with_name(path.name + TEMPORARY_SUFFIX)
        snapshot_bytes = 0
        with temporary.open("wb") as file:
            for chunk in encode_snapshot(sequence, entries):
                file.write(chunk)
                snapshot_bytes += len(chunk)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
        _fsync_directory(self._checkpoint_directory)
        return path, snapshot_bytes

    def _delete_redundant(self) -> tuple[int, int]:
        """Step 3: keep the newest snapshots and the WAL back to the oldest of them."""
        sequences = sorted(_snapshot_sequences(self._checkpoint_directory))
        retained = sequences[-self.options.snapshots_retained :]
        for sequence in sequences[: -self.options.snapshots_retained]:
            (self._checkpoint_directory / snapshot_name(sequence)).unlink()
        deleted = len(sequences) - len(retained)
        if deleted:
            _fsync_directory(self._checkpoint_directory)
        return deleted, self._wal.delete_through(retained[0])

    def _checkpoint_due_locked(self) -> bool:
        if self._closed:
            return False
        if (
            self._wal_bytes_written - self._wal_bytes_at_last_cut
            >= self.options.checkpoint_wal_bytes
        ):
            return True
        interval_ms = self.options.checkpoint_interval_ms
        return (
            interval_ms is not None
            and self._clock.monotonic_ms() - self._last_cut_ms >= interval_ms
        )

    def _run_background_checkpoint(self) -> None:
        try:
            self._checkpoint()
        except Exception:
            # The WAL still holds everything, so the node goes on; the next trigger retries once
            # another checkpoint_wal_bytes have been written (the cut reset the count).
            logger.exception("checkpoint_failed")
        finally:
            with self._lock:
                self._checkpoint_scheduled = False

    # ----------------------------------------------------------------------------- closing

    async def close(self) -> None:
        """Refuse new writes, let the writes in flight finish, stop checkpoints, close the WAL
        (which fsyncs). Idempotent."""
        if self._closed:
            return
        with self._lock:
            self._closed = True  # under the lock: no checkpoint is scheduled after this
        await asyncio.gather(*self._writes_in_flight, return_exceptions=True)
        await self._committer.close()
        await asyncio.to_thread(self._close_checkpoints_and_wal)

    def close_sync(self) -> None:
        """``close`` for callers without an event loop. Idempotent."""
        if self._closed:
            return
        with self._lock:
            self._closed = True
        self._close_checkpoints_and_wal()

    def _close_checkpoints_and_wal(self) -> None:
        # A checkpoint already scheduled still runs, before the WAL closes: the next start is
        # then shorter, and a test can count on a triggered checkpoint having happened.
        self._checkpoint_executor.shutdown(wait=True)
        self._wal.close()


# --------------------------------------------------------------------------------- recovery


@dataclass(frozen=True, slots=True)
class _LoadedSnapshot:
    sequence: int  # 0 when no snapshot was loaded
    memtable: Memtable
    newest_sequence: int  # of the newest snapshot on disk, loaded or not
    rejected: list[Path]


def _load_newest_snapshot(checkpoint_directory: Path) -> _LoadedSnapshot:
    """Recovery step 2: the newest snapshot that decodes, and the newer ones that did not."""
    sequences = sorted(_snapshot_sequences(checkpoint_directory), reverse=True)
    rejected: list[Path] = []
    for sequence in sequences:
        path = checkpoint_directory / snapshot_name(sequence)
        try:
            memtable = _read_snapshot(path, sequence)
        except SnapshotCorruptionError as error:
            log_event(logger, "snapshot_rejected", logging.ERROR, path=str(path), error=str(error))
            rejected.append(path)
            continue
        return _LoadedSnapshot(sequence, memtable, sequences[0], rejected)
    return _LoadedSnapshot(0, Memtable(), sequences[0] if sequences else 0, rejected)


def _read_snapshot(path: Path, sequence: int) -> Memtable:
    covered_sequence, entries = decode_snapshot(path.read_bytes())
    if covered_sequence != sequence:
        raise SnapshotCorruptionError(
            f"{path.name} says it covers sequence {covered_sequence}, its name says {sequence}"
        )
    return Memtable.from_entries(entries)


def _open_wal(
    directory: Path, options: WalOptions, snapshot: _LoadedSnapshot
) -> tuple[WriteAheadLog, list[Record]]:
    """Recovery step 3: the WAL and its tail after the loaded snapshot, which must reach at least
    as far as the newest snapshot on disk (the one loaded, or a damaged newer one)."""
    rejected = ", ".join(path.name for path in snapshot.rejected)
    try:
        wal, tail = WriteAheadLog.open(
            directory / WAL_DIRECTORY_NAME, options, after_sequence=snapshot.sequence
        )
    except WalCorruptionError as error:
        if not snapshot.rejected:
            raise
        raise StorageRecoveryError(
            f"snapshots {rejected} are damaged and the WAL cannot bridge the gap from sequence "
            f"{snapshot.sequence} ({error}); restore the data from a replica"
        ) from error
    if wal.last_sequence < snapshot.newest_sequence:
        wal.close()
        raise StorageRecoveryError(
            f"snapshots {rejected} are damaged; they covered sequence {snapshot.newest_sequence} "
            f"but the WAL after sequence {snapshot.sequence} ends at {wal.last_sequence}, so "
            "acknowledged writes would be lost; restore the data from a replica"
        )
    return wal, tail


def _replay(memtable: Memtable, record: Record) -> None:
    try:
        mutation = decode_mutation(record.payload)
    except ValueError as error:
        # The frame passed its checksum, so this is not a torn write: the record was written
        # by something that does not speak this format.
        raise StorageRecoveryError(
            f"WAL record {record.sequence} is not a mutation: {error}"
        ) from error
    memtable.apply(record.sequence, mutation)


@contextlib.contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Pause CPython's cyclic garbage collector during recovery.

    Recovery allocates millions of objects that all survive (keys, values, entries). The
    collector runs after every few hundred allocations and, as the surviving heap grows, walks all
    of it again and again: about half the recovery time at a million keys. None of these objects
    can be part of a reference cycle, so the pause loses nothing.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _snapshot_sequences(checkpoint_directory: Path) -> list[int]:
    sequences = []
    for path in checkpoint_directory.iterdir():
        match = _SNAPSHOT_NAME.match(path.name)
        if match is not None:
            sequences.append(int(match.group(1)))
    return sequences


def _delete_temporary_snapshots(checkpoint_directory: Path) -> None:
    temporary = [
        path
        for path in checkpoint_directory.iterdir()
        if path.name.endswith(SNAPSHOT_SUFFIX + TEMPORARY_SUFFIX)
    ]
    for path in temporary:
        path.unlink()
    if temporary:
        _fsync_directory(checkpoint_directory)


def _make_directory(directory: Path) -> None:
    """Create ``directory`` and its missing parents, making each new name durable."""
    if directory.is_dir():
        return
    _make_directory(directory.parent)
    directory.mkdir()
    _fsync_directory(directory.parent)


def _fsync_directory(directory: Path) -> None:
    """Make created, renamed and deleted names in ``directory`` durable: an fsync of a file does
    not cover its name."""
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
