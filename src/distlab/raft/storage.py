"""The durable log of one Raft node: its hard state, log entries and snapshot, on the project's
write-ahead log (``distlab.common.wal_file``) and a snapshot file.

What it implements
------------------
The persistent state of Ongaro & Ousterhout, "In Search of an Understandable Consensus
Algorithm", USENIX ATC 2014 ("Raft 2014"), Figure 2, "updated on stable storage before
responding to RPCs": ``currentTerm`` and ``votedFor`` (``HardState``, with the commit index
beside them as etcd's HardState keeps it) and ``log[]``, plus the snapshot that replaces a prefix
of the log (Raft 2014, section 7; Ongaro's thesis, "Consensus: Bridging Theory and Practice",
Stanford 2014, section 5.1), whether the application took it (``compact``) or the leader sent it
(``save``; InstallSnapshot). ``save`` is step 1 of the Ready recipe in ``distlab.raft.core``:
``save(ready.hard_state, ready.entries, ready.snapshot)`` returns once all three are on disk,
with one fsync; ``save(..., sync=False)`` several times, then one ``sync()``, is a group commit
(``distlab.raft.writer``). ``open`` gives back what a ``RaftCore`` restarts from.

On disk::

    <directory>/wal/                     the write-ahead log: 00000000000000000001.wal, ...
    <directory>/snapshot-<index>.snap    the application's newest snapshot (20-digit index)

Records
-------
A *batch* is what one ``save`` or one ``compact`` writes, and recovery applies a batch whole or
not at all. Its body is a list of items, each a one-byte type and its fields, in this order and
each at most once (little endian; "bytes" are length-prefixed by the field before them)::

    HARD_STATE     1  term u64, commit u64, voted_for length u16 (0: none), voted_for UTF-8
    SNAPSHOT       2  index u64, term u64, voters length u32, data length u32, voters, data
    SNAPSHOT_MARK  3  index u64, term u64, file checksum u32, replay_from u64
    ENTRIES        4  count u32, then per entry: term u64, index u64, kind u8, length u32, data

SNAPSHOT is a leader's snapshot, carried whole in the log so that ``save`` stays one fsync;
SNAPSHOT_MARK commits the application's snapshot, written to its file first; voters are
``encode_config``'s bytes. A batch goes into one WAL record, or, when its body is larger than
``FRAGMENT_BODY_BYTES_MAX``, into several, marked as LevelDB marks the pieces of a record
(``doc/log_format.md``: FULL, FIRST, MIDDLE, LAST). Each WAL record's payload is a format
version byte, the fragment kind byte, then the piece. The WAL frames and checksums every record
(``distlab.common.wal``), so a piece that decodes badly was written by something else, not torn.

Writing
-------
``save(hard_state, entries, snapshot)``:

1. Check the limits, and that the batch continues the stored log: a snapshot newer than the
   stored one; entries contiguous, with terms that never decrease, starting at most one past the
   last stored index and after the snapshot (an earlier start replaces the stored suffix from
   there: the conflict truncation of Raft 2014, 5.3); currentTerm never going back; votedFor not
   changing within a term (one vote per term, 5.2); no term above currentTerm; commit <= the last
   index. A violation raises ValueError and writes nothing: a batch that recovery would refuse
   would keep the node from ever restarting.
2. Write the batch's records, then fsync once (``sync``) when the fsync policy is ALWAYS (the
   other policies: as the policy says). A batch with a snapshot also holds the hard state, even
   an unchanged one, because recovery may start reading at that batch.
3. Update the copy of the stored state kept in memory.

``compact(snapshot)``, the application's snapshot at ``snapshot.index`` (<= commit):

1. Write ``snapshot-<index>.snap``: to a ``.tmp`` file, fsync, rename, fsync the directory.
2. Append a batch [HARD_STATE (the current one), SNAPSHOT_MARK] and fsync it, whatever the fsync
   policy: this is the commit point, because step 3 deletes what only this batch makes redundant.
   A snapshot file without its mark is ignored (and deleted) by recovery.
3. Delete the WAL segments wholly before ``replay_from`` (``delete_through``), then the older
   snapshot files.

The entries after the snapshot are not rewritten: they stay in the batches that wrote them, and
``replay_from`` is the WAL sequence of the batch holding entry index + 1 (0 when no entry follows
the snapshot: the mark's own batch). Nothing before it is needed for a restart: the batch that
holds the current entry i + 1 is never older than the one holding entry i (rewriting entry i
truncates everything after it), so earlier batches hold only entries the snapshot covers, hard
states older than the one the mark's batch repeats, and older snapshots.

Recovery (``RaftStorage.open``)
-------------------------------
1. Delete ``.tmp`` snapshot files (a compaction that never reached its rename).
2. Open the WAL from its oldest segment: ``after_sequence`` is that segment's first sequence
   minus one, since compactions delete the head of the log.
3. Reassemble the batches. A FIRST without its LAST is dropped: a crash cut that ``save`` short,
   so it was never acknowledged. MIDDLE and LAST pieces before any FIRST or FULL are the end of a
   batch whose head a compaction deleted, and are skipped (only if the log's head was deleted).
4. The *base* is the newest batch holding a snapshot. For a leader's SNAPSHOT, replay starts at
   the base; for a SNAPSHOT_MARK, the file must exist and match the mark's checksum, index and
   term, and replay starts at ``replay_from``. With no base, the log's head must be intact.
5. Replay in order, with the checks of ``save`` step 1: the last hard state wins; ENTRIES whose
   first index is <= the last index truncate the suffix first; a leader's SNAPSHOT drops the whole
   log; the base's mark drops the entries up to its index. Replay from ``replay_from`` starts in
   the middle of the log, so until the base the first entries may start anywhere up to index + 1
   and checks that need the hard state wait until one is read; older marks on the way are skipped.
6. Check the result: contiguous indexes from snapshot.index + 1, terms never decreasing from the
   snapshot's, no term above currentTerm, commit <= last index. A violation, an unreadable batch,
   a missing or damaged snapshot file, or a head deleted past the replay point raises
   ``RaftStorageCorruptError``: it is damage or a bug, and guessing could forget a vote.
7. Delete the snapshot files other than the base's.

What it leaves out
------------------
* Reading entries back from disk: the log after the snapshot is kept in memory, as the core keeps
  it (etcd's raft reads its MemoryStorage, not the WAL). Restart reads the whole retained WAL.
* An older snapshot kept as a fallback (the kvstore keeps one): a damaged snapshot file is a
  refusal, and the node is rebuilt from a peer.
* Checking Raft's rules beyond a well-formed log: it does not know whether a truncated entry was
  committed, or whether a vote was granted rightly.
* Snapshots in chunks, asynchronous writes (etcd's AsyncStorageWrites), preallocated segments.
"""

