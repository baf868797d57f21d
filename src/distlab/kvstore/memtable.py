"""The memtable of the single-node storage engine, its mutation codec and its snapshot codec.

What it implements
------------------
* The **memtable** of the LSM-tree (O'Neil, Cheng, Gawlick, O'Neil, "The Log-Structured Merge-Tree
  (LSM-Tree)", Acta Informatica 1996): an ordered in-memory map that absorbs every write, backed by
  a commit log for durability. Ours maps key to ``Entry`` in a dict, with the keys kept in order
  in a ``sortedcontainers.SortedList`` (together, the two halves of a ``SortedDict``).
* **Sequence numbers**, as LevelDB and RocksDB tag every memtable entry with the sequence number of
  the write that made it. The WAL assigns the sequence; an entry remembers the sequence of the
  write that last decided it, and ``Memtable.apply`` accepts a write only when its sequence is
  newer. Two properties follow, both needed by the engine: replaying a record twice changes nothing
  (idempotent redo), and applying a set of writes in any order ends in the state of applying them
  in sequence order (so concurrent writers need no ordering among themselves).
* **Tombstones**: a delete is an entry whose value is ``None``. It shadows any older write and is
  kept (in the memtable and in snapshots) until ``collect_tombstones`` drops it; the replicated
  store above needs tombstones until its GC grace period has passed, or an old replica could
  resurrect the value through anti-entropy.
* The **snapshot** written by a checkpoint: Bigtable 2006, section 5.3 ("Tablet Serving") keeps
  recent writes in a memtable and a commit log, and a *minor compaction* writes the memtable out so
  that "the amount of data that has to be read from the commit log during recovery" shrinks. Our
  checkpoint is that minor compaction, except that it writes the *whole* data set, not just the
  recent part (see "What it leaves out").

Everything here is pure (standard library, ``sortedcontainers`` and the pure WAL frame codec):
no files, no threads, no clocks. ``distlab.kvstore.storage`` does the I/O.

Formats
-------
A mutation (the payload of one WAL record) is::

    format version (u8) | kind (u8: 1 put, 2 delete) | key length (u32, big-endian) | key | value

where a delete carries no value bytes. The version byte comes first so the format can evolve.

A snapshot is a sequence of WAL frames (``distlab.common.wal``: length, CRC, sequence), numbered
1, 2, 3, ... so that a missing or reordered frame is detected::

    frame 1          header:  magic "DLKVSNAP" | format version (u8) | covered sequence (u64)
                              | entry count (u64)
    frames 2..n+1    entries: entry sequence (u64) | the mutation that recreates the entry
    frame n+2        trailer: magic "DLKVDONE" | entry count (u64) | covered sequence (u64)

Entries appear in ascending key order. A snapshot that ends before its trailer (a torn write), has
a frame that fails its CRC, or disagrees with itself (counts, order, sequences) is refused whole
with ``SnapshotCorruptionError``: never loaded partially.

What it leaves out
------------------
No SSTables and no levels: the whole data set lives in memory, and a checkpoint writes all of it.
A checkpoint therefore costs time and disk proportional to the data set, not to the writes since
the last one, and memory bounds the data set: a million 16-byte keys with 100-byte values take
about 340 MB (some 220 bytes of Python objects per key on top of its 116 bytes), their snapshot
146 MB and about 2 s of CPU to encode, and a restart about as long to decode. That is reasonable
up to a few million keys, about a GiB of data. Past that, each checkpoint rewrites gigabytes for
every ``checkpoint_wal_bytes`` of new writes and a restart takes tens of seconds; a real engine
then writes only the memtable (an immutable SSTable), merges SSTables in the background
(compaction) and reads through a block cache, as LevelDB and RocksDB do. No bloom filters, no
compression, no key prefix encoding either.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum

from sortedcontainers import SortedList

from distlab.common.wal import RECORD_PAYLOAD_BYTES_MAX, DecodeStop, decode_records, encode_record

# ---------------------------------------------------------------------------------------------
# Mutations: the payload of one WAL record.
# ---------------------------------------------------------------------------------------------

MUTATION_FORMAT_VERSION = 1


class MutationKind(IntEnum):
    PUT = 1
    DELETE = 2


@dataclass(frozen=True, slots=True)
class Put:
    key: bytes
    value: bytes


@dataclass(frozen=True, slots=True)
class Delete:
    key: bytes


Mutation = Put | Delete

# Format version, kind, key length. The key length is a u32 so any key the WAL can carry fits.
_MUTATION_HEADER = struct.Struct(">BBI")
# A snapshot entry is its sequence followed by the mutation that recreates it (see below).
_SNAPSHOT_ENTRY_SEQUENCE = struct.Struct(">Q")
# The two above, back to back: what a snapshot entry starts with.
_SNAPSHOT_ENTRY_HEADER = struct.Struct(">QBBI")
# Every mutation the WAL accepts must also fit, with its sequence in front, in one snapshot frame;
# otherwise a write could be acknowledged and then make every later checkpoint fail.
MUTATION_BYTES_MAX = RECORD_PAYLOAD_BYTES_MAX - _SNAPSHOT_ENTRY_SEQUENCE.size


def encode_mutation(mutation: Mutation) -> bytes:
    """The WAL payload for ``mutation``; ValueError if it would not fit in one snapshot frame."""
    key = mutation.key
    if isinstance(mutation, Put):
        header = _MUTATION_HEADER.pack(MUTATION_FORMAT_VERSION, MutationKind.PUT, len(key))
        payload = b"".join((header, key, mutation.value))
    else:
        header = _MUTATION_HEADER.pack(MUTATION_FORMAT_VERSION, MutationKind.DELETE, len(key))
        payload = header + key
    if len(payload) > MUTATION_BYTES_MAX:
        raise ValueError(
            f"mutation is {len(payload)} bytes encoded; the limit is {MUTATION_BYTES_MAX} bytes"
        )
    return payload


def decode_mutation(payload: bytes | memoryview) -> Mutation:
    """The mutation encoded in ``payload``; ValueError naming the fault if it is malformed."""
    if len(payload) < _MUTATION_HEADER.size:
        raise ValueError(
            f"mutation is {len(payload)} bytes, "
            f"shorter than its {_MUTATION_HEADER.size}-byte header"
        )
    version, kind, key_length = _MUTATION_HEADER.unpack_from(payload)
    if version != MUTATION_FORMAT_VERSION:
        raise ValueError(
            f"mutation format version {version} is not supported "
            f"(expected {MUTATION_FORMAT_VERSION})"
        )
    key_end = _MUTATION_HEADER.size + key_length
    if key_end > len(payload):
        raise ValueError(
            f"mutation declares a {key_length}-byte key but only "
            f"{len(payload) - _MUTATION_HEADER.size} bytes follow the header"
        )
    key = bytes(payload[_MUTATION_HEADER.size : key_end])
    if kind == MutationKind.PUT:
        return Put(key, bytes(payload[key_end:]))
    if kind == MutationKind.DELETE:
        if key_end != len(payload):
            raise ValueError(f"delete mutation has {len(payload) - key_end} bytes after its key")
        return Delete(key)
    raise ValueError(f"mutation kind {kind} is unknown (expected 1 put or 2 delete)")


# ---------------------------------------------------------------------------------------------
# The memtable.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """What the memtable knows about one key: the write that last decided it."""

    sequence: int
    value: bytes | None  # None is a tombstone: the key was deleted at ``sequence``

    @property
    def is_tombstone(self) -> bool:
        return self.value is None


class FrozenEntries:
    """A point-in-time copy of a memtable: its keys in order and its entries by key.

    Iterating yields (key, entry) pairs in key order. Entries are immutable, so a copy of the two
    containers (not of the entries) stays valid while the memtable moves on.
    """

    __slots__ = ("_entries_by_key", "_keys")

    def __init__(self, keys: list[bytes], entries_by_key: dict[bytes, Entry]) -> None:
        assert len(keys) == len(entries_by_key), "every key must have exactly one entry"
        self._keys = keys
        self._entries_by_key = entries_by_key

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[tuple[bytes, Entry]]:
        return zip(self._keys, map(self._entries_by_key.__getitem__, self._keys), strict=True)


class Memtable:
    """An ordered map from key to ``Entry``, changed only by sequence-numbered mutations.

    Not thread-safe: the engine serialises access with its own lock.

    Why a dict plus a SortedList rather than one ``SortedDict``: a SortedDict is exactly these two
    halves, but it overrides ``__iter__``, which sends ``dict.copy`` down CPython's slow generic
    path. Kept apart, a checkpoint copies both halves at C speed (about 40 ms per million keys,
    against 300-600 ms for ``list(sorted_dict.items())``), and that copy is the time for which a
    checkpoint stops writers.
    """

    def __init__(self) -> None:
        self._entries_by_key: dict[bytes, Entry] = {}
        self._sorted_keys: SortedList[bytes] = SortedList()
        # Key -> sequence of every tombstone, so collecting them does not walk the live keys.
        self._tombstone_sequences: dict[bytes, int] = {}
        self._key_and_value_bytes = 0

    @classmethod
    def from_entries(cls, entries: Iterable[tuple[bytes, Entry]]) -> Memtable:
        """A memtable holding exactly ``entries`` (as decoded from a snapshot)."""
        memtable = cls()
        memtable._entries_by_key = dict(entries)
        memtable._sorted_keys = SortedList(memtable._entries_by_key)
        for key, entry in memtable._entries_by_key.items():
            memtable._key_and_value_bytes += _entry_bytes(key, entry)
            if entry.value is None:
                memtable._tombstone_sequences[key] = entry.sequence
        return memtable

    def apply(self, sequence: int, mutation: Mutation) -> bool:
        """Apply ``mutation`` written at ``sequence`` unless the key already holds a newer write.

        Returns whether it changed the memtable. Replaying a record already applied returns False.
        """
        if sequence < 1:
            raise ValueError(f"sequence must be >= 1, got {sequence}")
        key = mutation.key
        current = self._entries_by_key.get(key)
        if current is not None and current.sequence >= sequence:
            return False
        value = mutation.value if isinstance(mutation, Put) else None
        self._replace(key, current, Entry(sequence, value))
        return True

    def get(self, key: bytes) -> bytes | None:
        """The key's live value; None when the key is missing or deleted."""
        entry = self._entries_by_key.get(key)
        return None if entry is None else entry.value

    def entry(self, key: bytes) -> Entry | None:
        """The key's entry, tombstones included; None only when the memtable never saw the key
        (or its tombstone was collected)."""
        return self._entries_by_key.get(key)

    def scan(self, start: bytes | None, end: bytes | None, limit: int) -> list[tuple[bytes, Entry]]:
        """Up to ``limit`` entries with start <= key < end in key order, tombstones included.

        ``None`` leaves that side unbounded. To page, call again with start = last key + b"\\x00".
        """
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        keys = self._sorted_keys.irange(minimum=start, maximum=end, inclusive=(True, False))
        return [(key, self._entries_by_key[key]) for key in itertools.islice(keys, limit)]

    def collect_tombstones(self, through_sequence: int) -> int:
        """Drop tombstones written at or before ``through_sequence``; return how many.

        Safe only when no mutation with a sequence <= ``through_sequence`` can still be applied:
        a dropped tombstone no longer shadows an older put that arrives late.
        """
        collected = [
            key
            for key, sequence in self._tombstone_sequences.items()
            if sequence <= through_sequence
        ]
        for key in collected:
            entry = self._entries_by_key.pop(key)
            self._sorted_keys.remove(key)
            del self._tombstone_sequences[key]
            self._key_and_value_bytes -= _entry_bytes(key, entry)
        return len(collected)

    def items(self) -> FrozenEntries:
        """Every entry in key order, as a point-in-time copy (for a snapshot)."""
        return FrozenEntries(list(self._sorted_keys), self._entries_by_key.copy())

    def __len__(self) -> int:
        """Entries, tombstones included."""
        return len(self._entries_by_key)

    @property
    def live_key_count(self) -> int:
        return len(self._entries_by_key) - len(self._tombstone_sequences)

    @property
    def tombstone_count(self) -> int:
        return len(self._tombstone_sequences)

    @property
    def key_and_value_bytes(self) -> int:
        """Approximate size: the bytes of every key and value, without Python's overhead."""
        return self._key_and_value_bytes

    def _replace(self, key: bytes, current: Entry | None, new: Entry) -> None:
        if current is None:
            self._sorted_keys.add(key)
        else:
            self._key_and_value_bytes -= _entry_bytes(key, current)
        self._key_and_value_bytes += _entry_bytes(key, new)
        self._entries_by_key[key] = new
        if new.value is None:
            self._tombstone_sequences[key] = new.sequence
        else:
            self._tombstone_sequences.pop(key, None)


