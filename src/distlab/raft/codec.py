"""Raft's messages between ``distlab.raft.core`` values and their protobuf form (raft.proto).

Conversion only: the core never sees protobuf, the wire never sees core objects. Decoding checks
what protobuf cannot (a known entry kind, a body present) and raises ValueError otherwise, which
the servicer answers with INVALID_ARGUMENT.
"""

from __future__ import annotations

from distlab.proto import raft_pb2
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


def entry_to_proto(entry: Entry) -> raft_pb2.RaftEntry:
    return raft_pb2.RaftEntry(
        term=entry.term, index=entry.index, kind=str(entry.kind), data=entry.data
    )


def entry_from_proto(entry: raft_pb2.RaftEntry) -> Entry:
    try:
        kind = EntryKind(entry.kind)
    except ValueError:
        raise ValueError(f"unknown entry kind {entry.kind!r}") from None
    return Entry(term=entry.term, index=entry.index, kind=kind, data=entry.data)


def snapshot_to_proto(snapshot: Snapshot) -> raft_pb2.RaftSnapshot:
    return raft_pb2.RaftSnapshot(
        index=snapshot.index,
        term=snapshot.term,
        voters=sorted(snapshot.voters),
        data=snapshot.data,
    )


def snapshot_from_proto(snapshot: raft_pb2.RaftSnapshot) -> Snapshot:
    return Snapshot(
        index=snapshot.index,
        term=snapshot.term,
        voters=frozenset(snapshot.voters),
        data=snapshot.data,
    )


def message_to_proto(message: Message) -> raft_pb2.RaftMessage:
    wire = raft_pb2.RaftMessage(term=message.term, source=message.source, target=message.target)
    if isinstance(message, VoteRequest):
        wire.vote_request.CopyFrom(
            raft_pb2.VoteRequestBody(
                last_index=message.last_index,
                last_term=message.last_term,
                pre_vote=message.pre_vote,
                transfer=message.transfer,
            )
        )
    elif isinstance(message, VoteResponse):
        wire.vote_response.CopyFrom(
            raft_pb2.VoteResponseBody(granted=message.granted, pre_vote=message.pre_vote)
        )
    elif isinstance(message, AppendRequest):
        wire.append_request.CopyFrom(
            raft_pb2.AppendRequestBody(
                prev_index=message.prev_index,
                prev_term=message.prev_term,
                entries=[entry_to_proto(entry) for entry in message.entries],
                commit=message.commit,
                context=message.context,
            )
        )
    elif isinstance(message, AppendResponse):
        wire.append_response.CopyFrom(
            raft_pb2.AppendResponseBody(
                success=message.success,
                match_index=message.match_index,
                conflict_index=message.conflict_index,
                context=message.context,
            )
        )
    elif isinstance(message, SnapshotRequest):
        wire.snapshot_request.CopyFrom(
            raft_pb2.SnapshotRequestBody(snapshot=snapshot_to_proto(message.snapshot))
        )
    elif isinstance(message, SnapshotResponse):
        wire.snapshot_response.CopyFrom(
            raft_pb2.SnapshotResponseBody(match_index=message.match_index)
        )
    else:
        wire.timeout_now.CopyFrom(raft_pb2.TimeoutNowBody())
    return wire


def message_from_proto(wire: raft_pb2.RaftMessage) -> Message:
    head = (wire.term, wire.source, wire.target)
    body = wire.WhichOneof("body")
    if body == "vote_request":
        vote = wire.vote_request
        return VoteRequest(*head, vote.last_index, vote.last_term, vote.pre_vote, vote.transfer)
    if body == "vote_response":
        return VoteResponse(*head, wire.vote_response.granted, wire.vote_response.pre_vote)
    if body == "append_request":
        append = wire.append_request
        return AppendRequest(
            *head,
            append.prev_index,
            append.prev_term,
            tuple(entry_from_proto(entry) for entry in append.entries),
            append.commit,
            append.context,
        )
    if body == "append_response":
        reply = wire.append_response
        return AppendResponse(
            *head, reply.success, reply.match_index, reply.conflict_index, reply.context
        )
    if body == "snapshot_request":
        return SnapshotRequest(*head, snapshot_from_proto(wire.snapshot_request.snapshot))
    if body == "snapshot_response":
        return SnapshotResponse(*head, wire.snapshot_response.match_index)
    if body == "timeout_now":
        return TimeoutNow(*head)
    raise ValueError("a Raft message needs a body")