from __future__ import annotations

import enum
import os
import re
import struct
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from distlab.common.wal import Record
from distlab.common.wal_file import FsyncPolicy, WalClosedError, WalOptions, WriteAheadLog
from distlab.raft.core import Entry, EntryKind, HardState, Snapshot, decode_config, encode_config

# --- Limits -------------------------------------------------------------------------------------

# An entry is one command in one AppendRequest. The largest distlab proposes is a key-value write
# (a value of at most VALUE_BYTES_MAX_CEILING, 8 MiB, plus its key and framing); 16 MiB is the
# WAL's own record limit, so one figure bounds a single write across the storage stack.
ENTRY_DATA_BYTES_MAX = 16 * 1024 * 1024
# Entries in one save, i.e. in one Ready: with the core's defaults a follower holds at most
# 64 appends in flight x 256 entries = 16,384 new entries, a leader at most 8,192 uncommitted
# ones. Four times that bounds the objects one batch makes recovery build.
ENTRIES_PER_SAVE_MAX = 65_536
# The core keeps its snapshot in memory and sends it to a lagging follower as one message, and a
# follower writes it into its WAL as one batch; 256 MiB keeps that well inside a node's memory.
SNAPSHOT_DATA_BYTES_MAX = 256 * 1024 * 1024
# encode_config of the voters: a Raft cluster has a handful (3 to 7); 64 KiB is thousands of ids.
VOTERS_BYTES_MAX = 64 * 1024
# votedFor is a node id such as "n1" or "host:port"; 255 bytes is a DNS name's limit.
NODE_ID_BYTES_MAX = 255
# One batch (one save) encoded, which is also what recovery reassembles from fragments at once.
# It must hold the largest snapshot plus a full Ready; 1 GiB is a WAL segment's own upper bound.
BATCH_BYTES_MAX = 1024 * 1024 * 1024
# A batch larger than this is split into several WAL records. Each record is one os.write and,
# in recovery, one allocation; 1 MiB keeps both small and wastes at most that much at the end of
# a segment (a record is never split across segments), against 64 MiB segments by default.
FRAGMENT_BODY_BYTES_MAX = 1024 * 1024
# The file holds the snapshot and its voters plus a fixed header and trailer.
SNAPSHOT_FILE_BYTES_MAX = SNAPSHOT_DATA_BYTES_MAX + VOTERS_BYTES_MAX + 1024

FORMAT_VERSION = 1
U64_MAX = 2**64 - 1

WAL_DIRECTORY_NAME = "wal"
# The WAL's defaults: FsyncPolicy.ALWAYS, as Raft needs (frozen, so one shared value is safe).
DEFAULT_WAL_OPTIONS = WalOptions()
SNAPSHOT_SUFFIX = ".snap"
TEMPORARY_SUFFIX = ".tmp"
_SNAPSHOT_NAME = re.compile(r"^snapshot-([0-9]{20})\.snap$")
_TEMPORARY_SNAPSHOT_NAME = re.compile(r"^snapshot-([0-9]{20})\.snap\.tmp$")
# As wal_file names its segments: 20 digits, the segment's first sequence.
_SEGMENT_NAME = re.compile(r"^([0-9]{20})\.wal$")


def snapshot_file_name(index: int) -> str:
    return f"snapshot-{index:020d}{SNAPSHOT_SUFFIX}"


# --- Public types -------------------------------------------------------------------------------


class RaftStorageCorruptError(Exception):
    """Recovery found stored state that ``save`` and ``compact`` never write: refused, not
    repaired (recovery step 6)."""


@dataclass(frozen=True, slots=True)
class RecoveredState:
    """What ``RaftCore(config, voters, rng, hard_state=..., entries=..., snapshot=...)`` takes."""

    hard_state: HardState
    entries: tuple[Entry, ...]  # the log after the snapshot, in index order, contiguous
    snapshot: Snapshot | None


# --- Records ------------------------------------------------------------------------------------


class _Fragment(enum.IntEnum):
    FULL = 1
    FIRST = 2
    MIDDLE = 3
    LAST = 4


class _Item(enum.IntEnum):
    HARD_STATE = 1
    SNAPSHOT = 2
    SNAPSHOT_MARK = 3
    ENTRIES = 4


_FRAGMENT_KINDS = frozenset(int(kind) for kind in _Fragment)
_ITEM_TYPES = frozenset(int(item) for item in _Item)

_ENTRY_KIND_CODES: dict[EntryKind, int] = {
    EntryKind.NORMAL: 1,
    EntryKind.CONFIG: 2,
    EntryKind.NOOP: 3,
}
_ENTRY_KINDS = {code: kind for kind, code in _ENTRY_KIND_CODES.items()}

