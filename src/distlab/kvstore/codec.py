"""Conversion between the kvstore protobuf messages and the cores' own values.

Protobuf types stop here and in the servicers: the cores see bytes and dataclasses only.
"""

from __future__ import annotations

from distlab.kvstore.membership import MemberState, MemberStatus
from distlab.proto import kvstore_pb2


def member_to_proto(state: MemberState) -> kvstore_pb2.MemberState:
    return kvstore_pb2.MemberState(
        node_id=state.node_id,
        address=state.address,
        weight=state.weight,
        status=state.status.name,
        generation=state.generation,
        heartbeat=state.heartbeat,
    )


def member_from_proto(member: kvstore_pb2.MemberState) -> MemberState:
    """Raises ValueError (or KeyError for an unknown status) on a malformed member."""
    return MemberState(
        node_id=member.node_id,
        address=member.address,
        weight=member.weight,
        status=MemberStatus[member.status],
        generation=member.generation,
        heartbeat=member.heartbeat,
    )
