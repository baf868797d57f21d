"""The durable log of a Raft node (``distlab.raft.storage``) on a real directory: Figure 2's
persistent state across reopen, conflict truncation (Raft 2014, 5.3), snapshots from the leader
and from the application (Raft 2014, section 7; thesis 5.1), compaction deleting WAL segments,
torn tails, a crash between a snapshot file and its mark, limits, and refusal of damage.

The property test drives random saves, compactions and reopens against a plain in-memory model
of the log: a dict index -> entry with truncation, the latest hard state, the latest snapshot.
"""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distlab.common import wal_file
from distlab.common.wal_file import (
    FsyncPolicy,
    WalClosedError,
    WalOptions,
    WriteAheadLog,
    segment_name,
)
from distlab.raft import storage as storage_module
from distlab.raft.core import (
    Config,
    Entry,
    EntryKind,
    HardState,
    RaftCore,
    Role,
    Snapshot,
)
from distlab.raft.storage import (
    ENTRIES_PER_SAVE_MAX,
    ENTRY_DATA_BYTES_MAX,
    FRAGMENT_BODY_BYTES_MAX,
    WAL_DIRECTORY_NAME,
    RaftStorage,
    RaftStorageCorruptError,
    RecoveredState,
    snapshot_file_name,
)

SEED = 20_140_619  # USENIX ATC 2014
SMALL_SEGMENTS = WalOptions(segment_bytes_max=1024)
VOTERS = frozenset({"n1", "n2", "n3"})
PROPERTY_SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, database=None)


def run(first: int, last: int, term: int, data_bytes: int = 0) -> list[Entry]:
    """Entries first..last of one term, each with ``data_bytes`` of data naming its index."""
    return [
        Entry(term, index, EntryKind.NORMAL, (f"{index}|".encode() * data_bytes)[:data_bytes])
        for index in range(first, last + 1)
    ]


def reopen(directory: Path, options: WalOptions = SMALL_SEGMENTS) -> RecoveredState:
    storage, recovered = RaftStorage.open(directory, options)
    storage.close()
    return recovered


def wal_segments(directory: Path) -> list[Path]:
    return sorted((directory / WAL_DIRECTORY_NAME).glob("*.wal"))


def snapshot_files(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.glob("snapshot-*"))


# --- Figure 2: currentTerm, votedFor, log[] ----------------------------------------------------


def test_hard_state_and_entries_survive_a_reopen_and_each_save_is_one_fsync(
    tmp_path: Path,
) -> None:
    """Raft 2014, Figure 2: "Persistent state on all servers (updated on stable storage before
    responding to RPCs)"; the Ready recipe's step 1 is one durable write."""
    storage, recovered = RaftStorage.open(tmp_path)
    assert recovered == RecoveredState(HardState(), (), None)
    assert (storage.first_index, storage.last_index) == (1, 0)
    first_batch = [*run(1, 2, term=1), *run(3, 3, term=2)]
    fsyncs_before = storage.fsync_count
    storage.save(HardState(term=2, voted_for="n1", commit=0), first_batch, None)
    assert storage.fsync_count - fsyncs_before == 1
    storage.save(HardState(term=2, voted_for="n1", commit=3), run(4, 4, term=2), None)
    storage.save(None, run(5, 6, term=2, data_bytes=10), None)
    storage.save(None, [], None)  # nothing to persist: nothing written
    assert storage.fsync_count - fsyncs_before == 3
    assert (storage.first_index, storage.last_index) == (1, 6)
    storage.close()

    recovered = reopen(tmp_path)
    assert recovered.hard_state == HardState(term=2, voted_for="n1", commit=3)
    assert recovered.entries == (*first_batch, *run(4, 4, term=2), *run(5, 6, 2, data_bytes=10))
    assert recovered.snapshot is None


def test_a_conflicting_suffix_is_replaced(tmp_path: Path) -> None:
    """Raft 2014, 5.3: "If an existing entry conflicts with a new one (same index but different
    terms), delete the existing entry and all that follow it"."""
    with RaftStorage.open(tmp_path, SMALL_SEGMENTS)[0] as storage:
        storage.save(HardState(term=1, commit=2), run(1, 5, term=1), None)
        new_suffix = run(3, 4, term=2)
        storage.save(HardState(term=2, commit=2), new_suffix, None)
        assert storage.last_index == 4
        storage.save(None, run(5, 5, term=2), None)  # and appending goes on after it

    recovered = reopen(tmp_path)
    assert recovered.entries == (*run(1, 2, term=1), *run(3, 5, term=2))
    assert recovered.hard_state == HardState(term=2, commit=2)