_FRAGMENT_HEADER = struct.Struct("<BB")  # format version, fragment kind
_ITEM_TYPE = struct.Struct("<B")
_HARD_STATE = struct.Struct("<QQH")  # term, commit, voted_for length
_SNAPSHOT = struct.Struct("<QQII")  # index, term, voters length, data length
_SNAPSHOT_MARK = struct.Struct("<QQIQ")  # index, term, file checksum, replay_from
_ENTRIES = struct.Struct("<I")  # count
_ENTRY = struct.Struct("<QQBI")  # term, index, kind, data length
# The snapshot file: header, voters, data, then CRC-32 of everything before it.
_FILE_MAGIC = b"RSNP"
_FILE_HEADER = struct.Struct("<4sBQQII")  # magic, version, index, term, voters len, data len
_FILE_TRAILER = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class _SnapshotMark:
    index: int
    term: int
    checksum: int  # the snapshot file's CRC-32 trailer
    replay_from: int  # the WAL sequence recovery replays from; 0: the mark's own batch


@dataclass(frozen=True, slots=True)
class _Batch:
    hard_state: HardState | None
    snapshot: Snapshot | None  # a leader's, carried whole
    mark: _SnapshotMark | None  # the application's, in its file
    entries: tuple[Entry, ...]


class _UndecodableError(Exception):
    """A record or file that passed its checksum but is not in this format."""


def _encode_batch(batch: _Batch) -> bytes:
    parts: list[bytes] = []
    if batch.hard_state is not None:
        hard_state = batch.hard_state
        voted_for = (hard_state.voted_for or "").encode()
        parts += [
            _ITEM_TYPE.pack(_Item.HARD_STATE),
            _HARD_STATE.pack(hard_state.term, hard_state.commit, len(voted_for)),
            voted_for,
        ]
    if batch.snapshot is not None:
        snapshot = batch.snapshot
        voters = encode_config(snapshot.voters)
        parts += [
            _ITEM_TYPE.pack(_Item.SNAPSHOT),
            _SNAPSHOT.pack(snapshot.index, snapshot.term, len(voters), len(snapshot.data)),
            voters,
            snapshot.data,
        ]
    if batch.mark is not None:
        mark = batch.mark
        parts += [
            _ITEM_TYPE.pack(_Item.SNAPSHOT_MARK),
            _SNAPSHOT_MARK.pack(mark.index, mark.term, mark.checksum, mark.replay_from),
        ]
    if batch.entries:
        parts += [_ITEM_TYPE.pack(_Item.ENTRIES), _ENTRIES.pack(len(batch.entries))]
        for entry in batch.entries:
            code = _ENTRY_KIND_CODES[entry.kind]
            parts += [_ENTRY.pack(entry.term, entry.index, code, len(entry.data)), entry.data]
    return b"".join(parts)


class _Reader:
    """A cursor over a batch body; every short read is an _UndecodableError."""

    __slots__ = ("_buffer", "_offset")

    def __init__(self, buffer: bytes) -> None:
        self._buffer = buffer
        self._offset = 0

    def at_end(self) -> bool:
        return self._offset == len(self._buffer)

    def unpack(self, layout: struct.Struct) -> tuple[Any, ...]:
        if self._offset + layout.size > len(self._buffer):
            raise _UndecodableError(f"truncated at byte {self._offset}")
        fields = layout.unpack_from(self._buffer, self._offset)
        self._offset += layout.size
        return fields

    def take(self, length: int, limit: int, what: str) -> bytes:
        if length > limit:
            raise _UndecodableError(f"{what} is {length} bytes; the limit is {limit}")
        if self._offset + length > len(self._buffer):
            raise _UndecodableError(f"{what} truncated at byte {self._offset}")
        data = self._buffer[self._offset : self._offset + length]
        self._offset += length
        return data


def _decode_batch(body: bytes) -> _Batch:
    reader = _Reader(body)
    hard_state: HardState | None = None
    snapshot: Snapshot | None = None
    mark: _SnapshotMark | None = None
    entries: tuple[Entry, ...] = ()
    previous_type = 0
    while not reader.at_end():
        (item_type,) = reader.unpack(_ITEM_TYPE)
        if item_type not in _ITEM_TYPES or item_type <= previous_type:
            raise _UndecodableError(f"item type {item_type} after {previous_type}")
        previous_type = item_type
        if item_type == _Item.HARD_STATE:
            hard_state = _decode_hard_state(reader)
        elif item_type == _Item.SNAPSHOT:
            snapshot = _decode_snapshot(reader)
        elif item_type == _Item.SNAPSHOT_MARK:
            mark = _SnapshotMark(*reader.unpack(_SNAPSHOT_MARK))
        else:
            entries = _decode_entries(reader)
    if previous_type == 0:
        raise _UndecodableError("an empty batch")
    if mark is not None and (snapshot is not None or entries or hard_state is None):
        raise _UndecodableError("a snapshot mark's batch holds exactly a hard state and the mark")
    return _Batch(hard_state, snapshot, mark, entries)


def _decode_hard_state(reader: _Reader) -> HardState:
    term, commit, voted_for_bytes = reader.unpack(_HARD_STATE)
    voted_for = reader.take(voted_for_bytes, NODE_ID_BYTES_MAX, "voted_for")
    try:
        return HardState(term, voted_for.decode() if voted_for else None, commit)
    except UnicodeDecodeError as error:
        raise _UndecodableError(f"voted_for is not UTF-8: {error}") from error


