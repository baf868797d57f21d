"""Conversion between the KeyValue protobuf messages and the store's own values.

Protobuf types stop here: the storage engine and (later) the quorum coordinator see bytes and
dataclasses only.
"""

from __future__ import annotations

from distlab.proto import kvstore_pb2


def put_response(sequence: int) -> kvstore_pb2.PutResponse:
    return kvstore_pb2.PutResponse(sequence=sequence)


def get_response(values: list[bytes]) -> kvstore_pb2.GetResponse:
    return kvstore_pb2.GetResponse(siblings=[kvstore_pb2.Sibling(value=value) for value in values])


def delete_response(sequence: int) -> kvstore_pb2.DeleteResponse:
    return kvstore_pb2.DeleteResponse(sequence=sequence)


def sibling_values(response: kvstore_pb2.GetResponse) -> list[bytes]:
    return [sibling.value for sibling in response.siblings]
