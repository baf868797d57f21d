"""The state machine of ``distlab raft node``: a key-value register, linearizable because Raft
orders every write and serves every read through ReadIndex.

It is the smallest useful ``StateMachine`` (see ``distlab.raft.node``): commands are puts and
deletes, queries are gets, the snapshot is the whole map. The queue's controller and the job
scheduler plug their own state machines into the same node.

Encodings (big-endian): a command is op (u8: 1 put, 2 delete), key length (u32), key, value; a
query is the key; a query's answer is b"\\x01" + value when the key is present and b"\\x00" when
absent; a snapshot is the pair count (u32), then per pair in key order key length (u32), value
length (u32), key, value.
"""

from __future__ import annotations

import struct

PUT, DELETE = 1, 2
_COMMAND = struct.Struct(">BI")  # op, key length; then key, then value
_COUNT = struct.Struct(">I")
_PAIR = struct.Struct(">II")
FOUND, ABSENT = b"\x01", b"\x00"


def encode_command(op: int, key: bytes, value: bytes = b"") -> bytes:
    return _COMMAND.pack(op, len(key)) + key + value


def decode_command(data: bytes) -> tuple[int, bytes, bytes]:
    op, key_length = _COMMAND.unpack_from(data)
    start = _COMMAND.size
    return op, data[start : start + key_length], data[start + key_length :]


def decode_answer(answer: bytes) -> bytes | None:
    """The value a query's answer carries, None if the key was absent."""
    return answer[1:] if answer[:1] == FOUND else None


class KeyValueRegister:
    def __init__(self) -> None:
        self.values: dict[bytes, bytes] = {}

    def apply(self, command: bytes) -> bytes:
        op, key, value = decode_command(command)
        if op == PUT:
            self.values[key] = value
        elif op == DELETE:
            self.values.pop(key, None)
        # Any other op is a no-op on every replica alike (the servicer never logs one).
        return b""

    def query(self, query: bytes) -> bytes:
        value = self.values.get(query)
        return ABSENT if value is None else FOUND + value

    def snapshot(self) -> bytes:
        parts = [_COUNT.pack(len(self.values))]
        for key in sorted(self.values):
            value = self.values[key]
            parts += [_PAIR.pack(len(key), len(value)), key, value]
        return b"".join(parts)

    def restore(self, data: bytes) -> None:
        values = {}
        if data:
            (count,) = _COUNT.unpack_from(data)
            offset = _COUNT.size
            for _ in range(count):
                key_length, value_length = _PAIR.unpack_from(data, offset)
                offset += _PAIR.size
                key = data[offset : offset + key_length]
                offset += key_length
                values[key] = data[offset : offset + value_length]
                offset += value_length
        self.values = values
