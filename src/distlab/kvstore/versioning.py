"""Versions of one key in the Dynamo-style store: dotted version vectors, siblings and their codec.

What it implements
------------------
* **Data versioning** (DeCandia et al., "Dynamo: Amazon's Highly Available Key-value Store",
  SOSP 2007, section 4.4): "Dynamo treats the result of each modification as a new and immutable
  version of the data", each carrying a vector clock; a version whose clock is descended from
  another's replaces it ("syntactic reconciliation"), and versions that are concurrent are all
  kept and returned to the client as **siblings**, for it to merge ("semantic reconciliation").
  A get returns the siblings with a **context** that a later put hands back, so the new version
  supersedes exactly what the client read. Deletes are writes of a **tombstone**.
* **Dotted version vectors** (Preguiça, Baquero, Almeida, Fonte, Gonçalves, "Dotted Version
  Vectors: Logical Clocks for Optimistic Replication", 2010), the refinement Riak 2.0 adopted.
  A version carries a **dot**, the one event that made it (coordinator id, counter), apart from
  its **context**, the version vector of what its writer had seen. Its causal history is the
  context plus the dot.
* **Clock pruning** (Dynamo 4.4): "along with each (node, counter) pair, Dynamo stores a
  timestamp that indicates the last time the node updated the data item. When the number of
  (node, counter) pairs in the vector clock reaches a threshold (say 10), the oldest pair is
  removed from the clock."
* **Last writer wins**, the lossy alternative (Cassandra's cells; Dynamo section 6 lists
  "timestamp based reconciliation ... 'last write wins'" as a mode some services chose), kept as
  a negative control for the chaos checker.
* A compact, bounded, versioned **binary codec** for sibling sets and contexts, and a **digest**
  of a sibling set for anti-entropy (``distlab.kvstore.merkle``).

Everything here is pure: standard library and ``distlab.common.hashring`` only. Time comes in as
``now_wall_ms``; nothing here reads a clock or does I/O.

Theory of operation
-------------------
Why a dot. With plain vector clocks (Dynamo's scheme, counters per coordinating node), take a
key whose value has clock {A:1}. Two clients read it and each puts a new value, both from the
context {A:1}, and node A coordinates both puts. A increments its counter for each: the first
version gets {A:2}, the second {A:3}. Compared as vector clocks, {A:3} descends from {A:2}, so
the second version "replaces" the first and the first write is lost silently, although neither
writer saw the other's value.

With dotted version vectors the first version is dot (A, 2) with context {A:1}, the second dot
(A, 3) with context {A:1}. A version obsoletes another only when its context covers the other's
dot: {A:1} covers neither (A, 2) nor (A, 3), so both survive as siblings. The next read returns
both, with the context {A:3} (the merge of both histories, {A:1}+(A, 2) and {A:1}+(A, 3)), and a
put from that context obsoletes both.

The rules, one function each:

1. ``obsoletes(newer, older)``: newer.context covers older.dot, and the dots differ.
2. ``reconcile(versions)``: keep every version no other version obsoletes (drop duplicates of a
   dot). On histories made by these rules, with the caller's duties below kept and no pruning,
   this is the join of a semilattice: commutative, associative and idempotent, so replicas may
   merge sibling sets in any order, any number of times, and still converge.
3. ``read_context(siblings)``: the merge of the siblings' histories, what a get returns.
4. ``next_version(local, context, coordinator, ...)``: a put makes dot (coordinator, n), n one
   more than any counter of the coordinator that the context or the coordinator's local
   versions hold, so a coordinator never mints one dot twice for a key; the new version's
   context is the client's context (pruned).

Duties of the caller (the coordinator in ``distlab.kvstore.node``); each one is needed:

1. Hold the key's lock from reading the local sibling set, through ``next_version``, to writing
   the merged set back: two puts minting at once would compute the same counter, and two
   different versions with one dot are a ``VersionConflictError`` wherever they meet.
2. Write the new version locally, durably, before replicating it: the next ``next_version`` on
   this node must see it, even after a crash, or its counter could be reused.
3. Replicate the coordinator's whole merged sibling set, not only the new version (Riak's
   coordinating vnode does the same). A context is a version vector, so {A:3} covers (A, 2) as
   well: a replica that held (A, 3) without (A, 2) would answer a read with a context that makes
   the next put discard (A, 2), which that reader never saw. Every set that leaves the
   coordinator after (A, 3) was minted holds (A, 2), or a version whose context covers it.
4. A node whose stored data was lost must not come back under the same node id: it would mint
   dots again from 1. (Riak's fix for this, "actor epochs", is left out.)

Pruning (``VectorClock.prune``, applied to a new version's context when it holds more than
``clock_entries_max`` entries) only ever removes coverage: a pruned context obsoletes a subset
of what the full one would, so its failure mode is a spurious sibling, never a lost write. It
has two further costs, both avoided by keeping ``clock_entries_max`` at least the number of
nodes that ever coordinate puts (every node, in a small cluster), because then it never prunes:

* Obsolescence stops being transitive: w may obsolete u, which obsoleted v, without covering v.
  Then a replica that held v and receives w keeps v as a sibling, while one that held u and
  receives w keeps only w. Replicas still converge (an exchange leaves both with the same set)
  but the surviving siblings may depend on the order of the merges.
* A coordinator whose entry was pruned out of every version it still stores can mint a dot it
  minted before. If the old version still lives on some replica, the two meet as a
  ``VersionConflictError`` (loud, not silent); Dynamo reports the same trade-off: "this problem
  has not surfaced in production".

What it leaves out
------------------
* The compact "DVV sets" (Almeida, Baquero, Gonçalves, Preguiça, Fonte, "Scalable and Accurate
  Causality Tracking for Eventually Consistent Stores", DAIS 2014), which store one clock for a
  whole sibling set: here each sibling carries its own context, simpler to read and to check.
* Actor epochs (Riak's kv679 fix) for nodes that lose their data; see duty 4.
* Semantic reconciliation: merging sibling values is the application's job (Dynamo's shopping
  cart); a client puts the merged value back with the read context.
* Garbage collection of tombstones: a tombstone is a sibling like any other until a put
  supersedes it.

Formats
-------
All integers big-endian. A node id is UTF-8, prefixed by its length (u8, 1..255)::

    clock entry   node id length (u8) | node id | counter (u64) | wall_ms (u64)
    context       format version (u8, 1) | entry count (u16, >= 1) | entries, by node id
                  (the empty clock is encoded as no bytes at all)
    sibling set   format version (u8, 1) | sibling count (u16) | siblings, ascending by dot
    sibling       dot node id length (u8) | dot node id | dot counter (u64) | wall_ms (u64)
                  | kind (u8: 1 value, 2 tombstone) | context entry count (u16)
                  | context entries, by node id | [value length (u32) | value]  (value only)

The encoding is canonical (one set, one encoding: ascending dots, ascending node ids, no
duplicates, no trailing bytes), which is what lets ``digest`` hash it. Decoding checks every
length and order and refuses anything else with a ``ValueError`` naming what was wrong; at the
gRPC edge a client-supplied context that fails is INVALID_ARGUMENT.
"""

