"""The memtable, its mutation codec and its snapshot codec, driven without files or an event loop.

References: LevelDB/RocksDB sequence numbers (a write applies only over an older one), Bigtable
2006 section 5.3 (memtable + commit log; a minor compaction's output plus the log after it
rebuild the state).
"""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from distlab.common.wal import encode_record
from distlab.kvstore.memtable import (
    MUTATION_BYTES_MAX,
    Delete,
    Entry,
    Memtable,
    Mutation,
    Put,
    SnapshotCorruptionError,
    decode_mutation,
    decode_snapshot,
    encode_mutation,
    encode_snapshot,
)

# ------------------------------------------------------------------------------------ apply rule


def test_an_older_sequence_never_overwrites_a_newer_one() -> None:
    memtable = Memtable()
    assert memtable.apply(5, Put(b"k", b"new"))
    assert not memtable.apply(3, Put(b"k", b"old")), "sequence 3 is older than the entry's 5"
    assert memtable.get(b"k") == b"new"
    assert memtable.entry(b"k") == Entry(5, b"new")


def test_replaying_the_same_record_changes_nothing() -> None:
    memtable = Memtable()
    assert memtable.apply(1, Put(b"k", b"v"))
    assert not memtable.apply(1, Put(b"k", b"v"))
    assert (len(memtable), memtable.live_key_count, memtable.key_and_value_bytes) == (1, 1, 2)


def test_applying_in_any_order_ends_as_applying_in_sequence_order() -> None:
    seed = 20240611
    generator = random.Random(seed)
    records: list[tuple[int, Mutation]] = []
    for sequence in range(1, 401):
        key = bytes([generator.randrange(12)])
        mutation: Mutation = Delete(key) if generator.random() < 0.3 else Put(key, b"%d" % sequence)
        records.append((sequence, mutation))
    in_order = Memtable()
    for sequence, mutation in records:
        in_order.apply(sequence, mutation)
    shuffled = Memtable()
    generator.shuffle(records)
    for sequence, mutation in records:
        shuffled.apply(sequence, mutation)
    assert list(shuffled.items()) == list(in_order.items()), f"seed={seed}"


def test_sequence_must_be_positive() -> None:
    with pytest.raises(ValueError, match="sequence must be >= 1"):
        Memtable().apply(0, Put(b"k", b"v"))


# ------------------------------------------------------------------------------------ tombstones


def test_a_tombstone_shadows_the_value_and_any_older_write() -> None:
    memtable = Memtable()
    memtable.apply(1, Put(b"k", b"v"))
    memtable.apply(2, Delete(b"k"))
    assert memtable.get(b"k") is None
    assert memtable.entry(b"k") == Entry(2, None), "a tombstone is an entry, not a missing key"
    assert memtable.entry(b"never") is None
    assert not memtable.apply(1, Put(b"k", b"v")), "the put the tombstone deleted must not return"
    assert memtable.get(b"k") is None
    assert (len(memtable), memtable.live_key_count, memtable.tombstone_count) == (1, 0, 1)


def test_a_newer_put_revives_a_deleted_key() -> None:
    memtable = Memtable()
    memtable.apply(1, Delete(b"k"))
    memtable.apply(2, Put(b"k", b"again"))
    assert memtable.get(b"k") == b"again"
    assert (memtable.live_key_count, memtable.tombstone_count) == (1, 0)


def test_collect_tombstones_drops_only_those_at_or_before_the_sequence() -> None:
    memtable = Memtable()
    memtable.apply(1, Put(b"live", b"value"))
    memtable.apply(2, Delete(b"a"))
    memtable.apply(5, Delete(b"b"))
    memtable.apply(9, Delete(b"c"))
    assert memtable.collect_tombstones(5) == 2
    assert memtable.entry(b"a") is None
    assert memtable.entry(b"b") is None
    assert memtable.entry(b"c") == Entry(9, None)
    assert memtable.get(b"live") == b"value", "live values are never collected"
    assert (len(memtable), memtable.tombstone_count) == (2, 1)
    assert memtable.key_and_value_bytes == len(b"live" + b"value" + b"c")
    assert [key for key, _ in memtable.scan(None, None, 10)] == [b"c", b"live"]
    assert memtable.collect_tombstones(5) == 0


