"""Consistent hashing with virtual nodes: the partitioning ring of Dynamo.

Implements:
- Consistent hashing (Karger et al., "Consistent Hashing and Random Trees", STOC 1997): nodes and
  keys hash onto the same circle; a key belongs to the first node clockwise from it, so a join or a
  leave moves only the keys on the arcs next to the node that came or went, about 1/k of them
  when the k-th node joins.
- Virtual nodes (DeCandia et al., "Dynamo: Amazon's Highly Available Key-value Store", SOSP 2007,
  section 4.2 Partitioning): each physical node holds many positions ("tokens") on the ring, which
  evens out the load, spreads a leaving node's keys over many successors instead of one, and lets a
  bigger machine take more positions (a weight).
- The preference list (Dynamo 2007, section 4.3 Replication): the N nodes that store a key are
  found by walking clockwise from the key, "skipping positions in the ring to ensure that the list
  contains only distinct physical nodes".
- The answers a store needs on a membership change: which ranges of primary ownership move from
  which node to which (`add_node`, `remove_node` return `RangeMove`s), and, for a replication
  factor N, which ranges each node gains or loses a replica of (`replica_changes`).

Leaves out:
- Dynamo's later partitioning strategies (section 6.2, strategy 3: Q equal-sized fixed partitions
  handed out as tokens). Tokens here are hashes, as in Dynamo's strategy 1 and Cassandra.
- Membership itself (gossip, seeds, failure detection), hinted handoff and "sloppy quorum" (a
  preference list that skips unreachable nodes), and moving any data: this module is sans-I/O and
  only says which ranges move; the store streams them.
- Rack or zone awareness when choosing replicas.

Theory of operation:
- The circle is the integers [0, 2**128). A key's token is MurmurHash3 x64 128-bit of the key
  bytes, read unsigned (`key_token`). Virtual node i of node X sits at the token of the UTF-8 bytes
  of f"{X}#{i}" (`vnode_token`). Decimal digits never contain "#", so splitting at the last "#"
  recovers (X, i): distinct vnodes hash distinct inputs.
- Ownership (the Dynamo and Cassandra convention): a position with token t owns the arc
  (t_previous, t], open on the left and closed on the right, where t_previous is the next position
  counter-clockwise. A key with token k belongs to the first position with token >= k; a key past
  the largest token wraps round to the smallest. A lookup is a binary search over the sorted
  tokens, O(log V) for V positions.
- If two vnodes hash to the same token (probability about V**2 / 2**129, so never in practice, but
  every node must still build the same ring), the vnode of the smaller node id keeps the position
  and the other holds no position while both are members.
- A join or a leave rebuilds the sorted token list, O(V log V). The ranges that changed are found
  by comparing the two rings on the arcs between consecutive tokens of either ring: on each such
  arc both rings are constant, so one lookup per arc at its right end tells what it was and what it
  is. Adjacent arcs with the same change are merged.
"""

import bisect
import itertools
import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import mmh3

TOKEN_BITS = 128
# The circle: tokens are the integers 0 .. TOKEN_COUNT - 1, the full output range of mmh3.hash128.
TOKEN_COUNT = 1 << TOKEN_BITS
TOKEN_MAX = TOKEN_COUNT - 1

# The separator between node id and vnode index in the bytes hashed for a vnode token. Changing it
# moves every vnode, so every node of a cluster must agree on it.
VNODE_KEY_SEPARATOR = "#"

# Load on a node is a sum of about V / nodes arc lengths, so its relative spread shrinks like
# 1 / sqrt(vnodes per node). At 128 the busiest of 8 nodes carries about 12% more than its fair
# share and the lightest about 11% less (tests/unit/test_hashring.py); Cassandra's long-standing
# default was 256.
DEFAULT_VNODES_PER_NODE = 128
# Past a few thousand vnodes the balance improves by under a percent, while memory and the
# O(V log V) rebuild on every join and leave keep growing linearly.
VNODES_PER_NODE_MAX = 4096
# A weight says how many times the default share a node should take (a bigger disk). Beyond 16
# one machine would own most of a small ring; give it several node ids instead.
WEIGHT_MAX = 16.0
# Membership of a study cluster is a handful of nodes; a thousand leaves room for simulations
# while keeping the per-join rebuild and range comparison cheap.
NODES_MAX = 1024
# Positions on the ring across all nodes. Every join or leave re-sorts and compares all of them,
# so this bounds memory (measured: about 20 MB held, 40 MB while re-sorting) and the time of one
# join or leave (measured: about 0.6 s at the limit, 1024 nodes of 256 vnodes).
RING_VNODES_MAX = 1 << 18
# Node ids are host names or "host:port"; 255 is the longest DNS name. The id is hashed once per
# vnode and travels in every message that names a replica, so it should stay short.
NODE_ID_BYTES_MAX = 255