from __future__ import annotations

import hashlib
import itertools
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum, IntEnum

from distlab.common.hashring import check_node_id

# ---------------------------------------------------------------------------------------------
# Limits.
# ---------------------------------------------------------------------------------------------

# Dynamo 4.4's example threshold ("say 10"). A clock gains one entry per node that coordinates a
# put on the key, so in a cluster of at most this many nodes pruning never happens.
CLOCK_ENTRIES_MAX_DEFAULT = 10
# The most entries any clock may hold, and so the most the codec accepts. A new version's context
# is pruned to clock_entries_max (<= this), but a read context merges the histories of up to
# SIBLINGS_MAX siblings; 1024 is one entry per node of the largest ring (hashring.NODES_MAX)
# and keeps a context under 300 KiB even with the longest node ids.
CLOCK_ENTRIES_MAX = 1024
# Siblings of one key. They grow only with concurrent writes that no client has merged yet; past
# 64 the key is pathological (a client writing blindly in a loop), and a put that would grow the
# set further is refused (TooManySiblingsError) rather than let it grow without bound. Each
# sibling carries its value, so the storage engine's record limit may bind first for big values.
SIBLINGS_MAX = 64
# Counters and wall-clock milliseconds travel as u64.
COUNTER_MAX = (1 << 64) - 1
WALL_MS_MAX = (1 << 64) - 1
# A value is framed by a u32 length. The store's own limit (common.limits) is far smaller.
VALUE_BYTES_MAX = (1 << 32) - 1
# blake2b-128: a 2**-64 chance that two different sets share a digest after 2**32 comparisons
# (the birthday bound), and 16 bytes per key in a Merkle leaf's input.
DIGEST_BYTES = 16