def test_a_collected_tombstone_no_longer_shadows_an_older_put() -> None:
    """Why collection must wait until no older record can still be applied (the engine caps it
    at its applied watermark): the tombstone is what kept the deleted value from coming back."""
    memtable = Memtable()
    memtable.apply(2, Delete(b"k"))
    memtable.collect_tombstones(2)
    assert memtable.apply(1, Put(b"k", b"deleted value")), "nothing shadows it any more"
    assert memtable.get(b"k") == b"deleted value"


def test_key_and_value_bytes_follow_every_change() -> None:
    memtable = Memtable()
    memtable.apply(1, Put(b"key", b"12345"))
    assert memtable.key_and_value_bytes == 8
    memtable.apply(2, Put(b"key", b"1"))
    assert memtable.key_and_value_bytes == 4
    memtable.apply(3, Delete(b"key"))
    assert memtable.key_and_value_bytes == 3, "a tombstone still holds its key"


# ------------------------------------------------------------------------------------ scans


def _memtable_with(keys: list[bytes]) -> Memtable:
    memtable = Memtable()
    for sequence, key in enumerate(keys, start=1):
        memtable.apply(sequence, Put(key, key.upper()))
    return memtable


def test_scan_returns_keys_in_order_whatever_the_insertion_order() -> None:
    seed = 7
    keys = [bytes([letter]) * length for letter in b"abcdefg" for length in (1, 2)]
    random.Random(seed).shuffle(keys)
    scanned = [key for key, _ in _memtable_with(keys).scan(None, None, 100)]
    assert scanned == sorted(keys), f"seed={seed}"


def test_scan_bounds_are_start_inclusive_and_end_exclusive() -> None:
    memtable = _memtable_with([b"a", b"b", b"c", b"d", b"e"])

    def keys(start: bytes | None, end: bytes | None, limit: int = 100) -> list[bytes]:
        return [key for key, _ in memtable.scan(start, end, limit)]

    assert keys(b"b", b"d") == [b"b", b"c"]
    assert keys(b"bb", b"dd") == [b"c", b"d"], "bounds need not be keys"
    assert keys(None, b"c") == [b"a", b"b"]
    assert keys(b"d", None) == [b"d", b"e"]
    assert keys(b"d", b"b") == []
    assert keys(b"c", b"c") == []
    assert keys(None, None, limit=2) == [b"a", b"b"]
    assert keys(None, None, limit=0) == []
    with pytest.raises(ValueError, match="limit must be >= 0"):
        memtable.scan(None, None, -1)


def test_scan_includes_tombstones_for_the_caller_to_filter() -> None:
    memtable = _memtable_with([b"a", b"b"])
    memtable.apply(3, Delete(b"a"))
    assert memtable.scan(None, None, 10) == [(b"a", Entry(3, None)), (b"b", Entry(2, b"B"))]


def test_items_is_a_point_in_time_copy() -> None:
    memtable = _memtable_with([b"a", b"b"])
    copy = memtable.items()
    memtable.apply(3, Put(b"a", b"changed"))
    memtable.apply(4, Put(b"c", b"new"))
    memtable.apply(5, Delete(b"b"))
    assert len(copy) == 2
    assert list(copy) == [(b"a", Entry(1, b"A")), (b"b", Entry(2, b"B"))]


# ------------------------------------------------------------------------------- mutation codec