def key_token(key: bytes) -> int:
    """The position of a key on the circle: MurmurHash3 x64 128-bit, seed 0, unsigned.

    The integer is the 16-byte digest (h1 then h2, each little-endian) read as one little-endian
    number, h2 * 2**64 + h1: another language must read it the same way to build the same ring.
    """
    token: int = mmh3.hash128(key, signed=False)
    return token


def vnode_token(node_id: str, index: int) -> int:
    """The position of virtual node `index` of `node_id`: the key token of f"{node_id}#{index}"."""
    check_node_id(node_id)
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    return key_token(f"{node_id}{VNODE_KEY_SEPARATOR}{index}".encode())


@dataclass(frozen=True, slots=True)
class TokenRange:
    """The arc (start, end] of the circle, open on the left, closed on the right.

    When start > end the arc wraps past TOKEN_MAX round to 0. start == end is the whole circle:
    the range of a ring with a single position at token t is (t, t], going all the way round from
    t back to t. No empty range is ever made, so the two cannot be confused.
    """

    start: int
    end: int

    def __post_init__(self) -> None:
        _check_token(self.start, "start")
        _check_token(self.end, "end")

    @property
    def is_full_circle(self) -> bool:
        return self.start == self.end

    @property
    def width(self) -> int:
        """How many tokens the range contains, from 1 to TOKEN_COUNT."""
        if self.is_full_circle:
            return TOKEN_COUNT
        return (self.end - self.start) % TOKEN_COUNT

    def contains(self, token: int) -> bool:
        _check_token(token, "token")
        if self.start < self.end:
            return self.start < token <= self.end
        # Wrapping (start > end): above start or up to end. With start == end that is every token.
        return token > self.start or token <= self.end


@dataclass(frozen=True, slots=True)
class RangeMove:
    """Primary ownership of `token_range` passes from `source` to `target`.

    `source` is None when the ring was empty before the change.
    """

    token_range: TokenRange
    source: str | None
    target: str


@dataclass(frozen=True, slots=True)
class ReplicaChange:
    """For a replication factor N, the nodes that gain and lose a replica of `token_range`.

    A gaining node must receive the range's data (from any node that held it before); a losing node
    may drop it once the gaining nodes have it.
    """

    token_range: TokenRange
    gained: frozenset[str]
    lost: frozenset[str]