FORMAT_VERSION = 1


class SiblingKind(IntEnum):
    VALUE = 1
    TOMBSTONE = 2


class VersionConflictError(ValueError):
    """Two versions share a dot but differ: corrupt input, or a dot minted twice (see the module
    docstring: a lock not held, a node that lost its data, or pruning)."""


class TooManySiblingsError(ValueError):
    """A put would leave the key with more than SIBLINGS_MAX siblings. Definite: nothing was
    written. The cure is a put whose context is a read context of the key, which merges them."""


# ---------------------------------------------------------------------------------------------
# Dots and vector clocks.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, order=True)
class Dot:
    """The event that made one version: the ``counter``-th put that ``node_id`` coordinated on
    the key. Ordered by (node_id, counter), the order siblings are kept in."""

    node_id: str
    counter: int

    def __post_init__(self) -> None:
        check_node_id(self.node_id)
        _check_counter(self.counter)


@dataclass(frozen=True, slots=True)
class ClockEntry:
    """One (node, counter) pair of a vector clock, and when it last advanced (wall clock, ms).

    ``wall_ms`` is used only to choose which entries pruning drops; comparison ignores it.
    """

    node_id: str
    counter: int
    wall_ms: int

    def __post_init__(self) -> None:
        check_node_id(self.node_id)
        _check_counter(self.counter)
        _check_wall_ms(self.wall_ms)


class Ordering(Enum):
    """How clock a compares with clock b, in ``a.compare(b)``."""

    BEFORE = "before"  # a < b: b has seen everything a has, and more
    AFTER = "after"  # a > b
    EQUAL = "equal"
    CONCURRENT = "concurrent"  # each has seen something the other has not