def test_a_snapshot_from_the_leader_replaces_the_log(tmp_path: Path) -> None:
    """Raft 2014, section 7: "the follower discards its entire log; it is all superseded by the
    snapshot". The hard state stays, even when the Ready that carries the snapshot has none."""
    snapshot = Snapshot(index=10, term=2, voters=VOTERS, data=b"state at 10")
    with RaftStorage.open(tmp_path, SMALL_SEGMENTS)[0] as storage:
        storage.save(HardState(term=2, voted_for="n3", commit=1), run(1, 5, term=1), None)
        storage.save(HardState(term=2, voted_for="n3", commit=10), run(11, 12, term=2), snapshot)
        assert (storage.first_index, storage.last_index) == (11, 12)
        later = Snapshot(index=20, term=2, voters=VOTERS, data=b"state at 20")
        storage.save(None, [], later)  # hard_state None: kept as it was
        assert (storage.first_index, storage.last_index) == (21, 20)

    recovered = reopen(tmp_path)
    assert recovered == RecoveredState(HardState(term=2, voted_for="n3", commit=10), (), later)
    assert snapshot_files(tmp_path) == []  # a leader's snapshot lives in the WAL


# --- Compaction (thesis 5.1) --------------------------------------------------------------------


def test_compaction_deletes_segments_and_keeps_the_latest_hard_state(tmp_path: Path) -> None:
    """Thesis 5.1: once the state machine's state is in a snapshot, "the log up through that
    point [is] discarded". Here the segments holding the latest hard state are deleted too, so
    the hard state must come back from the batch that marks the snapshot."""
    storage, _ = RaftStorage.open(tmp_path, SMALL_SEGMENTS)
    hard_state = HardState(term=3, voted_for="n2", commit=0)
    storage.save(hard_state, [], None)
    segments_seen: set[str] = set()
    next_index = 1
    for round_number in range(1, 6):
        for _ in range(10):  # about 5 KiB of entries: several 1 KiB segments
            storage.save(None, run(next_index, next_index + 3, term=3, data_bytes=100), None)
            next_index += 4
        # The last hard state before the compaction precedes the entries the snapshot keeps.
        hard_state = HardState(term=3, voted_for="n2", commit=next_index - 1)
        storage.save(hard_state, [], None)
        storage.save(None, run(next_index, next_index + 2, term=3, data_bytes=100), None)
        next_index += 3
        segments_seen.update(path.name for path in wal_segments(tmp_path))
        snapshot = Snapshot(hard_state.commit, 3, VOTERS, f"round {round_number}".encode())
        storage.compact(snapshot)
        storage.compact(snapshot)  # already that far: a no-op
        assert (storage.first_index, storage.last_index) == (hard_state.commit + 1, next_index - 1)
        assert snapshot_files(tmp_path) == [snapshot_file_name(hard_state.commit)]
    storage.close()

    remaining = {path.name for path in wal_segments(tmp_path)}
    assert segment_name(1) not in remaining
    assert len(segments_seen - remaining) >= 10, "compaction deleted whole segments"
    assert len(remaining) <= 3
    recovered = reopen(tmp_path)
    assert recovered.hard_state == hard_state
    assert recovered.snapshot == snapshot
    assert recovered.entries == tuple(
        run(hard_state.commit + 1, next_index - 1, term=3, data_bytes=100)
    )