def _entry_bytes(key: bytes, entry: Entry) -> int:
    return len(key) + (0 if entry.value is None else len(entry.value))


# ---------------------------------------------------------------------------------------------
# Snapshots: the memtable written out by a checkpoint.
# ---------------------------------------------------------------------------------------------

SNAPSHOT_FORMAT_VERSION = 1
_SNAPSHOT_HEADER_MAGIC = b"DLKVSNAP"
_SNAPSHOT_TRAILER_MAGIC = b"DLKVDONE"
_SNAPSHOT_HEADER = struct.Struct(">8sBQQ")  # magic, format version, covered sequence, entry count
_SNAPSHOT_TRAILER = struct.Struct(">8sQQ")  # magic, entry count, covered sequence
# Frames are joined into chunks of about this size before they are handed to the writer: one
# write call per frame would cost more in system calls than the encoding itself, and 1 MiB is
# large enough to amortise them while keeping the encoder's memory flat.
SNAPSHOT_CHUNK_BYTES_TARGET = 1024 * 1024


class SnapshotCorruptionError(ValueError):
    """The snapshot is torn, fails a checksum, or contradicts itself; none of it may be used."""


def encode_snapshot(
    covered_sequence: int, entries: FrozenEntries | Sequence[tuple[bytes, Entry]]
) -> Iterator[bytes]:
    """Chunks of the snapshot of ``entries`` (key order), the state after records 1..covered."""
    if covered_sequence < 0:
        raise ValueError(f"covered_sequence must be >= 0, got {covered_sequence}")
    header = _SNAPSHOT_HEADER.pack(
        _SNAPSHOT_HEADER_MAGIC, SNAPSHOT_FORMAT_VERSION, covered_sequence, len(entries)
    )
    chunk = [encode_record(1, header)]
    chunk_bytes = len(chunk[0])
    previous_key: bytes | None = None
    for frame_sequence, (key, entry) in enumerate(entries, start=2):
        # Checked when writing as decode_snapshot checks when reading: a snapshot that breaks
        # these would be refused at the next restart, when it is too late to fix.
        if previous_key is not None and key <= previous_key:
            raise ValueError(f"snapshot entries must ascend by key: {key!r} after {previous_key!r}")
        if not 1 <= entry.sequence <= covered_sequence:
            raise ValueError(
                f"entry sequence {entry.sequence} is outside [1, {covered_sequence}] for {key!r}"
            )
        previous_key = key
        mutation: Mutation = Delete(key) if entry.value is None else Put(key, entry.value)
        payload = _SNAPSHOT_ENTRY_SEQUENCE.pack(entry.sequence) + encode_mutation(mutation)
        frame = encode_record(frame_sequence, payload)
        chunk.append(frame)
        chunk_bytes += len(frame)
        if chunk_bytes >= SNAPSHOT_CHUNK_BYTES_TARGET:
            yield b"".join(chunk)
            chunk, chunk_bytes = [], 0
    trailer = _SNAPSHOT_TRAILER.pack(_SNAPSHOT_TRAILER_MAGIC, len(entries), covered_sequence)
    chunk.append(encode_record(len(entries) + 2, trailer))
    yield b"".join(chunk)