@dataclass(frozen=True, slots=True)
class VectorClock:
    """A version vector: for each node, how many of its events are covered.

    ``entries`` are in ascending node id order with no node twice, so one clock has one
    representation (``from_entries`` sorts for you). A node with no entry has counter 0.
    """

    entries: tuple[ClockEntry, ...]

    def __post_init__(self) -> None:
        if len(self.entries) > CLOCK_ENTRIES_MAX:
            raise ValueError(
                f"a vector clock holds at most CLOCK_ENTRIES_MAX={CLOCK_ENTRIES_MAX} entries, "
                f"got {len(self.entries)}"
            )
        for previous, entry in itertools.pairwise(self.entries):
            if previous.node_id == entry.node_id:
                raise ValueError(f"vector clock names node {entry.node_id!r} twice")
            if previous.node_id > entry.node_id:
                raise ValueError(
                    f"vector clock entries must ascend by node id: {entry.node_id!r} after "
                    f"{previous.node_id!r}"
                )

    @classmethod
    def empty(cls) -> VectorClock:
        return _EMPTY_CLOCK

    @classmethod
    def from_entries(cls, entries: Iterable[ClockEntry]) -> VectorClock:
        """A clock of ``entries`` in any order (still no node twice)."""
        return cls(tuple(sorted(entries, key=lambda entry: entry.node_id)))

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, node_id: str) -> int:
        """The counter of ``node_id``; 0 if the clock has no entry for it."""
        # A linear scan: clocks hold about ten entries, where it beats a dict built per call.
        for entry in self.entries:
            if entry.node_id == node_id:
                return entry.counter
        return 0

    def covers(self, dot: Dot) -> bool:
        """Whether the event ``dot`` is in the history this clock summarises."""
        return dot.counter <= self.get(dot.node_id)

    def merge(self, other: VectorClock) -> VectorClock:
        """The pointwise maximum; each entry keeps the wall_ms of its larger counter (the later
        wall_ms when the counters are equal)."""
        if not other.entries:
            return self
        merged = {entry.node_id: entry for entry in self.entries}
        for entry in other.entries:
            mine = merged.get(entry.node_id)
            if mine is None or _entry_rank(entry) > _entry_rank(mine):
                merged[entry.node_id] = entry
        return VectorClock.from_entries(merged.values())

    def with_dot(self, dot: Dot, wall_ms: int) -> VectorClock:
        """This clock merged with the single event ``dot``, which happened at ``wall_ms``."""
        return self.merge(VectorClock((ClockEntry(dot.node_id, dot.counter, wall_ms),)))

    def compare(self, other: VectorClock) -> Ordering:
        """Compare counters only (wall_ms plays no part)."""
        node_ids = {entry.node_id for entry in self.entries} | {
            entry.node_id for entry in other.entries
        }
        some_less = any(self.get(node_id) < other.get(node_id) for node_id in node_ids)
        some_greater = any(self.get(node_id) > other.get(node_id) for node_id in node_ids)
        if some_less and some_greater:
            return Ordering.CONCURRENT
        if some_less:
            return Ordering.BEFORE
        if some_greater:
            return Ordering.AFTER
        return Ordering.EQUAL

    def prune(self, entries_max: int) -> VectorClock:
        """Drop the entries that advanced longest ago (smallest wall_ms, then smallest node id)
        until at most ``entries_max`` remain (Dynamo 4.4).

        Pruning only ever removes coverage, so a version whose context was pruned obsoletes
        fewer versions: the failure mode is a spurious sibling, never a lost write. See the
        module docstring for its other costs and how to avoid them.
        """
        if not 1 <= entries_max <= CLOCK_ENTRIES_MAX:
            raise ValueError(
                f"entries_max must be in 1..CLOCK_ENTRIES_MAX={CLOCK_ENTRIES_MAX}, got "
                f"{entries_max}"
            )
        excess = len(self.entries) - entries_max
        if excess <= 0:
            return self
        oldest_first = sorted(self.entries, key=lambda entry: (entry.wall_ms, entry.node_id))
        return VectorClock.from_entries(oldest_first[excess:])


_EMPTY_CLOCK = VectorClock(())


def _entry_rank(entry: ClockEntry) -> tuple[int, int]:
    return entry.counter, entry.wall_ms


# ---------------------------------------------------------------------------------------------
# Versions and reconciliation.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Version:
    """One immutable version of a key: the event ``dot`` that made it, the ``context`` its
    writer had seen, the value (None for a tombstone: a delete is a write), and when the
    coordinator made it (wall clock, ms; used by pruning and by last-writer-wins only)."""

    dot: Dot
    context: VectorClock
    value: bytes | None
    wall_ms: int

    def __post_init__(self) -> None:
        if self.value is not None:
            if not isinstance(self.value, bytes):
                raise TypeError(f"value must be bytes or None, got {type(self.value).__name__}")
            if len(self.value) > VALUE_BYTES_MAX:
                raise ValueError(f"value is {len(self.value)} bytes, over {VALUE_BYTES_MAX}")
        _check_wall_ms(self.wall_ms)
        # A writer cannot have seen the event that makes its own version; a context covering its
        # own dot would also let two copies of one version obsolete each other.
        if self.context.covers(self.dot):
            raise ValueError(
                f"version {self.dot} has a context that already covers its own dot "
                f"({self.dot.node_id!r}: {self.context.get(self.dot.node_id)})"
            )

    @property
    def is_tombstone(self) -> bool:
        return self.value is None

    def history(self) -> VectorClock:
        """The causal history of this version as a vector clock: its context plus its dot."""
        return self.context.with_dot(self.dot, self.wall_ms)


