"""Every Raft message survives the trip through protobuf unchanged."""

from __future__ import annotations

import pytest

from distlab.proto import raft_pb2
from distlab.raft.codec import message_from_proto, message_to_proto
from distlab.raft.core import (
    AppendRequest,
    AppendResponse,
    Entry,
    EntryKind,
    Message,
    Snapshot,
    SnapshotRequest,
    SnapshotResponse,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)

ENTRIES = (
    Entry(3, 7, EntryKind.NOOP, b""),
    Entry(3, 8, EntryKind.NORMAL, b"put k v"),
    Entry(4, 9, EntryKind.CONFIG, b"a,b,c"),
)
MESSAGES: list[Message] = [
    VoteRequest(5, "a", "b", 9, 4, pre_vote=True, transfer=False),
    VoteRequest(5, "a", "b", 9, 4, pre_vote=False, transfer=True),
    VoteResponse(5, "b", "a", granted=True, pre_vote=True),
    AppendRequest(4, "a", "c", 6, 3, ENTRIES, 8, 0),
    AppendRequest(4, "a", "c", 9, 4, (), 9, 17),
    AppendResponse(4, "c", "a", success=False, match_index=6, conflict_index=4, context=0),
    SnapshotRequest(4, "a", "c", Snapshot(100, 4, frozenset({"a", "b", "c"}), b"\x00state")),
    SnapshotResponse(4, "c", "a", 100),
    TimeoutNow(6, "a", "b"),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda message: type(message).__name__)
def test_round_trip(message: Message) -> None:
    wire = raft_pb2.RaftMessage.FromString(message_to_proto(message).SerializeToString())
    assert message_from_proto(wire) == message


def test_a_message_without_a_body_or_with_an_unknown_entry_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="body"):
        message_from_proto(raft_pb2.RaftMessage(term=1, source="a", target="b"))
    bad = message_to_proto(AppendRequest(1, "a", "b", 0, 0, ENTRIES[:1], 0, 0))
    bad.append_request.entries[0].kind = "mystery"
    with pytest.raises(ValueError, match="mystery"):
        message_from_proto(bad)