def decode_snapshot(buffer: bytes | memoryview) -> tuple[int, list[tuple[bytes, Entry]]]:
    """(covered sequence, entries in key order) of a whole snapshot file's bytes.

    Raises SnapshotCorruptionError unless every frame is intact and the snapshot is complete.
    """
    result = decode_records(buffer, expected_sequence=1)
    if result.stop is not DecodeStop.END or result.valid_length != len(buffer):
        raise SnapshotCorruptionError(
            f"snapshot frames stop at byte {result.valid_length} of {len(buffer)} "
            f"({result.stop.name.lower()}) after {len(result.records)} frames"
        )
    records = result.records
    if len(records) < 2:
        raise SnapshotCorruptionError(
            f"snapshot has {len(records)} frames; a header and a trailer are the minimum"
        )
    covered_sequence, entry_count = _decode_snapshot_header(records[0].payload)
    _check_snapshot_trailer(records[-1].payload, covered_sequence, entry_count)
    if entry_count != len(records) - 2:
        raise SnapshotCorruptionError(
            f"snapshot header promises {entry_count} entries but {len(records) - 2} frames follow"
        )
    entries: list[tuple[bytes, Entry]] = []
    previous_key: bytes | None = None
    for record in itertools.islice(records, 1, len(records) - 1):
        key, entry = _decode_snapshot_entry(record.payload, covered_sequence)
        if previous_key is not None and key <= previous_key:
            raise SnapshotCorruptionError(f"snapshot keys out of order at frame {record.sequence}")
        previous_key = key
        entries.append((key, entry))
    return covered_sequence, entries