def obsoletes(newer: Version, older: Version) -> bool:
    """Whether ``newer`` supersedes ``older``: its writer had seen ``older``'s event."""
    return older.dot != newer.dot and newer.context.covers(older.dot)


def reconcile(versions: Iterable[Version]) -> tuple[Version, ...]:
    """Dynamo's syntactic reconciliation: the versions no other version obsoletes, by dot.

    Duplicates (the same dot) count once; two different versions with one dot raise
    ``VersionConflictError``. The result is the join of a semilattice (commutative, associative,
    idempotent) on histories made by the rules in the module docstring.
    """
    unique: dict[Dot, Version] = {}
    for version in versions:
        seen = unique.setdefault(version.dot, version)
        if seen != version:
            raise VersionConflictError(
                f"two different versions share the dot {version.dot}: {seen!r} and {version!r}"
            )
    # A version is obsolete when any other version's context covers its dot. Taking, per node,
    # the largest counter any context holds answers that for every version in one pass, instead
    # of comparing every pair. A version's own context never covers its own dot (Version checks
    # it), so a version is never counted as obsoleting itself.
    covered_up_to: dict[str, int] = {}
    for version in unique.values():
        for entry in version.context.entries:
            if entry.counter > covered_up_to.get(entry.node_id, 0):
                covered_up_to[entry.node_id] = entry.counter
    survivors = [
        version
        for dot, version in unique.items()
        if dot.counter > covered_up_to.get(dot.node_id, 0)
    ]
    survivors.sort(key=lambda version: version.dot)
    return tuple(survivors)


def read_context(siblings: Iterable[Version]) -> VectorClock:
    """The context a get returns: the merge of every sibling's history (tombstones included, so
    a put from it supersedes them too). A put from it obsoletes every sibling read."""
    context = VectorClock.empty()
    for version in siblings:
        context = context.merge(version.history())
    return context


def next_version(
    local: Iterable[Version],
    context: VectorClock,
    coordinator_id: str,
    value: bytes | None,
    now_wall_ms: int,
    clock_entries_max: int = CLOCK_ENTRIES_MAX_DEFAULT,
    counter_floor: int = 0,
) -> Version:
    """The version a put (``value``) or delete (None) coordinated by ``coordinator_id`` makes
    (Dynamo 4.5: "the coordinator generates the vector clock for the new version and writes
    the new version locally").

    ``local`` is the sibling set stored on the coordinator, ``context`` the client's (empty for
    a blind write). The new dot's counter is one more than any counter of the coordinator in the
    context, in a local dot, or in a local context, so the coordinator never mints a dot twice
    for this key as long as the caller keeps duties 1 and 2 of the module docstring: hold the
    key's lock from reading ``local`` to storing the result, and store it durably before
    replicating (then duty 3: replicate the whole merged set). The new version's context is the
    client's, pruned to ``clock_entries_max`` entries.

    The counter is also above ``counter_floor``. Once a key is forgotten entirely (tombstone
    collection), ``local`` no longer remembers the coordinator's counters for it, and a put
    from an empty context would mint (A,1) again, a dot that old contexts still in clients'
    hands, and tombstones not yet collected on other replicas, already cover: the new write
    would be obsolete on arrival, acknowledged and lost. (The chaos harness found this.) A
    floor that only grows, such as the node's WAL sequence, makes every dot the node mints
    new, the role Riak's per-vnode counters play.

    Raises ``TooManySiblingsError`` if the key would hold more than SIBLINGS_MAX siblings.
    """
    local_versions = tuple(local)
    counter = max(context.get(coordinator_id), counter_floor)
    for version in local_versions:
        if version.dot.node_id == coordinator_id:
            counter = max(counter, version.dot.counter)
        counter = max(counter, version.context.get(coordinator_id))
    new = Version(
        Dot(coordinator_id, counter + 1),
        context.prune(clock_entries_max),
        value,
        now_wall_ms,
    )
    sibling_count = len(reconcile((*local_versions, new)))
    if sibling_count > SIBLINGS_MAX:
        raise TooManySiblingsError(
            f"the put would leave {sibling_count} siblings, over SIBLINGS_MAX={SIBLINGS_MAX}: "
            "read the key and put with its context to merge them"
        )
    return new