def _decode_snapshot(reader: _Reader) -> Snapshot:
    index, term, voters_bytes, data_bytes = reader.unpack(_SNAPSHOT)
    voters = reader.take(voters_bytes, VOTERS_BYTES_MAX, "voters")
    data = reader.take(data_bytes, SNAPSHOT_DATA_BYTES_MAX, "snapshot data")
    return Snapshot(index, term, _decode_voters(voters), data)


def _decode_voters(voters: bytes) -> frozenset[str]:
    try:
        return decode_config(voters)
    except UnicodeDecodeError as error:
        raise _UndecodableError(f"voters are not UTF-8: {error}") from error


def _decode_entries(reader: _Reader) -> tuple[Entry, ...]:
    (count,) = reader.unpack(_ENTRIES)
    if not 1 <= count <= ENTRIES_PER_SAVE_MAX:
        raise _UndecodableError(f"{count} entries; the limit is {ENTRIES_PER_SAVE_MAX}")
    entries = []
    for _ in range(count):
        term, index, code, data_bytes = reader.unpack(_ENTRY)
        kind = _ENTRY_KINDS.get(code)
        if kind is None:
            raise _UndecodableError(f"unknown entry kind {code}")
        data = reader.take(data_bytes, ENTRY_DATA_BYTES_MAX, "entry data")
        entries.append(Entry(term, index, kind, data))
    return tuple(entries)


# --- The snapshot file --------------------------------------------------------------------------


def _encode_snapshot_file(snapshot: Snapshot) -> tuple[list[bytes], int]:
    """The file's pieces (written one after the other, never joined: a snapshot may be large)
    and its checksum, which the mark repeats."""
    voters = encode_config(snapshot.voters)
    header = _FILE_HEADER.pack(
        _FILE_MAGIC, FORMAT_VERSION, snapshot.index, snapshot.term, len(voters), len(snapshot.data)
    )
    checksum = zlib.crc32(snapshot.data, zlib.crc32(voters, zlib.crc32(header)))
    return [header, voters, snapshot.data, _FILE_TRAILER.pack(checksum)], checksum


def _read_snapshot_file(path: Path) -> tuple[Snapshot, int]:
    """The snapshot in ``path`` and its checksum; _UndecodableError if it does not verify."""
    size = path.stat().st_size
    if size > SNAPSHOT_FILE_BYTES_MAX:
        raise _UndecodableError(f"{size} bytes, more than any snapshot file this module writes")
    content = path.read_bytes()
    if len(content) < _FILE_HEADER.size + _FILE_TRAILER.size:
        raise _UndecodableError(f"{len(content)} bytes, shorter than a header and a trailer")
    body_end = len(content) - _FILE_TRAILER.size
    (checksum,) = _FILE_TRAILER.unpack_from(content, body_end)
    if zlib.crc32(memoryview(content)[:body_end]) != checksum:
        raise _UndecodableError("checksum mismatch")
    magic, version, index, term, voters_bytes, data_bytes = _FILE_HEADER.unpack_from(content)
    if magic != _FILE_MAGIC or version != FORMAT_VERSION:
        raise _UndecodableError(f"magic {magic!r}, version {version}: not this format")
    if _FILE_HEADER.size + voters_bytes + data_bytes != body_end:
        raise _UndecodableError("the lengths in the header do not add up to the file's size")
    voters_end = _FILE_HEADER.size + voters_bytes
    voters = _decode_voters(content[_FILE_HEADER.size : voters_end])
    return Snapshot(index, term, voters, content[voters_end:body_end]), checksum