def _decode_snapshot_header(payload: bytes) -> tuple[int, int]:
    if len(payload) != _SNAPSHOT_HEADER.size:
        raise SnapshotCorruptionError(f"snapshot header is {len(payload)} bytes, not a header")
    magic, version, covered_sequence, entry_count = _SNAPSHOT_HEADER.unpack(payload)
    if magic != _SNAPSHOT_HEADER_MAGIC:
        raise SnapshotCorruptionError(f"not a distlab snapshot (magic {magic!r})")
    if version != SNAPSHOT_FORMAT_VERSION:
        raise SnapshotCorruptionError(
            f"snapshot format version {version} is not supported "
            f"(expected {SNAPSHOT_FORMAT_VERSION})"
        )
    return covered_sequence, entry_count


def _check_snapshot_trailer(payload: bytes, covered_sequence: int, entry_count: int) -> None:
    if len(payload) != _SNAPSHOT_TRAILER.size:
        raise SnapshotCorruptionError("snapshot ends without its trailer (truncated?)")
    magic, trailer_count, trailer_sequence = _SNAPSHOT_TRAILER.unpack(payload)
    if magic != _SNAPSHOT_TRAILER_MAGIC:
        raise SnapshotCorruptionError("snapshot ends without its trailer (truncated?)")
    if (trailer_count, trailer_sequence) != (entry_count, covered_sequence):
        raise SnapshotCorruptionError(
            f"snapshot trailer ({trailer_count} entries, sequence {trailer_sequence}) disagrees "
            f"with its header ({entry_count} entries, sequence {covered_sequence})"
        )