def write_context(version: Version, siblings: Iterable[Version]) -> VectorClock:
    """The context a put hands back to its writer: what the writer has seen, and no more.

    That is the version's context plus its dot, and the vector of the two, the version's
    history, says so unless it claims more. {A:8} from context {A:4} and dot (A,8) claims
    (A,5) to (A,7) too. That matters only if one of them is a live version of this key: A
    minted it, so it is in A's sibling set, ``siblings`` (the set the new version joined), or
    was already obsoleted there. When such a sibling exists the writer never saw it, and a
    later put from {A:8} would silently supersede it (the chaos checker found this as stale
    reads); the context alone is returned then: a later put from it keeps this version as a
    sibling, which is safe, and the next read shows the writer both.
    """
    dot = version.dot
    low = version.context.get(dot.node_id)
    for sibling in siblings:
        other = sibling.dot
        if other.node_id == dot.node_id and low < other.counter < dot.counter:
            return version.context
    return version.history()


def last_writer_wins(versions: Iterable[Version]) -> tuple[Version, int]:
    """LOSSY: the version with the largest (wall_ms, dot), and how many other distinct live
    (non-tombstone) versions it throws away.

    This is what a store without version vectors does (Cassandra decides each cell so): the
    skew between the coordinators' clocks, not causality, picks the winner, and a concurrent
    write, or even a causally later one made on a node whose clock is behind, is discarded
    without a trace. The chaos harness runs it as a negative control: its checker must find the
    lost writes.
    """
    unique = {version.dot: version for version in versions}
    if not unique:
        raise ValueError("last_writer_wins needs at least one version")
    winner = max(unique.values(), key=lambda version: (version.wall_ms, version.dot))
    discarded = sum(
        1 for dot, version in unique.items() if dot != winner.dot and not version.is_tombstone
    )
    return winner, discarded


# ---------------------------------------------------------------------------------------------
# Codec.
# ---------------------------------------------------------------------------------------------

_NODE_ID_LENGTH = struct.Struct(">B")
_ENTRY_FIELDS = struct.Struct(">QQ")  # counter, wall_ms (after the node id)
_HEADER = struct.Struct(">BH")  # format version, count (context entries or siblings)
_SIBLING_FIELDS = struct.Struct(">QQBH")  # dot counter, wall_ms, kind, context entry count
_VALUE_LENGTH = struct.Struct(">I")


def encode_context(clock: VectorClock) -> bytes:
    """The opaque context handed to a client; the empty clock is b""."""
    if not clock.entries:
        return b""
    parts = [_HEADER.pack(FORMAT_VERSION, len(clock.entries))]
    _encode_entries(clock, parts)
    return b"".join(parts)


def decode_context(data: bytes) -> VectorClock:
    """The clock of a context from ``encode_context``; b"" is the empty clock.

    ValueError, naming what is wrong, for anything ``encode_context`` would not have made.
    """
    if not data:
        return VectorClock.empty()
    reader = _Reader(data, "context")
    _check_format_version(reader)
    (_, entry_count) = reader.unpack(_HEADER)
    if entry_count == 0:
        raise ValueError("context: a non-empty context holds at least one entry")
    clock = _decode_entries(reader, entry_count)
    reader.expect_end()
    return clock