class HashRing:
    """A consistent-hash ring of physical nodes, each holding weighted virtual nodes."""

    def __init__(self, vnodes_per_node: int = DEFAULT_VNODES_PER_NODE) -> None:
        if isinstance(vnodes_per_node, bool) or not isinstance(vnodes_per_node, int):
            raise TypeError(f"vnodes_per_node must be an int, got {vnodes_per_node!r}")
        if not 1 <= vnodes_per_node <= VNODES_PER_NODE_MAX:
            raise ValueError(
                f"vnodes_per_node must be in 1..{VNODES_PER_NODE_MAX}, got {vnodes_per_node}"
            )
        self._vnodes_per_node = vnodes_per_node
        # The tokens of every member's vnodes, kept so a rebuild does not re-hash them.
        self._node_tokens: dict[str, tuple[int, ...]] = {}
        # The ring: position i has token _tokens[i] (strictly increasing) and owner _owners[i].
        self._tokens: tuple[int, ...] = ()
        self._owners: tuple[str, ...] = ()
        # Members holding at least one position: all of them, unless a token tie left one with none.
        self._positioned_node_count = 0

    @property
    def vnodes_per_node(self) -> int:
        return self._vnodes_per_node

    @property
    def nodes(self) -> tuple[str, ...]:
        """The member node ids, sorted."""
        return tuple(sorted(self._node_tokens))

    @property
    def tokens(self) -> tuple[int, ...]:
        """The tokens of the ring's positions, ascending; each is the end of one primary range."""
        return self._tokens

    def __len__(self) -> int:
        return len(self._node_tokens)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._node_tokens

    def __repr__(self) -> str:
        return (
            f"HashRing(vnodes_per_node={self._vnodes_per_node}, nodes={list(self.nodes)!r}, "
            f"positions={len(self._tokens)})"
        )

    def copy(self) -> "HashRing":
        ring = HashRing(self._vnodes_per_node)
        ring._node_tokens = dict(self._node_tokens)
        ring._tokens = self._tokens
        ring._owners = self._owners
        ring._positioned_node_count = self._positioned_node_count
        return ring

    def vnode_count(self, node_id: str) -> int:
        """The vnodes the node was given; it holds fewer positions only after a token tie."""
        return len(self._node_tokens[self._check_member(node_id)])

    def add_node(self, node_id: str, weight: float = 1.0) -> list[RangeMove]:
        """Add a node with round(vnodes_per_node * weight) vnodes (at least 1).

        Returns the ranges whose primary owner changes: all of them move to `node_id`, each from
        the node that owned it before (None if the ring was empty), ordered by end token.
        """
        check_node_id(node_id)
        if node_id in self._node_tokens:
            raise ValueError(f"node_id {node_id!r} is already in the ring")
        if len(self._node_tokens) >= NODES_MAX:
            raise ValueError(f"node_id {node_id!r}: the ring already has NODES_MAX={NODES_MAX}")
        if not (math.isfinite(weight) and 0 < weight <= WEIGHT_MAX):
            raise ValueError(f"weight must be > 0 and <= {WEIGHT_MAX}, got {weight!r}")
        vnode_count = max(1, round(self._vnodes_per_node * weight))
        if len(self._tokens) + vnode_count > RING_VNODES_MAX:
            raise ValueError(
                f"node_id {node_id!r} with {vnode_count} vnodes would take the ring past "
                f"RING_VNODES_MAX={RING_VNODES_MAX} positions"
            )
        before = self.copy()
        self._node_tokens[node_id] = tuple(vnode_token(node_id, i) for i in range(vnode_count))
        self._rebuild()
        moves = _ownership_moves(before, self)
        assert all(move.target == node_id for move in moves), "a join moved keys between others"
        return moves

    def remove_node(self, node_id: str) -> list[RangeMove]:
        """Remove a node.

        Returns the ranges it owned, each moving to the node that owns it now, ordered by end
        token. Removing the last node returns []: no node is left to take its ranges.
        """
        self._check_member(node_id)
        before = self.copy()
        del self._node_tokens[node_id]
        self._rebuild()
        moves = _ownership_moves(before, self)
        assert all(move.source == node_id for move in moves), "a leave moved keys between others"
        return moves

    def owner(self, key: bytes) -> str:
        """The node owning the key: the owner of the first position clockwise at or after it."""
        return self.token_owner(key_token(key))

    def token_owner(self, token: int) -> str:
        """`owner` for a caller that already has the key's token."""
        _check_token(token, "token")
        if not self._tokens:
            raise LookupError("the ring is empty: add_node before looking up an owner")
        return self._owners[self._position_index(token)]

    def preference_list(self, key: bytes, n: int) -> list[str]:
        """The first n distinct physical nodes clockwise from the key, its owner first.

        Dynamo 2007, 4.3. With fewer than n nodes, all of them. An empty ring gives [].
        """
        return self.token_preference_list(key_token(key), n)

    def token_preference_list(self, token: int, n: int) -> list[str]:
        """`preference_list` for a caller that already has the key's token."""
        _check_token(token, "token")
        _check_replica_count(n)
        wanted = min(n, self._positioned_node_count)
        chosen: list[str] = []
        seen: set[str] = set()
        if wanted == 0:
            return chosen
        start = self._position_index(token)
        position_count = len(self._tokens)
        # Skipping positions of nodes already chosen; at most one lap of the ring.
        for step in range(position_count):
            node_id = self._owners[(start + step) % position_count]
            if node_id not in seen:
                seen.add(node_id)
                chosen.append(node_id)
                if len(chosen) == wanted:
                    break
        assert len(chosen) == wanted, "a lap of the ring must meet every positioned node"
        return chosen

    def ranges_of(self, node_id: str) -> list[TokenRange]:
        """The primary ranges of a node, one per position it holds, ordered by end token.

        Over all nodes these tile the circle exactly once.
        """
        self._check_member(node_id)
        return [
            TokenRange(self._tokens[index - 1], token)  # index - 1 wraps to the last at index 0.
            for index, token in enumerate(self._tokens)
            if self._owners[index] == node_id
        ]

    def _position_index(self, token: int) -> int:
        # The first position with a token >= the key's; past the largest, wrap to the first.
        index = bisect.bisect_left(self._tokens, token)
        return 0 if index == len(self._tokens) else index

    def _check_member(self, node_id: str) -> str:
        if node_id not in self._node_tokens:
            raise KeyError(f"node_id {node_id!r} is not in the ring")
        return node_id

    def _rebuild(self) -> None:
        claims = sorted(
            (token, node_id) for node_id, tokens in self._node_tokens.items() for token in tokens
        )
        tokens: list[int] = []
        owners: list[str] = []
        for token, node_id in claims:
            if tokens and tokens[-1] == token:
                # A tie: sorting put the smaller node id first and it keeps the position.
                continue
            tokens.append(token)
            owners.append(node_id)
        self._tokens = tuple(tokens)
        self._owners = tuple(owners)
        self._positioned_node_count = len(set(owners))
        assert all(a < b for a, b in itertools.pairwise(tokens)), "tokens not ascending"
        assert self._positioned_node_count <= len(self._node_tokens)


