"""Size and time limits enforced at the edge of every service (TigerBeetle: a limit on everything).

Each default has its reason beside it. Services check requests against a ``Limits`` before any
work is done, so an oversize value is refused with INVALID_ARGUMENT naming the field, and gRPC's
own message-size cap (derived here) refuses what would not even decode.
"""

from __future__ import annotations

from dataclasses import dataclass

from distlab.common.errors import invalid_argument

# Keys are routed, hashed, compared and logged; 1 KiB is generous for any real key (memcached
# allows 250 bytes, Cassandra warns past a few KiB) and keeps per-key metadata small.
KEY_BYTES_MAX_DEFAULT = 1024
# Values travel in one unary RPC and one WAL record; 1 MiB keeps a single write from
# monopolising a group commit (memcached's default item size limit is also 1 MiB).
VALUE_BYTES_MAX_DEFAULT = 1024 * 1024
# Headroom on top of key + value for the other request fields (context, framing).
MESSAGE_OVERHEAD_BYTES = 64 * 1024
# A server never works on one call longer than this, whatever deadline the client sent (or none):
# a call that outlives it holds memory and a concurrency slot that the next caller needs.
DEADLINE_MS_MAX_DEFAULT = 30_000
# What clients use when the caller names no deadline: every RPC has one.
CLIENT_DEADLINE_MS_DEFAULT = 5_000
# Calls admitted at once per server; past it gRPC answers RESOURCE_EXHAUSTED (shedding instead of
# collapse). 256 covers a 64-client benchmark several times over on a 2-core machine.
CONCURRENT_RPCS_MAX_DEFAULT = 256

# Bounds on the bounds themselves, so a typo in a flag cannot configure a 4 GiB value. A key and
# a value must fit together in one WAL record (wal.RECORD_PAYLOAD_BYTES_MAX, 16 MiB).
KEY_BYTES_MAX_CEILING = 64 * 1024
VALUE_BYTES_MAX_CEILING = 8 * 1024 * 1024
DEADLINE_MS_MAX_CEILING = 10 * 60 * 1000


@dataclass(frozen=True, slots=True)
class Limits:
    key_bytes_max: int = KEY_BYTES_MAX_DEFAULT
    value_bytes_max: int = VALUE_BYTES_MAX_DEFAULT
    deadline_ms_max: int = DEADLINE_MS_MAX_DEFAULT
    concurrent_rpcs_max: int = CONCURRENT_RPCS_MAX_DEFAULT

    def __post_init__(self) -> None:
        _check_range("key_bytes_max", self.key_bytes_max, 1, KEY_BYTES_MAX_CEILING)
        _check_range("value_bytes_max", self.value_bytes_max, 1, VALUE_BYTES_MAX_CEILING)
        _check_range("deadline_ms_max", self.deadline_ms_max, 1, DEADLINE_MS_MAX_CEILING)
        _check_range("concurrent_rpcs_max", self.concurrent_rpcs_max, 1, 1_000_000)

    @property
    def message_bytes_max(self) -> int:
        """gRPC's receive/send cap: the largest legal request plus framing headroom."""
        return self.key_bytes_max + self.value_bytes_max + MESSAGE_OVERHEAD_BYTES

    def check_key(self, key: bytes, field: str = "key") -> None:
        if not key:
            raise invalid_argument(field, "must not be empty")
        if len(key) > self.key_bytes_max:
            raise invalid_argument(
                field, f"is {len(key)} bytes; the limit is {self.key_bytes_max} bytes"
            )

    def check_value(self, value: bytes, field: str = "value") -> None:
        if len(value) > self.value_bytes_max:
            raise invalid_argument(
                field, f"is {len(value)} bytes; the limit is {self.value_bytes_max} bytes"
            )


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