def encode_siblings(versions: Iterable[Version]) -> bytes:
    """The stored and replicated form of a sibling set, in canonical (ascending dot) order.

    ValueError for two versions with one dot (reconcile first) or more than SIBLINGS_MAX.
    """
    ordered = sorted(versions, key=lambda version: version.dot)
    if len(ordered) > SIBLINGS_MAX:
        raise ValueError(f"{len(ordered)} siblings, over SIBLINGS_MAX={SIBLINGS_MAX}")
    parts = [_HEADER.pack(FORMAT_VERSION, len(ordered))]
    previous: Dot | None = None
    for version in ordered:
        if version.dot == previous:
            raise ValueError(f"two versions share the dot {version.dot}: reconcile before encoding")
        previous = version.dot
        _encode_sibling(version, parts)
    return b"".join(parts)


def decode_siblings(data: bytes) -> tuple[Version, ...]:
    """The sibling set ``encode_siblings`` made, in ascending dot order.

    ValueError, naming what is wrong, for anything ``encode_siblings`` would not have made.
    """
    reader = _Reader(data, "sibling set")
    _check_format_version(reader)
    (_, sibling_count) = reader.unpack(_HEADER)
    if sibling_count > SIBLINGS_MAX:
        raise ValueError(f"sibling set: {sibling_count} siblings, over SIBLINGS_MAX={SIBLINGS_MAX}")
    versions: list[Version] = []
    for index in range(sibling_count):
        reader.what = f"sibling set: sibling {index}"
        version = _decode_sibling(reader)
        if versions and not versions[-1].dot < version.dot:
            raise ValueError(
                f"{reader.what}: dot {version.dot} does not ascend after {versions[-1].dot}"
            )
        versions.append(version)
    reader.what = "sibling set"
    reader.expect_end()
    return tuple(versions)


def digest(versions: Iterable[Version]) -> bytes:
    """A DIGEST_BYTES digest of a reconciled sibling set: blake2b of its canonical encoding.

    Two replicas holding the same set (in any order) get the same digest, and different sets
    different digests (but for blake2b collisions). It does not reconcile: pass stored,
    reconciled sets, as anti-entropy does.
    """
    return digest_encoded(encode_siblings(versions))


def digest_encoded(data: bytes) -> bytes:
    """``digest`` of an already encoded set, without decoding it: equal to
    ``digest(decode_siblings(data))`` for every ``data`` that decodes, as the encoding is
    canonical."""
    return hashlib.blake2b(data, digest_size=DIGEST_BYTES).digest()


def _encode_entries(clock: VectorClock, parts: list[bytes]) -> None:
    for entry in clock.entries:
        node_id = entry.node_id.encode()
        parts.append(_NODE_ID_LENGTH.pack(len(node_id)))
        parts.append(node_id)
        parts.append(_ENTRY_FIELDS.pack(entry.counter, entry.wall_ms))


def _encode_sibling(version: Version, parts: list[bytes]) -> None:
    node_id = version.dot.node_id.encode()
    kind = SiblingKind.TOMBSTONE if version.value is None else SiblingKind.VALUE
    parts.append(_NODE_ID_LENGTH.pack(len(node_id)))
    parts.append(node_id)
    parts.append(
        _SIBLING_FIELDS.pack(version.dot.counter, version.wall_ms, kind, len(version.context))
    )
    _encode_entries(version.context, parts)
    if version.value is not None:
        parts.append(_VALUE_LENGTH.pack(len(version.value)))
        parts.append(version.value)


def _decode_sibling(reader: _Reader) -> Version:
    node_id = reader.node_id()
    counter, wall_ms, kind, entry_count = reader.unpack(_SIBLING_FIELDS)
    if kind not in (SiblingKind.VALUE, SiblingKind.TOMBSTONE):
        raise ValueError(f"{reader.what}: unknown kind {kind}")
    context = _decode_entries(reader, entry_count)
    value: bytes | None = None
    if kind == SiblingKind.VALUE:
        (value_length,) = reader.unpack(_VALUE_LENGTH)
        value = reader.take(value_length)
    try:
        return Version(Dot(node_id, counter), context, value, wall_ms)
    except ValueError as error:
        raise ValueError(f"{reader.what}: {error}") from error