def _decode_snapshot_entry(payload: bytes, covered_sequence: int) -> tuple[bytes, Entry]:
    # The same checks as decode_mutation, inlined with the sequence into one unpack: a recovery
    # decodes a million of these, and the general path (a memoryview, a Put, then an Entry)
    # costs twice as long.
    if len(payload) < _SNAPSHOT_ENTRY_HEADER.size:
        raise SnapshotCorruptionError(f"snapshot entry is only {len(payload)} bytes")
    sequence, version, kind, key_length = _SNAPSHOT_ENTRY_HEADER.unpack_from(payload)
    if not 1 <= sequence <= covered_sequence:
        raise SnapshotCorruptionError(
            f"snapshot entry sequence {sequence} is outside [1, {covered_sequence}]"
        )
    if version != MUTATION_FORMAT_VERSION:
        raise SnapshotCorruptionError(f"snapshot entry has mutation format version {version}")
    key_end = _SNAPSHOT_ENTRY_HEADER.size + key_length
    if key_end > len(payload):
        raise SnapshotCorruptionError(
            f"snapshot entry declares a {key_length}-byte key past its end"
        )
    key = payload[_SNAPSHOT_ENTRY_HEADER.size : key_end]
    if kind == MutationKind.PUT:
        return key, Entry(sequence, payload[key_end:])
    if kind == MutationKind.DELETE and key_end == len(payload):
        return key, Entry(sequence, None)
    raise SnapshotCorruptionError(f"snapshot entry of kind {kind} is malformed")
