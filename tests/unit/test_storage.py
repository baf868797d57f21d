"""The storage engine on real files: writes survive restarts and crashes, checkpoints bound what a
restart replays, and damaged snapshots are handled as the recovery recipe says.

References: Bigtable 2006 section 5.3 ("recover a tablet ... reads its metadata ... and applies
the redo points"); ARIES redo (repeat history from the checkpoint).
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from distlab.common.clock import ManualClock
from distlab.common.wal_file import FsyncPolicy, WalOptions
from distlab.kvstore.storage import (
    CHECKPOINT_DIRECTORY_NAME,
    SCAN_ENTRIES_MAX,
    WAL_DIRECTORY_NAME,
    StorageClosedError,
    StorageEngine,
    StorageOptions,
    StorageRecoveryError,
    snapshot_name,
)

# Small segments, so a few hundred writes span many of them and deleting covered segments shows.
SEGMENT_BYTES_SMALL = 1024
# No automatic checkpoint in tests that take their own.
CHECKPOINT_WAL_BYTES_NEVER = 1 << 40


def options(
    policy: FsyncPolicy = FsyncPolicy.NEVER,
    *,
    checkpoint_wal_bytes: int = CHECKPOINT_WAL_BYTES_NEVER,
    checkpoint_interval_ms: int | None = None,
    snapshots_retained: int = 2,
) -> StorageOptions:
    return StorageOptions(
        wal=WalOptions(fsync_policy=policy, segment_bytes_max=SEGMENT_BYTES_SMALL),
        checkpoint_wal_bytes=checkpoint_wal_bytes,
        checkpoint_interval_ms=checkpoint_interval_ms,
        snapshots_retained=snapshots_retained,
    )


def key(index: int) -> bytes:
    return b"key-%06d" % index


def value(index: int, generation: int = 0) -> bytes:
    return b"value-%06d-%d" % (index, generation)


def write_keys(engine: StorageEngine, indexes: range, generation: int = 0) -> None:
    for index in indexes:
        engine.put_sync(key(index), value(index, generation))


def segment_first_sequences(data_dir: Path) -> list[int]:
    return sorted(int(path.stem) for path in (data_dir / WAL_DIRECTORY_NAME).glob("*.wal"))


def snapshot_sequences(data_dir: Path) -> list[int]:
    directory = data_dir / CHECKPOINT_DIRECTORY_NAME
    return sorted(int(path.name[9:29]) for path in directory.glob("snapshot-*.snap"))


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------------------------ restarts


def test_puts_and_deletes_survive_close_and_reopen(tmp_path: Path) -> None:
    engine = StorageEngine.open(tmp_path, options(FsyncPolicy.ALWAYS))
    assert engine.put_sync(b"a", b"1") == 1
    assert engine.put_sync(b"b", b"2") == 2
    assert engine.delete_sync(b"a") == 3
    assert engine.delete_sync(b"never written") == 4, "deleting a missing key is a write too"
    engine.close_sync()
    engine.close_sync()  # idempotent

    reopened = StorageEngine.open(tmp_path, options(FsyncPolicy.ALWAYS))
    assert reopened.get(b"a") is None
    assert reopened.entry(b"a") is not None, "the tombstone survives the restart"
    assert reopened.get(b"b") == b"2"
    assert reopened.recovery.records_replayed == 4
    assert reopened.put_sync(b"c", b"3") == 5, "sequences continue after the log"
    reopened.close_sync()


@pytest.mark.asyncio
async def test_async_writes_survive_close_and_reopen(tmp_path: Path) -> None:
    engine = StorageEngine.open(tmp_path, options(FsyncPolicy.ALWAYS))
    sequences = [await engine.put(key(index), value(index)) for index in range(20)]
    await engine.delete(key(3))
    assert sequences == list(range(1, 21))
    assert engine.get(key(7)) == value(7), "a write is visible as soon as put returns"
    await engine.close()
    await engine.close()  # idempotent: the server calls it on stop and again on exit

    reopened = StorageEngine.open(tmp_path, options(FsyncPolicy.ALWAYS))
    assert [reopened.get(key(index)) for index in (2, 3, 19)] == [value(2), None, value(19)]
    await reopened.close()


def crash(engine: StorageEngine) -> None:
    """Abandon the engine as a machine crash would: cut every WAL segment back to what its last
    fsync covered (the WAL's chaos hook). The engine object is simply never used again."""
    for path, durable_length in engine.wal_durable_lengths().items():
        with path.open("r+b") as file:
            file.truncate(durable_length)


@pytest.mark.asyncio
async def test_every_acknowledged_write_survives_a_crash_under_fsync_always(
    tmp_path: Path,
) -> None:
    engine = StorageEngine.open(tmp_path, options(FsyncPolicy.ALWAYS))
    write_keys(engine, range(0, 30))
    await asyncio.gather(*(engine.put(key(index), value(index)) for index in range(30, 60)))
    crash(engine)

    recovered = StorageEngine.open(tmp_path, options(FsyncPolicy.ALWAYS))
    missing = [index for index in range(60) if recovered.get(key(index)) != value(index)]
    assert missing == []
    recovered.close_sync()


def test_the_crash_simulation_does_lose_unsynced_writes(tmp_path: Path) -> None:
    """Negative control for the test above: under NEVER the same crash loses acknowledged
    writes, so the simulated crash really cuts away what was not fsynced."""
    engine = StorageEngine.open(tmp_path, options(FsyncPolicy.NEVER))
    write_keys(engine, range(60))
    crash(engine)

    recovered = StorageEngine.open(tmp_path, options(FsyncPolicy.NEVER))
    survivors = sum(recovered.get(key(index)) == value(index) for index in range(60))
    assert survivors < 60
    recovered.close_sync()


# ------------------------------------------------------------------------------------ checkpoints


def test_after_a_checkpoint_a_restart_replays_only_the_tail(tmp_path: Path) -> None:
    engine = StorageEngine.open(tmp_path, options(snapshots_retained=1))
    write_keys(engine, range(200))
    segments_before = segment_first_sequences(tmp_path)
    info = engine.checkpoint()
    write_keys(engine, range(180, 217), generation=1)  # the tail: 20 overwrites, 17 new keys
    engine.close_sync()

    assert info.written
    assert info.covered_sequence == 200
    assert info.entries == 200
    assert info.wal_segments_deleted > 0
    segments_after = segment_first_sequences(tmp_path)
    assert len(segments_after) < len(segments_before)
    assert segments_after[0] <= 201, "the segment holding the first record after it is kept"
    assert len(segments_after) == 1 or segments_after[1] > 201, "every covered segment is gone"
    assert snapshot_sequences(tmp_path) == [200]

    reopened = StorageEngine.open(tmp_path, options(snapshots_retained=1))
    assert reopened.recovery.snapshot_sequence == 200
    assert reopened.recovery.snapshot_entries_loaded == 200
    assert reopened.recovery.records_replayed == 37
    expected = [value(index, 1 if index >= 180 else 0) for index in range(217)]
    assert [reopened.get(key(index)) for index in range(217)] == expected
    reopened.close_sync()


def test_a_checkpoint_with_nothing_new_writes_nothing(tmp_path: Path) -> None:
    engine = StorageEngine.open(tmp_path, options())
    assert not engine.checkpoint().written, "an empty engine has nothing to snapshot"
    engine.put_sync(b"k", b"v")
    assert engine.checkpoint().written
    assert not engine.checkpoint().written
    engine.close_sync()
    assert snapshot_sequences(tmp_path) == [1]


def test_two_retained_snapshots_keep_the_wal_back_to_the_older_one(tmp_path: Path) -> None:
    engine = StorageEngine.open(tmp_path, options(snapshots_retained=2))
    covered = []
    for round_number in range(3):
        write_keys(engine, range(100), generation=round_number)
        covered.append(engine.checkpoint().covered_sequence)
        first_kept = segment_first_sequences(tmp_path)[0]
        oldest_retained = covered[-2] if len(covered) >= 2 else covered[-1]
        assert first_kept <= oldest_retained + 1, f"round {round_number}: fallback needs the WAL"
        assert snapshot_sequences(tmp_path) == covered[-2:]
    engine.close_sync()
    assert covered == [100, 200, 300]
    assert segment_first_sequences(tmp_path)[0] > 100, "segments covered by both are deleted"


def test_checkpoint_triggers_after_checkpoint_wal_bytes(tmp_path: Path) -> None:
    engine = StorageEngine.open(tmp_path, options(checkpoint_wal_bytes=4096))
    write_keys(engine, range(300))  # about 9,000 bytes of WAL: two thresholds' worth
    # close_sync waits for a checkpoint already triggered, so what follows is deterministic.
    engine.close_sync()
    assert engine.stats().checkpoints_written >= 1
    assert snapshot_sequences(tmp_path) != []

    reopened = StorageEngine.open(tmp_path, options())
    assert reopened.recovery.snapshot_sequence > 0
    assert reopened.recovery.records_replayed == 300 - reopened.recovery.snapshot_sequence
    assert [reopened.get(key(index)) for index in range(300)] == [value(i) for i in range(300)]
    reopened.close_sync()


def test_checkpoint_triggers_after_checkpoint_interval(tmp_path: Path) -> None:
    clock = ManualClock()
    engine = StorageEngine.open(tmp_path, options(checkpoint_interval_ms=60_000), clock=clock)
    engine.put_sync(b"a", b"1")
    clock.advance(59_999)
    engine.put_sync(b"b", b"2")
    assert engine.stats().checkpoints_written == 0
    clock.advance(1)
    engine.put_sync(b"c", b"3")  # due: this write schedules a checkpoint
    engine.close_sync()
    assert engine.stats().checkpoints_written == 1
    assert snapshot_sequences(tmp_path) == [3]


@pytest.mark.asyncio
async def test_checkpoint_async_runs_off_the_event_loop(tmp_path: Path) -> None:
    engine = StorageEngine.open(tmp_path, options())
    await asyncio.gather(*(engine.put(key(index), value(index)) for index in range(50)))
    info = await engine.checkpoint_async()
    assert (info.covered_sequence, info.entries) == (50, 50)
    await engine.close()
    with pytest.raises(StorageClosedError):
        await engine.checkpoint_async()


def test_a_leftover_temporary_snapshot_is_deleted_on_open(tmp_path: Path) -> None:
    engine = StorageEngine.open(tmp_path, options())
    engine.put_sync(b"k", b"v")
    engine.close_sync()
    leftover = tmp_path / CHECKPOINT_DIRECTORY_NAME / (snapshot_name(1) + ".tmp")
    leftover.write_bytes(b"a checkpoint that crashed before its rename")

    reopened = StorageEngine.open(tmp_path, options())
    assert not leftover.exists()
    assert reopened.recovery.snapshot_sequence == 0
    assert reopened.get(b"k") == b"v"
    reopened.close_sync()


def test_a_failed_checkpoint_leaves_the_engine_working(tmp_path: Path) -> None:
    engine = StorageEngine.open(tmp_path, options())
    engine.put_sync(b"k", b"v")
    blocker = tmp_path / CHECKPOINT_DIRECTORY_NAME / (snapshot_name(1) + ".tmp")
    blocker.mkdir()  # the snapshot cannot be written where a directory stands
    with pytest.raises(IsADirectoryError):
        engine.checkpoint()
    blocker.rmdir()
    engine.put_sync(b"k", b"v2")
    info = engine.checkpoint()
    assert (info.written, info.covered_sequence) == (True, 2), "nothing was taken as saved"
    engine.close_sync()


# ------------------------------------------------------------------------------------ damage


def test_a_damaged_newest_snapshot_falls_back_to_the_older_one(tmp_path: Path) -> None:
    engine = StorageEngine.open(tmp_path, options(snapshots_retained=2))
    write_keys(engine, range(100))
    first = engine.checkpoint().covered_sequence
    write_keys(engine, range(50, 150), generation=1)
    second = engine.checkpoint()
    write_keys(engine, range(140, 160), generation=2)
    engine.close_sync()
    assert second.path is not None
    flip_byte(second.path, second.snapshot_bytes // 2)

    reopened = StorageEngine.open(tmp_path, options(snapshots_retained=2))
    assert reopened.recovery.snapshot_sequence == first
    assert reopened.recovery.rejected_snapshots == (str(second.path),)
    assert reopened.recovery.records_replayed == 220 - first
    generations = {**dict.fromkeys(range(50), 0), **dict.fromkeys(range(50, 140), 1)}
    generations.update(dict.fromkeys(range(140, 160), 2))
    assert [reopened.get(key(index)) for index in range(160)] == [
        value(index, generation) for index, generation in sorted(generations.items())
    ]
    assert not second.path.exists(), "set aside once recovery succeeded"
    assert second.path.with_name(second.path.name + ".corrupt").exists(), "kept for inspection"
    reopened.close_sync()


def test_a_damaged_snapshot_the_wal_no_longer_covers_is_refused(tmp_path: Path) -> None:
    engine = StorageEngine.open(tmp_path, options(snapshots_retained=1))
    write_keys(engine, range(200))
    info = engine.checkpoint()
    write_keys(engine, range(10), generation=1)
    engine.close_sync()
    assert info.path is not None
    assert info.wal_segments_deleted > 0
    flip_byte(info.path, 100)

    for attempt in range(2):
        with pytest.raises(StorageRecoveryError, match="damaged"):
            StorageEngine.open(tmp_path, options(snapshots_retained=1))
        assert info.path.exists(), f"attempt {attempt}: the evidence stays where it was"


def test_a_damaged_snapshot_beyond_the_end_of_the_wal_is_refused(tmp_path: Path) -> None:
    """The WAL bridges from the older snapshot but ends before the damaged one's sequence (its
    tail was lost): loading would silently drop writes the damaged snapshot held."""
    engine = StorageEngine.open(tmp_path, options(snapshots_retained=2))
    write_keys(engine, range(100))
    first = engine.checkpoint().covered_sequence
    write_keys(engine, range(100, 200))
    second = engine.checkpoint()
    engine.close_sync()
    assert second.path is not None
    flip_byte(second.path, 100)
    # Keep only the segment holding first + 1: the log now ends well before the second snapshot.
    segments = segment_first_sequences(tmp_path)
    keep = max(first_sequence for first_sequence in segments if first_sequence <= first + 1)
    for first_sequence in segments:
        if first_sequence > keep:
            (tmp_path / WAL_DIRECTORY_NAME / f"{first_sequence:020d}.wal").unlink()

    with pytest.raises(StorageRecoveryError, match="acknowledged writes would be lost"):
        StorageEngine.open(tmp_path, options(snapshots_retained=2))


# ------------------------------------------------------------------------------------ concurrency


@pytest.mark.asyncio
async def test_concurrent_puts_to_one_key_end_with_the_highest_sequence(tmp_path: Path) -> None:
    seed = 4242
    generator = random.Random(seed)
    engine = StorageEngine.open(tmp_path, options(FsyncPolicy.ALWAYS))

    async def writer(task_number: int, yields: int) -> tuple[int, bytes]:
        for _ in range(yields):
            await asyncio.sleep(0)  # a yield, to interleave the writers differently per seed
        written = b"task-%d" % task_number
        return await engine.put(b"contended", written), written

    acknowledged = await asyncio.gather(
        *(writer(number, generator.randrange(4)) for number in range(64))
    )
    winner = max(acknowledged)[1]
    assert engine.get(b"contended") == winner, f"seed={seed}"
    await engine.close()

    reopened = StorageEngine.open(tmp_path, options(FsyncPolicy.ALWAYS))
    assert reopened.get(b"contended") == winner, f"seed={seed}"
    await reopened.close()


def test_concurrent_threads_to_one_key_end_with_the_highest_sequence(tmp_path: Path) -> None:
    """Threads get their acknowledgements in any order and apply in any order; the sequence rule
    makes the memtable agree with the log anyway."""
    engine = StorageEngine.open(tmp_path, options(FsyncPolicy.ALWAYS))
    acknowledged: list[tuple[int, bytes]] = []
    acknowledged_lock = threading.Lock()

    def writer(thread_number: int) -> None:
        for write_number in range(25):
            written = b"thread-%d-write-%d" % (thread_number, write_number)
            sequence = engine.put_sync(b"contended", written)
            with acknowledged_lock:
                acknowledged.append((sequence, written))

    threads = [threading.Thread(target=writer, args=(number,)) for number in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winner = max(acknowledged)[1]
    assert sorted(sequence for sequence, _ in acknowledged) == list(range(1, 201))
    assert engine.get(b"contended") == winner
    assert engine.stats().applied_sequence == 200
    engine.close_sync()

    reopened = StorageEngine.open(tmp_path, options(FsyncPolicy.ALWAYS))
    assert reopened.get(b"contended") == winner
    reopened.close_sync()


def test_checkpoints_during_concurrent_writes_lose_nothing(tmp_path: Path) -> None:
    """A checkpoint cuts at an instant when the applied records form a prefix, so a snapshot
    taken while writers race must, with the tail, rebuild exactly what was acknowledged."""
    engine = StorageEngine.open(tmp_path, options(FsyncPolicy.ALWAYS))
    stop = threading.Event()
    checkpoints = []

    def checkpointer() -> None:
        while not stop.is_set():
            checkpoints.append(engine.checkpoint())

    def writer(thread_number: int) -> None:
        for write_number in range(40):
            engine.put_sync(key(thread_number * 100 + write_number), value(write_number))

    checkpoint_thread = threading.Thread(target=checkpointer)
    checkpoint_thread.start()
    writers = [threading.Thread(target=writer, args=(number,)) for number in range(4)]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    stop.set()
    checkpoint_thread.join()
    engine.close_sync()
    assert any(info.written for info in checkpoints)

    reopened = StorageEngine.open(tmp_path, options(FsyncPolicy.ALWAYS))
    expected = {key(t * 100 + w): value(w) for t in range(4) for w in range(40)}
    assert {k: reopened.get(k) for k in expected} == expected
    assert reopened.stats().live_keys == 160
    reopened.close_sync()


# ------------------------------------------------------------------------------------ reads, misc


def test_scan_returns_ordered_entries_with_tombstones(tmp_path: Path) -> None:
    engine = StorageEngine.open(tmp_path, options())
    for name in (b"d", b"b", b"a", b"c"):
        engine.put_sync(name, name.upper())
    engine.delete_sync(b"b")
    scanned = engine.scan(b"a", b"d")
    assert [(name, entry.value) for name, entry in scanned] == [
        (b"a", b"A"),
        (b"b", None),
        (b"c", b"C"),
    ]
    assert engine.scan(None, None, limit=1)[0][0] == b"a"
    with pytest.raises(ValueError, match="limit"):
        engine.scan(None, None, limit=SCAN_ENTRIES_MAX + 1)
    engine.close_sync()


def test_collect_tombstones_is_capped_at_the_applied_sequence(tmp_path: Path) -> None:
    engine = StorageEngine.open(tmp_path, options())
    engine.put_sync(b"a", b"1")
    engine.delete_sync(b"a")
    engine.delete_sync(b"b")
    assert engine.stats().tombstones == 2
    assert engine.collect_tombstones(2) == 1
    assert engine.collect_tombstones(10**9) == 1, "capped at sequence 3, which is applied"
    stats = engine.stats()
    assert (stats.live_keys, stats.tombstones) == (0, 0)
    engine.close_sync()


@pytest.mark.asyncio
async def test_a_cancelled_put_still_reaches_the_memtable(tmp_path: Path) -> None:
    """Once a record may be in the WAL it must be applied, whatever happens to the caller:
    otherwise a reader would miss a write that a restart brings back, and the applied watermark
    would stop below it, so no checkpoint could ever be cut again."""
    engine = StorageEngine.open(tmp_path, options(FsyncPolicy.ALWAYS))
    put = asyncio.ensure_future(engine.put(b"k", b"v"))
    for _ in range(3):
        await asyncio.sleep(0)  # a yield: let the write reach the WAL and wait for its fsync
    put.cancel()
    with pytest.raises(asyncio.CancelledError):
        await put
    await engine.close()  # waits for the write in flight
    assert engine.get(b"k") == b"v"
    assert engine.stats().applied_sequence == 1

    reopened = StorageEngine.open(tmp_path, options(FsyncPolicy.ALWAYS))
    assert reopened.get(b"k") == b"v", "the memtable agreed with the log"
    assert reopened.checkpoint().covered_sequence == 1
    reopened.close_sync()


@pytest.mark.asyncio
async def test_writes_after_close_are_refused(tmp_path: Path) -> None:
    engine = StorageEngine.open(tmp_path, options())
    await engine.put(b"k", b"v")
    await engine.close()
    with pytest.raises(StorageClosedError):
        await engine.put(b"k", b"v2")
    with pytest.raises(StorageClosedError):
        engine.delete_sync(b"k")
    with pytest.raises(StorageClosedError):
        engine.checkpoint()
    assert engine.get(b"k") == b"v", "reads of the last state still work"


def test_stats_and_recovery_fields(tmp_path: Path) -> None:
    engine = StorageEngine.open(tmp_path, options())
    engine.put_sync(b"key", b"value")
    engine.delete_sync(b"gone")
    stats = engine.stats()
    assert (stats.live_keys, stats.tombstones, stats.key_and_value_bytes) == (1, 1, 12)
    assert (stats.applied_sequence, stats.last_checkpoint_sequence) == (2, 0)
    assert stats.wal_segments == 1
    fields = engine.recovery_fields()
    assert fields["records_replayed"] == 0
    assert fields["rejected_snapshots"] == ()
    engine.close_sync()


# ------------------------------------------------------------------------------------ restart time

KEY_COUNT_LARGE = 1_000_000
KEY_COUNT_MEDIUM = 100_000
TAIL_RECORDS = 10_000
VALUE_BYTES = 100


def fill(engine: StorageEngine, key_count: int, writes_per_key: int) -> None:
    padding = b"v" * (VALUE_BYTES - 12)
    for generation in range(writes_per_key):
        for index in range(key_count):
            engine.put_sync(b"%016d" % index, b"%012d" % generation + padding)


# A restart is a new process: reopening in this one would measure a heap still holding the
# writer's million keys. The child prints its recovery figures as JSON.
REOPEN_SCRIPT = """
import json, sys, time
from distlab.common.wal_file import FsyncPolicy, WalOptions
from distlab.kvstore.storage import StorageEngine, StorageOptions
options = StorageOptions(wal=WalOptions(fsync_policy=FsyncPolicy.NEVER))
started = time.perf_counter()
engine = StorageEngine.open(sys.argv[1], options)
seconds = time.perf_counter() - started
stats = engine.stats()
engine.close_sync()
print(json.dumps({"seconds": seconds, "live_keys": stats.live_keys,
                  "wal_segments": stats.wal_segments, **engine.recovery_fields()}))
"""


def measure_restart(data_dir: Path, key_count: int, writes_per_key: int) -> float:
    """Seconds to reopen an engine of key_count keys (16-byte keys, 100-byte values), each
    written writes_per_key times with the default checkpoint policy, then a final checkpoint and
    a tail of TAIL_RECORDS writes."""
    storage_options = StorageOptions(wal=WalOptions(fsync_policy=FsyncPolicy.NEVER))
    engine = StorageEngine.open(data_dir, storage_options)
    fill(engine, key_count, writes_per_key)
    engine.checkpoint()
    fill(engine, TAIL_RECORDS, 1)
    engine.close_sync()
    del engine

    completed = subprocess.run(
        [sys.executable, "-c", REOPEN_SCRIPT, str(data_dir)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    figures = json.loads(completed.stdout)
    assert figures["live_keys"] == key_count
    assert figures["records_replayed"] == TAIL_RECORDS
    print(
        f"\nrestart with {key_count:,} keys x {writes_per_key} writes + {TAIL_RECORDS:,} tail: "
        f"{figures['seconds']:.2f} s (snapshot {figures['snapshot_seconds']:.2f} s for "
        f"{figures['snapshot_entries_loaded']:,} entries, WAL {figures['wal_seconds']:.2f} s, "
        f"{figures['wal_segments']} segments kept)"
    )
    seconds: float = figures["seconds"]
    return seconds


@pytest.mark.slow
def test_restart_time_grows_with_the_data_set_not_with_its_history(tmp_path: Path) -> None:
    medium = measure_restart(tmp_path / "medium", KEY_COUNT_MEDIUM, 1)
    large = measure_restart(tmp_path / "large", KEY_COUNT_LARGE, 1)
    overwritten = measure_restart(tmp_path / "overwritten", KEY_COUNT_LARGE, 3)
    # Linear in the snapshot: ten times the keys, about ten times the time (generous bounds for a
    # busy machine); three times the history, about the same time.
    assert large < 20 * medium + 1.0, (medium, large)
    assert overwritten < 1.5 * large + 1.0, (large, overwritten)