def replica_changes(before: HashRing, after: HashRing, n: int) -> list[ReplicaChange]:
    """For replication factor n, the ranges whose replica set (preference list) differs.

    Each change names the nodes that gained and lost a replica of its range; ranges with the same
    replicas in both rings are left out. Ordered by end token.
    """
    _check_replica_count(n)

    def change_at(token: int) -> tuple[frozenset[str], frozenset[str]] | None:
        old = frozenset(before.token_preference_list(token, n))
        new = frozenset(after.token_preference_list(token, n))
        return None if old == new else (new - old, old - new)

    return [
        ReplicaChange(token_range, gained, lost)
        for token_range, (gained, lost) in _changed_ranges(before, after, change_at)
    ]


def _ownership_moves(before: HashRing, after: HashRing) -> list[RangeMove]:
    if not after.tokens:
        return []

    def move_at(token: int) -> tuple[str | None, str] | None:
        source = before.token_owner(token) if before.tokens else None
        target = after.token_owner(token)
        return None if source == target else (source, target)

    return [
        RangeMove(token_range, source, target)
        for token_range, (source, target) in _changed_ranges(before, after, move_at)
    ]


Change = TypeVar("Change", bound=Hashable)


def _changed_ranges(
    before: HashRing, after: HashRing, change_at: Callable[[int], Change | None]
) -> list[tuple[TokenRange, Change]]:
    """The maximal ranges over which `change_at` is the same non-None value, by end token.

    Between two consecutive tokens of either ring both rings are constant, so `change_at` is
    evaluated once per such arc, at its closed right end.
    """
    ends = sorted(set(before.tokens) | set(after.tokens))
    return _merge_arcs(ends, [change_at(end) for end in ends])


def _merge_arcs(
    ends: Sequence[int], changes: Sequence[Change | None]
) -> list[tuple[TokenRange, Change]]:
    # Arc i is (ends[i - 1], ends[i]]; arc 0 wraps round from the last end.
    assert len(ends) == len(changes)
    arc_count = len(ends)
    # Start the walk at an arc whose change differs from the one before, so no run of equal
    # changes straddles the starting point.
    first = next((i for i in range(arc_count) if changes[i] != changes[i - 1]), None)
    if first is None:
        # Zero arcs, or one change all the way round the circle.
        if arc_count == 0 or changes[0] is None:
            return []
        return [(TokenRange(ends[-1], ends[-1]), changes[0])]
    merged: list[tuple[TokenRange, Change]] = []
    run_start = ends[first - 1]
    for offset in range(arc_count):
        index = (first + offset) % arc_count
        change = changes[index]
        if changes[(index + 1) % arc_count] != change:
            if change is not None:
                merged.append((TokenRange(run_start, ends[index]), change))
            run_start = ends[index]
    assert all(not token_range.is_full_circle for token_range, _ in merged)
    return sorted(merged, key=lambda item: item[0].end)


def check_node_id(node_id: str) -> None:
    """A node id every module accepts: a non-empty str of at most NODE_ID_BYTES_MAX in UTF-8."""
    if not isinstance(node_id, str):
        raise TypeError(f"node_id must be a str, got {node_id!r}")
    if not node_id:
        raise ValueError("node_id must not be empty")
    try:
        size_bytes = len(node_id.encode())
    except UnicodeEncodeError as error:
        raise ValueError(f"node_id {node_id!r} is not encodable as UTF-8") from error
    if size_bytes > NODE_ID_BYTES_MAX:
        raise ValueError(
            f"node_id is {size_bytes} bytes in UTF-8, more than NODE_ID_BYTES_MAX="
            f"{NODE_ID_BYTES_MAX}"
        )


def _check_token(token: int, name: str) -> None:
    if not 0 <= token <= TOKEN_MAX:
        raise ValueError(f"{name} must be a token in 0..2**{TOKEN_BITS} - 1, got {token}")


def _check_replica_count(n: int) -> None:
    if n < 1:
        raise ValueError(f"n (replicas wanted) must be >= 1, got {n}")


__all__ = [
    "DEFAULT_VNODES_PER_NODE",
    "NODES_MAX",
    "NODE_ID_BYTES_MAX",
    "RING_VNODES_MAX",
    "TOKEN_BITS",
    "TOKEN_COUNT",
    "TOKEN_MAX",
    "VNODES_PER_NODE_MAX",
    "WEIGHT_MAX",
    "HashRing",
    "RangeMove",
    "ReplicaChange",
    "TokenRange",
    "key_token",
    "replica_changes",
    "vnode_token",
]