@pytest.mark.parametrize(
    "mutation",
    [
        Put(b"key", b"value"),
        Put(b"", b""),
        Put(b"\x00\xff" * 40, bytes(range(256))),
        Delete(b"key"),
        Delete(b""),
    ],
)
def test_mutation_round_trip(mutation: Mutation) -> None:
    payload = encode_mutation(mutation)
    assert payload[0] == 1, "the format version comes first, so the format can evolve"
    assert decode_mutation(payload) == mutation


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "shorter than its 6-byte header"),
        (b"\x01\x01\x00\x00", "shorter than its 6-byte header"),
        (b"\x02\x01" + struct.pack(">I", 1) + b"k", "format version 2 is not supported"),
        (b"\x01\x07" + struct.pack(">I", 1) + b"k", "kind 7 is unknown"),
        (b"\x01\x01" + struct.pack(">I", 9) + b"short", "declares a 9-byte key"),
        (b"\x01\x02" + struct.pack(">I", 1) + b"k!", "1 bytes after its key"),
    ],
)
def test_malformed_mutations_are_refused(payload: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_mutation(payload)


def test_a_mutation_must_fit_in_one_snapshot_frame() -> None:
    largest = Put(b"k", b"v" * (MUTATION_BYTES_MAX - 7))
    assert len(encode_mutation(largest)) == MUTATION_BYTES_MAX
    with pytest.raises(ValueError, match="the limit is"):
        encode_mutation(Put(b"k", b"v" * (MUTATION_BYTES_MAX - 6)))


# ------------------------------------------------------------------------------- snapshot codec


def _sample_entries() -> list[tuple[bytes, Entry]]:
    return [
        (b"", Entry(4, b"empty key")),
        (b"alpha", Entry(1, b"first")),
        (b"beta", Entry(7, None)),
        (b"gamma", Entry(3, b"")),
        (b"\xff" * 3, Entry(9, b"\x00" * 20)),
    ]


def _encoded(covered_sequence: int, entries: list[tuple[bytes, Entry]]) -> bytes:
    return b"".join(encode_snapshot(covered_sequence, entries))


def test_snapshot_round_trip_keeps_tombstones() -> None:
    entries = _sample_entries()
    assert decode_snapshot(_encoded(10, entries)) == (10, entries)


def test_empty_snapshot_round_trip() -> None:
    assert decode_snapshot(_encoded(0, [])) == (0, [])


def test_snapshot_of_a_memtable_rebuilds_the_same_memtable() -> None:
    memtable = _memtable_with([b"c", b"a", b"b"])
    memtable.apply(4, Delete(b"b"))
    covered_sequence, entries = decode_snapshot(b"".join(encode_snapshot(4, memtable.items())))
    rebuilt = Memtable.from_entries(entries)
    assert covered_sequence == 4
    assert list(rebuilt.items()) == list(memtable.items())
    assert (rebuilt.live_key_count, rebuilt.tombstone_count) == (2, 1)
    assert rebuilt.key_and_value_bytes == memtable.key_and_value_bytes


def test_encode_snapshot_refuses_entries_it_could_not_read_back() -> None:
    with pytest.raises(ValueError, match="ascend by key"):
        _encoded(5, [(b"b", Entry(1, b"v")), (b"a", Entry(2, b"v"))])
    with pytest.raises(ValueError, match="outside"):
        _encoded(5, [(b"a", Entry(6, b"v"))])


def test_a_snapshot_cut_anywhere_is_refused() -> None:
    snapshot = _encoded(10, _sample_entries())
    for length in range(len(snapshot)):
        with pytest.raises(SnapshotCorruptionError):
            decode_snapshot(snapshot[:length])


def test_a_snapshot_with_any_bit_flipped_is_refused() -> None:
    snapshot = _encoded(10, _sample_entries())
    for offset in range(len(snapshot)):
        for bit in range(8):
            damaged = bytearray(snapshot)
            damaged[offset] ^= 1 << bit
            with pytest.raises(SnapshotCorruptionError):
                decode_snapshot(bytes(damaged))


def _frames(*payloads: bytes) -> bytes:
    return b"".join(encode_record(index, payload) for index, payload in enumerate(payloads, 1))


def test_a_snapshot_ending_at_a_frame_boundary_before_its_trailer_is_refused() -> None:
    header = struct.pack(">8sBQQ", b"DLKVSNAP", 1, 10, 1)
    entry = struct.pack(">Q", 1) + encode_mutation(Put(b"k", b"v"))
    with pytest.raises(SnapshotCorruptionError, match="trailer"):
        decode_snapshot(_frames(header, entry))


def test_a_snapshot_that_contradicts_itself_is_refused() -> None:
    def header(count: int) -> bytes:
        return struct.pack(">8sBQQ", b"DLKVSNAP", 1, 10, count)

    def trailer(count: int) -> bytes:
        return struct.pack(">8sQQ", b"DLKVDONE", count, 10)

    def entry(sequence: int, key: bytes) -> bytes:
        return struct.pack(">Q", sequence) + encode_mutation(Put(key, b"v"))

    cases = {
        "promises 2 entries but 1 frames follow": _frames(header(2), entry(1, b"a"), trailer(2)),
        "disagrees with its header": _frames(header(1), entry(1, b"a"), trailer(2)),
        "out of order": _frames(header(2), entry(1, b"b"), entry(2, b"a"), trailer(2)),
        "outside": _frames(header(1), entry(11, b"a"), trailer(1)),
        "not a distlab snapshot": _frames(b"X" * 8 + header(0)[8:], trailer(0)),
        "version 9": _frames(header(0)[:8] + b"\x09" + header(0)[9:], trailer(0)),
    }
    for message, snapshot in cases.items():
        with pytest.raises(SnapshotCorruptionError, match=message):
            decode_snapshot(snapshot)


# ------------------------------------------------------------------------------------ model check

KEYS = st.sampled_from([b"", b"a", b"ab", b"b", b"\x00", b"\xff", b"zz"])
VALUES = st.binary(max_size=8)


class MemtableAgainstADict(RuleBasedStateMachine):
    """Random puts, deletes, replays, checkpoints and restarts, checked against a plain dict.

    A restart rebuilds the memtable as recovery does: the last snapshot, then every logged record
    after it, plus (to check idempotence) some records the snapshot already covers.
    """

    @initialize()
    def start(self) -> None:
        self.memtable = Memtable()
        self.model: dict[bytes, bytes] = {}
        self.log: list[tuple[int, Mutation]] = []
        self.snapshot = _encoded(0, [])
        # Records at or before this may have lost their shadowing tombstone (see the test above),
        # so they are never re-applied, just as recovery never re-applies what a snapshot covers.
        self.collected_through = 0

    @rule(key=KEYS, value=VALUES)
    def put(self, key: bytes, value: bytes) -> None:
        self._write(Put(key, value))
        self.model[key] = value

    @rule(key=KEYS)
    def delete(self, key: bytes) -> None:
        self._write(Delete(key))
        self.model.pop(key, None)

    @precondition(lambda self: len(self.log) > self.collected_through)
    @rule(data=st.data())
    def replay_an_old_record(self, data: st.DataObject) -> None:
        sequence, mutation = data.draw(st.sampled_from(self.log[self.collected_through :]))
        assert not self.memtable.apply(sequence, mutation), "a replayed record must change nothing"

    @rule()
    def checkpoint(self) -> None:
        self.snapshot = b"".join(encode_snapshot(len(self.log), self.memtable.items()))

    @rule(data=st.data())
    def restart(self, data: st.DataObject) -> None:
        covered_sequence, entries = decode_snapshot(self.snapshot)
        self.memtable = Memtable.from_entries(entries)
        replayable = self.log[self.collected_through : covered_sequence]
        twice = data.draw(st.lists(st.sampled_from(replayable)) if replayable else st.just([]))
        for sequence, mutation in [*twice, *self.log[covered_sequence:]]:
            self.memtable.apply(sequence, mutation)

    @rule()
    def collect_every_tombstone(self) -> None:
        self.memtable.collect_tombstones(len(self.log))
        self.collected_through = len(self.log)

    @invariant()
    def reads_match_the_model(self) -> None:
        live = [(key, entry.value) for key, entry in self.memtable.scan(None, None, 100)]
        assert [(key, value) for key, value in live if value is not None] == sorted(
            self.model.items()
        )
        for key in (b"", b"a", b"ab", b"b", b"\x00", b"\xff", b"zz"):
            assert self.memtable.get(key) == self.model.get(key)
        assert self.memtable.live_key_count == len(self.model)

    def _write(self, mutation: Mutation) -> None:
        sequence = len(self.log) + 1
        self.log.append((sequence, mutation))
        assert self.memtable.apply(sequence, mutation), "a new sequence always applies"


# Derandomized: the same examples on every run, so a failure replays as it is (hypothesis prints
# the failing steps); no example database, so runs leave no state behind.
MemtableAgainstADict.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, derandomize=True, database=None, deadline=None
)
test_memtable_against_a_dict = MemtableAgainstADict.TestCase