def _decode_entries(reader: _Reader, entry_count: int) -> VectorClock:
    if entry_count > CLOCK_ENTRIES_MAX:
        raise ValueError(
            f"{reader.what}: {entry_count} clock entries, over CLOCK_ENTRIES_MAX="
            f"{CLOCK_ENTRIES_MAX}"
        )
    entries = []
    for _ in range(entry_count):
        node_id = reader.node_id()
        counter, wall_ms = reader.unpack(_ENTRY_FIELDS)
        entries.append((node_id, counter, wall_ms))
    try:
        return VectorClock(tuple(ClockEntry(*fields) for fields in entries))
    except ValueError as error:
        raise ValueError(f"{reader.what}: {error}") from error


def _check_format_version(reader: _Reader) -> None:
    version = reader.peek_byte()
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{reader.what}: format version {version} is not supported (expected {FORMAT_VERSION})"
        )


class _Reader:
    """A cursor over bytes that raises ValueError, naming ``what`` it was reading, instead of
    reading past the end."""

    def __init__(self, data: bytes, what: str) -> None:
        if not isinstance(data, bytes):
            raise TypeError(f"{what}: expected bytes, got {type(data).__name__}")
        self.data = data
        self.offset = 0
        self.what = what

    def peek_byte(self) -> int:
        if self.offset >= len(self.data):
            raise ValueError(f"{self.what}: truncated at byte {self.offset} (empty)")
        return self.data[self.offset]

    def take(self, length: int) -> bytes:
        end = self.offset + length
        if end > len(self.data):
            raise ValueError(
                f"{self.what}: truncated: needs {length} bytes at byte {self.offset}, but only "
                f"{len(self.data) - self.offset} remain"
            )
        chunk = self.data[self.offset : end]
        self.offset = end
        return chunk

    def unpack(self, layout: struct.Struct) -> tuple[int, ...]:
        fields: tuple[int, ...] = layout.unpack(self.take(layout.size))
        return fields

    def node_id(self) -> str:
        (length,) = self.unpack(_NODE_ID_LENGTH)
        raw = self.take(length)
        try:
            return raw.decode()
        except UnicodeDecodeError as error:
            raise ValueError(f"{self.what}: node id {raw!r} is not UTF-8") from error

    def expect_end(self) -> None:
        if self.offset != len(self.data):
            raise ValueError(
                f"{self.what}: {len(self.data) - self.offset} bytes left over after byte "
                f"{self.offset}"
            )


# ---------------------------------------------------------------------------------------------
# Input checks.
# ---------------------------------------------------------------------------------------------


def _check_counter(counter: int) -> None:
    if isinstance(counter, bool) or not isinstance(counter, int):
        raise TypeError(f"counter must be an int, got {counter!r}")
    if not 1 <= counter <= COUNTER_MAX:
        raise ValueError(f"counter must be in 1..2**64 - 1, got {counter}")


def _check_wall_ms(wall_ms: int) -> None:
    if isinstance(wall_ms, bool) or not isinstance(wall_ms, int):
        raise TypeError(f"wall_ms must be an int, got {wall_ms!r}")
    if not 0 <= wall_ms <= WALL_MS_MAX:
        raise ValueError(f"wall_ms must be in 0..2**64 - 1, got {wall_ms}")


__all__ = [
    "CLOCK_ENTRIES_MAX",
    "CLOCK_ENTRIES_MAX_DEFAULT",
    "COUNTER_MAX",
    "DIGEST_BYTES",
    "FORMAT_VERSION",
    "SIBLINGS_MAX",
    "VALUE_BYTES_MAX",
    "WALL_MS_MAX",
    "ClockEntry",
    "Dot",
    "Ordering",
    "SiblingKind",
    "TooManySiblingsError",
    "VectorClock",
    "Version",
    "VersionConflictError",
    "decode_context",
    "decode_siblings",
    "digest",
    "digest_encoded",
    "encode_context",
    "encode_siblings",
    "last_writer_wins",
    "next_version",
    "obsoletes",
    "read_context",
    "reconcile",
    "write_context",
]