def _write_snapshot_file(directory: Path, snapshot: Snapshot) -> tuple[Path, int]:
    """Compaction step 1: write a temporary file, fsync it, rename it, fsync the directory."""
    path = directory / snapshot_file_name(snapshot.index)
    temporary = path.with_name(path.name + TEMPORARY_SUFFIX)
    pieces, checksum = _encode_snapshot_file(snapshot)
    # A fresh file, never one a failed fsync may have left with dropped pages (fsyncgate).
    temporary.unlink(missing_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        for piece in pieces:
            _write_all(descriptor, piece)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    os.replace(temporary, path)
    _fsync_directory(directory)
    return path, checksum


def _write_all(descriptor: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(descriptor, view)
        view = view[written:]


def _fsync_directory(directory: Path) -> None:
    """Make created, renamed and deleted names durable: an fsync of a file does not cover its
    name in the directory."""
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _make_directory(directory: Path) -> None:
    """Create ``directory`` and its missing parents, making each new name durable."""
    if directory.is_dir():
        return
    _make_directory(directory.parent)
    directory.mkdir()
    _fsync_directory(directory.parent)


def _delete_files(directory: Path, pattern: re.Pattern[str], keep: Path | None) -> None:
    doomed = [p for p in directory.iterdir() if pattern.match(p.name) and p != keep]
    for path in doomed:
        path.unlink()
    if doomed:
        _fsync_directory(directory)


# --- The stored state in memory, and the rules a batch must follow ------------------------------


class _InconsistentError(Exception):
    """A batch that does not continue the stored log (ValueError in save, corruption in open)."""


@dataclass(slots=True)
class _Log:
    """The stored state: what recovery rebuilds and what save and compact keep up to date."""

    hard_state: HardState | None  # None only while recovery has not read one yet
    snapshot: Snapshot | None
    offset: int  # the last index the snapshot covers (0: none)
    offset_term: int | None  # None only while recovery starts in the middle of the log
    # Recovery started at a mark's replay_from: the first entries (or snapshot) replayed set the
    # offset, because what came before them in the log was deleted.
    headless: bool
    entries: list[Entry] = field(default_factory=list)  # entries[i].index == offset + 1 + i
    batches: list[int] = field(default_factory=list)  # per entry, the sequence of its batch

    @property
    def last_index(self) -> int:
        return self.offset + len(self.entries)

    def term_at(self, index: int) -> int | None:
        if index == self.offset:
            return self.offset_term
        if self.offset < index <= self.last_index:
            return self.entries[index - self.offset - 1].term
        return None


def _check_batch(log: _Log, batch: _Batch) -> None:
    """Save step 1 (the mark of a batch is checked apart). Raises _InconsistentError."""
    hard_state = log.hard_state
    if batch.hard_state is not None:
        if hard_state is not None:
            _check_hard_state_succession(hard_state, batch.hard_state)
        hard_state = batch.hard_state
    offset, last, headless = log.offset, log.last_index, log.headless
    newest_term = 0
    if batch.snapshot is not None:
        if not headless and batch.snapshot.index <= offset:
            raise _InconsistentError(
                f"a snapshot at index {batch.snapshot.index} does not follow the stored "
                f"snapshot at index {offset}"
            )
        offset, last, headless = batch.snapshot.index, batch.snapshot.index, False
        newest_term = batch.snapshot.term
    if batch.entries:
        first = batch.entries[0].index
        if headless:
            previous_term = None
            offset, last, headless = first - 1, first - 1, False
        elif not offset < first <= last + 1:
            raise _InconsistentError(
                f"entries from index {first} do not continue the stored log, which holds "
                f"({offset}, {last}]: they must start after the snapshot and at most one past "
                "the last index"
            )
        elif batch.snapshot is not None:
            previous_term = batch.snapshot.term
        else:
            previous_term = log.term_at(first - 1)
        _check_run(batch.entries, previous_term)
        last = batch.entries[-1].index
        newest_term = batch.entries[-1].term
    if hard_state is None:
        return  # recovery has not read a hard state yet: the final check covers these
    if newest_term > hard_state.term:
        raise _InconsistentError(
            f"term {newest_term} in the log is past currentTerm {hard_state.term}"
        )
    if not headless and hard_state.commit > last:
        raise _InconsistentError(f"commit {hard_state.commit} is past the last index {last}")


def _check_hard_state_succession(previous: HardState, current: HardState) -> None:
    if current.term < previous.term:
        raise _InconsistentError(
            f"currentTerm went back from {previous.term} to {current.term} (Raft 2014, 5.1: "
            "terms increase monotonically)"
        )
    if (
        current.term == previous.term
        and previous.voted_for is not None
        and current.voted_for != previous.voted_for
    ):
        raise _InconsistentError(
            f"votedFor changed from {previous.voted_for!r} to {current.voted_for!r} within term "
            f"{current.term} (Raft 2014, 5.2: one vote per term)"
        )


def _check_run(entries: Sequence[Entry], previous_term: int | None) -> None:
    """Contiguous indexes from >= 1, terms >= 1 that never decrease from ``previous_term``."""
    expected_index = max(entries[0].index, 1)
    term_floor = max(previous_term or 0, 1)
    for entry in entries:
        if entry.index != expected_index:
            raise _InconsistentError(f"entry index {entry.index} where {expected_index} belongs")
        if entry.term < term_floor:
            raise _InconsistentError(
                f"entry {entry.index} has term {entry.term}, below {term_floor} before it"
            )
        expected_index += 1
        term_floor = entry.term


def _apply_batch(log: _Log, batch: _Batch, sequence: int) -> None:
    """Apply a checked batch (not its mark); ``sequence`` is where the batch starts in the WAL."""
    if batch.hard_state is not None:
        log.hard_state = batch.hard_state
    if batch.snapshot is not None:
        log.snapshot = batch.snapshot
        log.offset = batch.snapshot.index
        log.offset_term = batch.snapshot.term
        log.headless = False
        log.entries.clear()
        log.batches.clear()
    if batch.entries:
        first = batch.entries[0].index
        if log.headless:
            log.offset, log.offset_term, log.headless = first - 1, None, False
        cut = first - log.offset - 1  # Raft 2014, 5.3: drop the suffix from the first new index
        assert 0 <= cut <= len(log.entries)
        del log.entries[cut:]
        del log.batches[cut:]
        log.entries.extend(batch.entries)
        log.batches.extend([sequence] * len(batch.entries))


def _check_mark(log: _Log, mark: _SnapshotMark) -> None:
    """The base's mark, in recovery: it must fall inside the replayed log, on a matching term."""
    if log.headless:
        return  # replay started at the mark's own batch: no entry follows the snapshot
    if not log.offset <= mark.index <= log.last_index:
        raise _InconsistentError(
            f"the snapshot mark at index {mark.index} is outside the replayed log "
            f"({log.offset}, {log.last_index}]"
        )
    term = log.term_at(mark.index)
    if term is not None and term != mark.term:
        raise _InconsistentError(
            f"the snapshot mark at index {mark.index} has term {mark.term}, the log has {term}"
        )


def _apply_snapshot(log: _Log, snapshot: Snapshot) -> None:
    """Drop the entries the application's snapshot covers (compaction, or the base's mark)."""
    if log.headless:
        assert not log.entries
        log.headless = False
    else:
        drop = snapshot.index - log.offset
        assert 0 <= drop <= len(log.entries)
        del log.entries[:drop]
        del log.batches[:drop]
    log.snapshot = snapshot
    log.offset = snapshot.index
    log.offset_term = snapshot.term


def _check_recovered(log: _Log) -> None:
    """Recovery step 6, on the whole result, whatever the replay checked on the way."""
    if log.hard_state is None or log.headless or log.offset_term is None:
        raise _InconsistentError("replay ended without a hard state or a known start of the log")
    if log.entries:
        if log.entries[0].index != log.offset + 1:
            raise _InconsistentError(
                f"the log starts at index {log.entries[0].index}, not after the snapshot at "
                f"{log.offset}"
            )
        _check_run(log.entries, log.offset_term)
    newest_term = log.entries[-1].term if log.entries else log.offset_term
    if newest_term > log.hard_state.term:
        raise _InconsistentError(
            f"term {newest_term} in the log is past currentTerm {log.hard_state.term}"
        )
    if log.hard_state.commit > log.last_index:
        raise _InconsistentError(
            f"commit {log.hard_state.commit} is past the last index {log.last_index}"
        )


# --- Limits on what save and compact take (ValueError) -----------------------------------------


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")


def _check_hard_state_fields(hard_state: HardState) -> None:
    _check_range("hard_state.term", hard_state.term, 0, U64_MAX)
    _check_range("hard_state.commit", hard_state.commit, 0, U64_MAX)
    if hard_state.voted_for is not None:
        voted_for_bytes = len(hard_state.voted_for.encode())
        _check_range("hard_state.voted_for (UTF-8 bytes)", voted_for_bytes, 1, NODE_ID_BYTES_MAX)


def _check_entry_fields(entry: Entry) -> None:
    _check_range("entry.index", entry.index, 1, U64_MAX)
    _check_range("entry.term", entry.term, 1, U64_MAX)
    if entry.kind not in _ENTRY_KIND_CODES:
        raise ValueError(f"entry {entry.index}: unknown kind {entry.kind!r}")
    if len(entry.data) > ENTRY_DATA_BYTES_MAX:
        raise ValueError(
            f"entry {entry.index}: data is {len(entry.data)} bytes; the limit is "
            f"ENTRY_DATA_BYTES_MAX = {ENTRY_DATA_BYTES_MAX} bytes"
        )


def _check_snapshot_fields(snapshot: Snapshot) -> None:
    _check_range("snapshot.index", snapshot.index, 1, U64_MAX)
    _check_range("snapshot.term", snapshot.term, 1, U64_MAX)
    voters = encode_config(snapshot.voters)
    if len(voters) > VOTERS_BYTES_MAX:
        raise ValueError(
            f"snapshot voters take {len(voters)} bytes; the limit is {VOTERS_BYTES_MAX}"
        )
    if decode_config(voters) != snapshot.voters:
        raise ValueError(
            f"snapshot voters must be non-empty ids without commas: {sorted(snapshot.voters)}"
        )
    if len(snapshot.data) > SNAPSHOT_DATA_BYTES_MAX:
        raise ValueError(
            f"snapshot data is {len(snapshot.data)} bytes; the limit is "
            f"SNAPSHOT_DATA_BYTES_MAX = {SNAPSHOT_DATA_BYTES_MAX} bytes"
        )


# --- The storage --------------------------------------------------------------------------------


class RaftStorage:
    """The durable log of one Raft node. Create it with ``RaftStorage.open``. Thread-safe: calls
    run one at a time (``save`` and ``compact`` block on disk; call them from a worker thread)."""

    def __init__(self, directory: Path, wal: WriteAheadLog, log: _Log) -> None:
        # Private: ``open`` recovers the state and builds the storage around it.
        self._directory = directory
        self._wal = wal
        self._log = log
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def open(
        cls,
        directory: Path,
        wal_options: WalOptions = DEFAULT_WAL_OPTIONS,
    ) -> tuple[RaftStorage, RecoveredState]:
        """Recover the stored state in ``directory`` (created if missing) and open it for
        writing. See the module docstring for the rules; raises RaftStorageCorruptError (and the
        WAL's WalCorruptionError) rather than guess."""
        directory = Path(directory)
        _make_directory(directory)
        _delete_files(directory, _TEMPORARY_SNAPSHOT_NAME, keep=None)  # step 1
        wal_directory = directory / WAL_DIRECTORY_NAME
        head_sequence = _first_segment_sequence(wal_directory)
        wal, records = WriteAheadLog.open(  # step 2
            wal_directory, wal_options, after_sequence=head_sequence - 1
        )
        try:
            log, snapshot_path = _recover(directory, records, head_sequence)  # steps 3 to 6
            _delete_files(directory, _SNAPSHOT_NAME, keep=snapshot_path)  # step 7
        except BaseException:
            wal.close()
            raise
        assert log.hard_state is not None
        recovered = RecoveredState(log.hard_state, tuple(log.entries), log.snapshot)
        return cls(directory, wal, log), recovered

    # --- reading state ---

    @property
    def first_index(self) -> int:
        """The first index in the stored log: the snapshot's index + 1, or 1."""
        with self._lock:
            return self._log.offset + 1

    @property
    def last_index(self) -> int:
        """The last index stored: of the last entry, or of the snapshot if no entry follows."""
        with self._lock:
            return self._log.last_index

    @property
    def hard_state(self) -> HardState:
        with self._lock:
            assert self._log.hard_state is not None
            return self._log.hard_state

    @property
    def snapshot(self) -> Snapshot | None:
        with self._lock:
            return self._log.snapshot

    @property
    def fsync_count(self) -> int:
        """How many fsyncs the WAL made since ``open`` (snapshot files not counted)."""
        return self._wal.fsync_count

    # --- writing ---

    def save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None,
        *,
        sync: bool = True,
    ) -> None:
        """Step 1 of the Ready recipe: persist all three as one batch, with one fsync under
        FsyncPolicy.ALWAYS unless ``sync`` is False (``Ready.must_sync``: only a new commit
        index, which a crash may lose). ``snapshot`` replaces every stored entry; ``entries``
        starting at or before the last index replace the stored suffix from their first index.
        ValueError, with nothing written, for a batch over the limits or one that does not
        continue the log."""
        entries = tuple(entries)
        if hard_state is not None:
            _check_hard_state_fields(hard_state)
        if len(entries) > ENTRIES_PER_SAVE_MAX:
            raise ValueError(
                f"{len(entries)} entries in one save; the limit is "
                f"ENTRIES_PER_SAVE_MAX = {ENTRIES_PER_SAVE_MAX}"
            )
        for entry in entries:
            _check_entry_fields(entry)
        if snapshot is not None:
            _check_snapshot_fields(snapshot)
        if hard_state is None and not entries and snapshot is None:
            return
        with self._lock:
            self._check_open()
            if snapshot is not None and hard_state is None:
                # Recovery may start reading at this batch: it must hold the hard state.
                hard_state = self._log.hard_state
            batch = _Batch(hard_state, snapshot, None, entries)
            try:
                _check_batch(self._log, batch)
            except _InconsistentError as error:
                raise ValueError(f"refused to save: {error}") from None
            body = _encode_batch(batch)
            if len(body) > BATCH_BYTES_MAX:
                raise ValueError(
                    f"one save encodes to {len(body)} bytes; the limit is "
                    f"BATCH_BYTES_MAX = {BATCH_BYTES_MAX} bytes"
                )
            sequence = self._write_batch(body)
            if sync and self._wal.options.fsync_policy is FsyncPolicy.ALWAYS:
                self._wal.sync()
            _apply_batch(self._log, batch, sequence)

    def sync(self) -> None:
        """Make every batch saved so far durable, those saved with ``sync=False`` included: the
        fsync of a group of saves (group commit). Under a policy other than ALWAYS, a no-op: the
        policy decides when the WAL syncs."""
        with self._lock:
            self._check_open()
            if self._wal.options.fsync_policy is FsyncPolicy.ALWAYS:
                self._wal.sync()

    def compact(self, snapshot: Snapshot) -> None:
        """The application's snapshot: store it (a file, then its mark) and delete the WAL
        segments and snapshot files it makes redundant. A no-op if the stored snapshot is already
        at or past ``snapshot.index``. ValueError if the snapshot is over the limits, past the
        commit index or the last index, or disagrees with the stored term at its index."""
        _check_snapshot_fields(snapshot)
        with self._lock:
            self._check_open()
            log = self._log
            if snapshot.index <= log.offset:
                return
            hard_state = log.hard_state
            assert hard_state is not None
            self._check_compaction(snapshot, hard_state)
            if snapshot.index < log.last_index:
                replay_from = log.batches[snapshot.index - log.offset]  # entry index + 1's batch
                assert replay_from == min(log.batches[snapshot.index - log.offset :])
            else:
                replay_from = 0
            path, checksum = _write_snapshot_file(self._directory, snapshot)  # step 1
            mark = _SnapshotMark(snapshot.index, snapshot.term, checksum, replay_from)
            sequence = self._write_batch(_encode_batch(_Batch(hard_state, None, mark, ())))
            self._wal.sync()  # step 2, the commit point
            _apply_snapshot(log, snapshot)
            self._wal.delete_through((replay_from or sequence) - 1)  # step 3
            _delete_files(self._directory, _SNAPSHOT_NAME, keep=path)

    def close(self) -> None:
        """Sync and close the WAL. Idempotent; later saves raise WalClosedError."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._wal.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exception_type: type[BaseException] | None,
        exception: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # --- internals ---

    def _check_open(self) -> None:
        if self._closed:
            raise WalClosedError(f"the Raft storage in {self._directory} is closed")

    def _check_compaction(self, snapshot: Snapshot, hard_state: HardState) -> None:
        log = self._log
        if snapshot.index > hard_state.commit:
            raise ValueError(
                f"cannot compact to {snapshot.index}: only {hard_state.commit} is committed"
            )
        if snapshot.index > log.last_index:
            raise ValueError(
                f"cannot compact to {snapshot.index}: the log ends at {log.last_index}"
            )
        stored_term = log.term_at(snapshot.index)
        if stored_term != snapshot.term:
            raise ValueError(
                f"the snapshot at index {snapshot.index} has term {snapshot.term}, but the "
                f"stored entry there has term {stored_term}"
            )

    def _write_batch(self, body: bytes) -> int:
        """Write the batch's records (not synced); return the sequence of the first."""
        assert body
        step = FRAGMENT_BODY_BYTES_MAX
        count = -(-len(body) // step)
        first_sequence = 0
        for number in range(count):
            if count == 1:
                kind = _Fragment.FULL
            elif number == 0:
                kind = _Fragment.FIRST
            elif number == count - 1:
                kind = _Fragment.LAST
            else:
                kind = _Fragment.MIDDLE
            piece = body[number * step : (number + 1) * step]
            sequence = self._wal.write(_FRAGMENT_HEADER.pack(FORMAT_VERSION, kind) + piece)
            if number == 0:
                first_sequence = sequence
            # This storage is the WAL's only writer and holds its lock, so no record of anyone
            # else's can come between the pieces.
            assert sequence == first_sequence + number
        return first_sequence


# --- Recovery -----------------------------------------------------------------------------------


def _first_segment_sequence(wal_directory: Path) -> int:
    """The first sequence of the oldest segment (1 for a new log): compaction deletes the head,
    so the WAL must be told where the log now starts (recovery step 2)."""
    if not wal_directory.is_dir():
        return 1
    sequences = [
        int(match.group(1))
        for path in wal_directory.iterdir()
        if (match := _SEGMENT_NAME.match(path.name)) is not None
    ]
    # A segment named 0 is not the WAL's; let the WAL refuse it.
    return max(min(sequences, default=1), 1)


def _recover(
    directory: Path, records: list[Record], head_sequence: int
) -> tuple[_Log, Path | None]:
    """Recovery steps 3 to 6: the stored state, and the snapshot file it rests on."""
    head_deleted = head_sequence > 1
    batches = _assemble_batches(records, head_deleted)
    base = next(
        (
            position
            for position in range(len(batches) - 1, -1, -1)
            if batches[position][1].snapshot is not None or batches[position][1].mark is not None
        ),
        None,
    )
    if base is None:
        if head_deleted:
            raise RaftStorageCorruptError(
                f"{directory}: the WAL starts at sequence {head_sequence}, so a compaction "
                "deleted its head, but no batch holding a snapshot remains"
            )
        if not batches and any(_SNAPSHOT_NAME.match(p.name) for p in directory.iterdir()):
            raise RaftStorageCorruptError(
                f"{directory}: snapshot files but an empty WAL: the log they rest on is gone"
            )
        log = _Log(HardState(), None, 0, 0, headless=False)
        _replay(log, batches, base=None, base_snapshot=None)
        return log, None
    base_sequence, base_batch = batches[base]
    snapshot_path = None
    base_snapshot = None
    replay_from = base_sequence
    if base_batch.mark is not None:
        base_snapshot, snapshot_path = _load_snapshot(directory, base_batch.mark, base_sequence)
        replay_from = base_batch.mark.replay_from or base_sequence
    start = next((i for i, (sequence, _) in enumerate(batches) if sequence == replay_from), None)
    if start is None or start > base:
        raise RaftStorageCorruptError(
            f"{directory}: the snapshot batch at sequence {base_sequence} replays from sequence "
            f"{replay_from}, which does not start a batch of the WAL (it starts at "
            f"{head_sequence}): the head was deleted too far, or the mark is damaged"
        )
    log = _Log(None, None, 0, None, headless=True)
    _replay(log, batches[start:], base=base - start, base_snapshot=base_snapshot)
    return log, snapshot_path


def _assemble_batches(records: list[Record], head_deleted: bool) -> list[tuple[int, _Batch]]:
    """Recovery step 3: (first sequence, batch) for every complete batch, in log order."""
    batches: list[tuple[int, _Batch]] = []
    pieces: list[bytes] = []  # of the batch being reassembled; empty: none
    pieces_bytes = 0
    first_sequence = 0
    seen_a_start = False
    for record in records:
        if len(record.payload) < _FRAGMENT_HEADER.size:
            raise _corrupt(record.sequence, "a record too short for its header")
        version, kind = _FRAGMENT_HEADER.unpack_from(record.payload)
        piece = record.payload[_FRAGMENT_HEADER.size :]
        if version != FORMAT_VERSION or kind not in _FRAGMENT_KINDS:
            raise _corrupt(record.sequence, f"format version {version}, fragment kind {kind}")
        if kind in (_Fragment.FULL, _Fragment.FIRST):
            # Pieces still held belong to a batch a crash cut short: never acknowledged, dropped.
            pieces, pieces_bytes, first_sequence = [], 0, record.sequence
            seen_a_start = True
        elif not pieces:
            if seen_a_start or not head_deleted:
                raise _corrupt(record.sequence, "the middle or end of a batch that never began")
            continue  # the tail of a batch whose head a compaction deleted
        pieces.append(piece)
        pieces_bytes += len(piece)
        if pieces_bytes > BATCH_BYTES_MAX:
            raise _corrupt(record.sequence, f"a batch past BATCH_BYTES_MAX = {BATCH_BYTES_MAX}")
        if kind in (_Fragment.FULL, _Fragment.LAST):
            try:
                batch = _decode_batch(b"".join(pieces))
            except _UndecodableError as error:
                raise _corrupt(first_sequence, f"an undecodable batch: {error}") from error
            batches.append((first_sequence, batch))
            pieces, pieces_bytes = [], 0
    return batches


def _load_snapshot(directory: Path, mark: _SnapshotMark, sequence: int) -> tuple[Snapshot, Path]:
    path = directory / snapshot_file_name(mark.index)
    try:
        snapshot, checksum = _read_snapshot_file(path)
    except FileNotFoundError:
        raise _corrupt(sequence, f"the snapshot mark points at {path}, which is missing") from None
    except _UndecodableError as error:
        raise _corrupt(sequence, f"the snapshot file {path} is damaged: {error}") from error
    if (snapshot.index, snapshot.term, checksum) != (mark.index, mark.term, mark.checksum):
        raise _corrupt(
            sequence,
            f"the snapshot file {path} holds index {snapshot.index}, term {snapshot.term}, "
            f"checksum {checksum:#010x}; the mark names {mark.index}, {mark.term}, "
            f"{mark.checksum:#010x}",
        )
    return snapshot, path


def _replay(
    log: _Log,
    batches: list[tuple[int, _Batch]],
    *,
    base: int | None,
    base_snapshot: Snapshot | None,
) -> None:
    """Recovery steps 5 and 6. ``base`` is the position of the base in ``batches``; only its
    mark (if it has one, with ``base_snapshot`` from the file) is applied, older marks skipped."""
    for position, (sequence, batch) in enumerate(batches):
        try:
            _check_batch(log, batch)
            _apply_batch(log, batch, sequence)
            if position == base and batch.mark is not None:
                assert base_snapshot is not None
                _check_mark(log, batch.mark)
                _apply_snapshot(log, base_snapshot)
        except _InconsistentError as error:
            raise _corrupt(sequence, str(error)) from error
    try:
        _check_recovered(log)
    except _InconsistentError as error:
        raise RaftStorageCorruptError(f"the recovered log is not well formed: {error}") from error


def _corrupt(sequence: int, what: str) -> RaftStorageCorruptError:
    return RaftStorageCorruptError(f"WAL record {sequence}: {what}")