def test_a_crash_after_the_mark_but_before_deleting_segments_recovers_the_new_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mark is the commit point: recovery replays from it even while the log it made
    redundant is still on disk."""
    storage, _ = RaftStorage.open(tmp_path, SMALL_SEGMENTS)
    storage.save(HardState(term=1, commit=20), run(1, 30, term=1, data_bytes=50), None)
    storage.save(HardState(term=2, voted_for="n1", commit=20), run(31, 35, term=2), None)

    class SimulatedCrash(Exception):
        pass

    def crash(self: WriteAheadLog, sequence: int) -> int:
        raise SimulatedCrash

    snapshot = Snapshot(20, 1, VOTERS, b"state at 20")
    with monkeypatch.context() as patch:
        patch.setattr(wal_file.WriteAheadLog, "delete_through", crash)
        with pytest.raises(SimulatedCrash):
            storage.compact(snapshot)
    storage.close()

    assert segment_name(1) in {path.name for path in wal_segments(tmp_path)}
    recovered = reopen(tmp_path)
    assert recovered.snapshot == snapshot
    assert recovered.entries == (*run(21, 30, term=1, data_bytes=50), *run(31, 35, term=2))
    assert recovered.hard_state == HardState(term=2, voted_for="n1", commit=20)


def test_a_crash_between_the_snapshot_file_and_its_mark_leaves_the_old_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage, _ = RaftStorage.open(tmp_path, SMALL_SEGMENTS)
    storage.save(HardState(term=1, commit=8), run(1, 10, term=1, data_bytes=20), None)
    storage.compact(Snapshot(4, 1, VOTERS, b"state at 4"))

    class SimulatedCrash(Exception):
        pass

    def crash(self: RaftStorage, body: bytes) -> int:
        raise SimulatedCrash

    with monkeypatch.context() as patch:
        patch.setattr(RaftStorage, "_write_batch", crash)
        with pytest.raises(SimulatedCrash):
            storage.compact(Snapshot(8, 1, VOTERS, b"state at 8"))
    assert snapshot_files(tmp_path) == [snapshot_file_name(4), snapshot_file_name(8)]
    storage.close()

    recovered = reopen(tmp_path)
    assert recovered.snapshot == Snapshot(4, 1, VOTERS, b"state at 4")
    assert recovered.entries == tuple(run(5, 10, term=1, data_bytes=20))
    assert snapshot_files(tmp_path) == [snapshot_file_name(4)]  # the orphan is gone


def test_a_leftover_temporary_snapshot_file_is_deleted_on_open(tmp_path: Path) -> None:
    with RaftStorage.open(tmp_path)[0] as storage:
        storage.save(HardState(term=1, commit=1), run(1, 1, term=1), None)
    (tmp_path / (snapshot_file_name(1) + ".tmp")).write_bytes(b"half a snapshot")
    assert reopen(tmp_path).entries == tuple(run(1, 1, term=1))
    assert snapshot_files(tmp_path) == []


def test_the_tail_of_a_batch_whose_head_segment_was_deleted_is_skipped(tmp_path: Path) -> None:
    """Segments go whole, so a compaction can delete the segment holding a batch's FIRST record
    and keep the one holding its MIDDLE and LAST: recovery skips them (the snapshot covers them)."""
    options = WalOptions(segment_bytes_max=FRAGMENT_BODY_BYTES_MAX * 3 // 2)
    big_entries = run(2, 4, term=1, data_bytes=700 * 1024)  # about 2.1 MiB: three records
    with RaftStorage.open(tmp_path, options)[0] as storage:
        storage.save(HardState(term=1, commit=1), run(1, 1, term=1), None)  # sequence 1
        storage.save(HardState(term=1, commit=4), big_entries, None)  # 2; 3 and 4 start a segment
        storage.save(None, run(5, 5, term=1), None)  # 5, in the segment of 3 and 4
        storage.compact(Snapshot(4, 1, VOTERS, b"state at 4"))  # replays from 5
    assert [path.name for path in wal_segments(tmp_path)] == [segment_name(3)]

    recovered = reopen(tmp_path, options)
    assert recovered == RecoveredState(
        HardState(term=1, commit=4), tuple(run(5, 5, term=1)), Snapshot(4, 1, VOTERS, b"state at 4")
    )


def test_saves_follow_the_fsync_policy_and_compactions_always_fsync(tmp_path: Path) -> None:
    """Under FsyncPolicy.NEVER a save is only written; a compaction still fsyncs its mark, since
    it then deletes what only the mark makes redundant."""
    options = WalOptions(fsync_policy=FsyncPolicy.NEVER)
    with RaftStorage.open(tmp_path, options)[0] as storage:
        fsyncs_before = storage.fsync_count
        storage.save(HardState(term=1, commit=2), run(1, 3, term=1), None)
        assert storage.fsync_count == fsyncs_before
        storage.compact(Snapshot(2, 1, VOTERS, b"state at 2"))
        assert storage.fsync_count > fsyncs_before
    recovered = reopen(tmp_path, options)
    assert recovered.entries == tuple(run(3, 3, term=1))


# --- Crashes in the middle of a save ------------------------------------------------------------


def test_a_torn_tail_recovers_the_prefix(tmp_path: Path) -> None:
    with RaftStorage.open(tmp_path)[0] as storage:
        storage.save(HardState(term=1, commit=0), run(1, 3, term=1), None)
        storage.save(HardState(term=1, commit=3), run(4, 6, term=1, data_bytes=40), None)
        storage.save(HardState(term=2, commit=6), run(7, 9, term=2, data_bytes=40), None)
    last_segment = wal_segments(tmp_path)[-1]
    os.truncate(last_segment, last_segment.stat().st_size - 30)  # into the last record

    recovered = reopen(tmp_path)
    assert recovered.hard_state == HardState(term=1, commit=3)
    assert recovered.entries == (*run(1, 3, term=1), *run(4, 6, term=1, data_bytes=40))


def test_a_save_bigger_than_one_record_is_applied_whole_or_not_at_all(tmp_path: Path) -> None:
    """A batch over FRAGMENT_BODY_BYTES_MAX spans several WAL records (LevelDB's FIRST, MIDDLE,
    LAST); a crash that keeps only some of them must not leave part of the save behind."""
    big_entries = run(2, 4, term=1, data_bytes=FRAGMENT_BODY_BYTES_MAX)  # three records or more
    with RaftStorage.open(tmp_path)[0] as storage:
        storage.save(HardState(term=1, commit=1), run(1, 1, term=1), None)
        fsyncs_before = storage.fsync_count
        storage.save(HardState(term=1, commit=4), big_entries, None)
        assert storage.fsync_count - fsyncs_before == 1
    assert reopen(tmp_path, WalOptions()).entries == (*run(1, 1, term=1), *big_entries)

    last_segment = wal_segments(tmp_path)[-1]
    os.truncate(last_segment, last_segment.stat().st_size - 1000)  # tear the LAST record
    recovered = reopen(tmp_path, WalOptions())
    assert recovered.hard_state == HardState(term=1, commit=1)
    assert recovered.entries == tuple(run(1, 1, term=1))

    # The complete FIRST and MIDDLE records stay in the log, now followed by new batches.
    with RaftStorage.open(tmp_path)[0] as storage:
        storage.save(HardState(term=2, commit=2), run(2, 2, term=2), None)
    recovered = reopen(tmp_path, WalOptions())
    assert recovered.hard_state == HardState(term=2, commit=2)
    assert recovered.entries == (*run(1, 1, term=1), *run(2, 2, term=2))


# --- Limits and inconsistent saves --------------------------------------------------------------

STORED_HARD_STATE = HardState(term=2, voted_for="n1", commit=3)
STORED_ENTRIES = (*run(1, 2, term=1), *run(3, 5, term=2))


def oversized_snapshot_save(storage: RaftStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    # 256 MiB is too big to build in a unit test; the check reads the constant when it runs.
    monkeypatch.setattr(storage_module, "SNAPSHOT_DATA_BYTES_MAX", 4)
    storage.save(None, [], Snapshot(9, 2, VOTERS, b"12345"))


def oversized_snapshot_compaction(storage: RaftStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage_module, "SNAPSHOT_DATA_BYTES_MAX", 4)
    storage.compact(Snapshot(3, 2, VOTERS, b"12345"))


def older_leader_snapshot(storage: RaftStorage, _: pytest.MonkeyPatch) -> None:
    storage.compact(Snapshot(3, 2, VOTERS, b""))
    storage.save(None, [], Snapshot(2, 1, VOTERS, b""))


def entries_before_the_snapshot(storage: RaftStorage, _: pytest.MonkeyPatch) -> None:
    storage.compact(Snapshot(3, 2, VOTERS, b""))
    storage.save(None, run(3, 3, term=2), None)


REFUSED: dict[str, tuple[Callable[[RaftStorage, pytest.MonkeyPatch], None], str]] = {
    "entry data over the limit": (
        lambda storage, _: storage.save(
            None, [Entry(2, 6, EntryKind.NORMAL, bytes(ENTRY_DATA_BYTES_MAX + 1))], None
        ),
        "ENTRY_DATA_BYTES_MAX",
    ),
    "too many entries in one save": (
        lambda storage, _: storage.save(None, run(6, 6 + ENTRIES_PER_SAVE_MAX, term=2), None),
        "ENTRIES_PER_SAVE_MAX",
    ),
    "snapshot data over the limit (save)": (oversized_snapshot_save, "SNAPSHOT_DATA_BYTES_MAX"),
    "snapshot data over the limit (compact)": (
        oversized_snapshot_compaction,
        "SNAPSHOT_DATA_BYTES_MAX",
    ),
    "an empty vote": (lambda storage, _: storage.save(HardState(3, "", 3), [], None), "voted_for"),
    "a vote over the limit": (
        lambda storage, _: storage.save(HardState(3, "n" * 256, 3), [], None),
        "voted_for",
    ),
    "a voter with a comma": (
        lambda storage, _: storage.save(None, [], Snapshot(9, 2, frozenset({"a,b"}), b"")),
        "comma",
    ),
    "an entry at index 0": (
        lambda storage, _: storage.save(None, [Entry(2, 0, EntryKind.NOOP, b"")], None),
        "entry.index",
    ),
    "a gap after the last index": (
        lambda storage, _: storage.save(None, run(7, 7, term=2), None),
        "do not continue",
    ),
    "entries that are not contiguous": (
        lambda storage, _: storage.save(None, [*run(6, 6, 2), *run(8, 8, 2)], None),
        "where 7 belongs",
    ),
    "a term below the entry before": (
        lambda storage, _: storage.save(None, run(6, 6, term=1), None),
        "below 2",
    ),
    "a term past currentTerm": (
        lambda storage, _: storage.save(None, run(6, 6, term=3), None),
        "past currentTerm",
    ),
    "commit past the last index": (
        lambda storage, _: storage.save(HardState(2, "n1", 6), [], None),
        "past the last index",
    ),
    "currentTerm going back": (
        lambda storage, _: storage.save(HardState(1, None, 3), [], None),
        "went back",
    ),
    "a second vote in one term": (
        lambda storage, _: storage.save(HardState(2, "n2", 3), [], None),
        "one vote per term",
    ),
    "a leader's snapshot older than the stored one": (older_leader_snapshot, "does not follow"),
    "entries before the snapshot": (entries_before_the_snapshot, "after the snapshot"),
    "compaction past the commit index": (
        lambda storage, _: storage.compact(Snapshot(4, 2, VOTERS, b"")),
        "committed",
    ),
    "compaction on the wrong term": (
        lambda storage, _: storage.compact(Snapshot(3, 1, VOTERS, b"")),
        "has term 2",
    ),
}


@pytest.mark.parametrize("case", REFUSED, ids=list(REFUSED))
def test_limits_and_inconsistent_saves_raise_value_error_and_write_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    action, message = REFUSED[case]
    with RaftStorage.open(tmp_path, SMALL_SEGMENTS)[0] as storage:
        storage.save(STORED_HARD_STATE, STORED_ENTRIES, None)
        with pytest.raises(ValueError, match=message):
            action(storage, monkeypatch)
        first_index = storage.first_index
    recovered = reopen(tmp_path)
    assert recovered.hard_state == STORED_HARD_STATE
    assert recovered.entries == STORED_ENTRIES[first_index - 1 :]


def test_a_closed_storage_takes_no_more_writes(tmp_path: Path) -> None:
    storage, _ = RaftStorage.open(tmp_path)
    storage.close()
    storage.close()  # idempotent
    with pytest.raises(WalClosedError):
        storage.save(HardState(term=1), [], None)


# --- Damage is refused --------------------------------------------------------------------------


def compacted_log(directory: Path) -> None:
    with RaftStorage.open(directory, SMALL_SEGMENTS)[0] as storage:
        storage.save(HardState(term=1, commit=30), run(1, 40, term=1, data_bytes=50), None)
        storage.compact(Snapshot(30, 1, VOTERS, b"state at 30"))


def test_a_missing_snapshot_file_is_refused(tmp_path: Path) -> None:
    compacted_log(tmp_path)
    (tmp_path / snapshot_file_name(30)).unlink()
    with pytest.raises(RaftStorageCorruptError, match="missing"):
        RaftStorage.open(tmp_path, SMALL_SEGMENTS)


def test_a_damaged_snapshot_file_is_refused(tmp_path: Path) -> None:
    compacted_log(tmp_path)
    path = tmp_path / snapshot_file_name(30)
    data = bytearray(path.read_bytes())
    data[-20] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(RaftStorageCorruptError, match="damaged"):
        RaftStorage.open(tmp_path, SMALL_SEGMENTS)


def test_a_wal_whose_head_is_gone_without_a_compaction_is_refused(tmp_path: Path) -> None:
    with RaftStorage.open(tmp_path, SMALL_SEGMENTS)[0] as storage:
        for index in range(1, 30):
            storage.save(HardState(term=1, commit=index - 1), run(index, index, 1, 60), None)
    segments = wal_segments(tmp_path)
    assert len(segments) >= 3
    segments[0].unlink()
    with pytest.raises(RaftStorageCorruptError, match="head"):
        RaftStorage.open(tmp_path, SMALL_SEGMENTS)


# --- Restarting the core ------------------------------------------------------------------------


def run_ready_recipe(core: RaftCore, storage: RaftStorage) -> None:
    """The Ready recipe of distlab.raft.core, with no peers: persist, apply, advance."""
    while core.has_ready():
        ready = core.ready()
        storage.save(ready.hard_state, ready.entries, ready.snapshot)  # step 1
        core.advance(ready)  # steps 2 and 3 have nothing to do for a single node


def test_a_raft_core_restarts_from_the_recovered_state(tmp_path: Path) -> None:
    """The Ready recipe: "a restart from what step 1 persisted is correct"."""
    config = Config("n1")
    core = RaftCore(config, ["n1"], random.Random(SEED))
    storage, _ = RaftStorage.open(tmp_path, SMALL_SEGMENTS)
    for _ in range(10 * config.election_ticks):
        core.tick()
        run_ready_recipe(core, storage)
        if core.role is Role.LEADER:
            break
    assert core.role is Role.LEADER
    for number in range(30):
        core.propose(f"command {number}".encode())
        run_ready_recipe(core, storage)
    core.compact(20, b"state machine at 20")
    assert core.snapshot is not None
    storage.compact(core.snapshot)
    core.propose(b"after the snapshot")
    run_ready_recipe(core, storage)
    storage.close()

    storage, recovered = RaftStorage.open(tmp_path, SMALL_SEGMENTS)
    storage.close()
    restarted = RaftCore(
        config,
        ["n1"],
        random.Random(SEED),
        hard_state=recovered.hard_state,
        entries=recovered.entries,
        snapshot=recovered.snapshot,
    )
    assert restarted.term == core.term >= 1
    assert restarted.last_index == core.last_index == 32  # the leader's NOOP, 30, and 1 more
    assert restarted.commit_index == core.commit_index
    assert restarted.snapshot == core.snapshot
    assert restarted.log_entries(21, 33) == core.log_entries(21, 33)


# --- Property: random operations against a model -----------------------------------------------


@dataclass
class LogModel:
    """The stored state as the Ready recipe describes it, with no disk and no batches."""

    hard_state: HardState = field(default_factory=HardState)
    snapshot: Snapshot | None = None
    log: dict[int, Entry] = field(default_factory=dict)

    @property
    def offset(self) -> int:
        return self.snapshot.index if self.snapshot else 0

    @property
    def last_index(self) -> int:
        return max(self.log, default=self.offset)

    def term_at(self, index: int) -> int:
        if index == self.offset:
            return self.snapshot.term if self.snapshot else 0
        return self.log[index].term

    def save(
        self, hard_state: HardState | None, entries: list[Entry], snapshot: Snapshot | None
    ) -> None:
        if snapshot is not None:
            self.snapshot = snapshot
            self.log.clear()
        if entries:
            self.log = {
                index: entry for index, entry in self.log.items() if index < entries[0].index
            }
            self.log.update((entry.index, entry) for entry in entries)
        if hard_state is not None:
            self.hard_state = hard_state

    def compact(self, snapshot: Snapshot) -> None:
        if snapshot.index > self.offset:
            self.log = {index: entry for index, entry in self.log.items() if index > snapshot.index}
            self.snapshot = snapshot

    def recovered(self) -> RecoveredState:
        entries = tuple(self.log[index] for index in sorted(self.log))
        return RecoveredState(self.hard_state, entries, self.snapshot)


def draw_entries(
    data: st.DataObject, first: int, previous_term: int, term_max: int, count_max: int
) -> list[Entry]:
    count = data.draw(st.integers(0, count_max))
    terms = sorted(
        data.draw(
            st.lists(st.integers(max(previous_term, 1), term_max), min_size=count, max_size=count)
        )
    )
    kinds = data.draw(st.lists(st.sampled_from(EntryKind), min_size=count, max_size=count))
    sizes = data.draw(st.lists(st.integers(0, 160), min_size=count, max_size=count))
    return [
        Entry(term, first + offset, kind, bytes([(first + offset) % 251]) * size)
        for offset, (term, kind, size) in enumerate(zip(terms, kinds, sizes, strict=True))
    ]


def draw_vote(data: st.DataObject, current: HardState, term: int) -> str | None:
    if term == current.term and current.voted_for is not None:
        return current.voted_for  # one vote per term
    return data.draw(st.sampled_from([None, *sorted(VOTERS)]))


def draw_save(
    data: st.DataObject, model: LogModel
) -> tuple[HardState | None, list[Entry], Snapshot | None]:
    current = model.hard_state
    keep_hard_state = current.term >= 1 and data.draw(st.booleans())
    term = current.term if keep_hard_state else current.term + data.draw(st.integers(0, 2))
    term = max(term, 1)
    snapshot = None
    if data.draw(st.integers(0, 5)) == 0:  # now and then, the leader's snapshot
        index = data.draw(st.integers(max(model.offset, current.commit) + 1, model.last_index + 3))
        snapshot = Snapshot(index, data.draw(st.integers(1, term)), VOTERS, b"leader %d" % index)
        first, previous_term = index + 1, snapshot.term
    else:
        # Committed entries are never replaced (Raft 2014, 5.4), nor compacted ones.
        first = data.draw(st.integers(max(model.offset, current.commit) + 1, model.last_index + 1))
        previous_term = model.term_at(first - 1)
    entries = draw_entries(data, first, previous_term, term, count_max=6)
    if keep_hard_state:
        return None, entries, snapshot
    last = entries[-1].index if entries else (snapshot.index if snapshot else model.last_index)
    commit = data.draw(st.integers(current.commit, last))
    return HardState(term, draw_vote(data, current, term), commit), entries, snapshot


@PROPERTY_SETTINGS
@given(st.data())
def test_random_saves_compactions_and_reopens_match_a_model(data: st.DataObject) -> None:
    model = LogModel()
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        storage, recovered = RaftStorage.open(directory, SMALL_SEGMENTS)
        try:
            assert recovered == model.recovered()
            for _ in range(data.draw(st.integers(1, 25))):
                operation = data.draw(
                    st.sampled_from(["save", "save", "save", "compact", "reopen"])
                )
                if operation == "save":
                    hard_state, entries, snapshot = draw_save(data, model)
                    storage.save(hard_state, entries, snapshot)
                    model.save(hard_state, entries, snapshot)
                elif operation == "compact" and model.hard_state.commit > model.offset:
                    index = data.draw(st.integers(model.offset + 1, model.hard_state.commit))
                    size = data.draw(st.integers(0, 400))
                    snapshot = Snapshot(index, model.term_at(index), VOTERS, b"s" * size)
                    storage.compact(snapshot)
                    model.compact(snapshot)
                elif operation == "reopen":
                    storage.close()
                    storage, recovered = RaftStorage.open(directory, SMALL_SEGMENTS)
                    assert recovered == model.recovered()
                assert storage.first_index == model.offset + 1
                assert storage.last_index == model.last_index
                assert storage.hard_state == model.hard_state
            storage.close()
            storage, recovered = RaftStorage.open(directory, SMALL_SEGMENTS)
            assert recovered == model.recovered()
        finally:
            storage.close()
