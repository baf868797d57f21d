"""The record codec of the write-ahead log: how one log record is framed as bytes, and how a
buffer of frames is decoded and verified. Pure: no file, no clock, no threads; the segment files
and fsync live in ``distlab.common.wal_file``.

What it implements
------------------
The framing of a redo log as the write-ahead logging protocol needs it (Mohan et al., "ARIES",
ACM TODS 17(1), 1992: a change is acknowledged only once its log record is on stable storage,
and restart redoes the changes from the log, so recovery must recognise exactly the records that
were completely written), kept as simple
as LevelDB's log format (``doc/log_format.md``: checksum, length, then data) minus its 32 KiB
blocks. Every frame carries a checksum, like every PostgreSQL WAL record (``xl_crc`` in
``XLogRecord``, checked by ``ValidXLogRecord`` before replay), and a sequence number, like
PostgreSQL's LSN, so that recovery can tell a record that belongs here from a stale or
misplaced one.

Frame layout (little endian, 16-byte header, then the payload)::

    offset  size  field
    ------  ----  -----------------------------------------------------------
         0     4  checksum   u32, CRC-32 of bytes 4 .. end of frame
         4     4  length     u32, payload length in bytes (<= RECORD_PAYLOAD_BYTES_MAX)
         8     8  sequence   u64, 1 for the first record of a log, +1 for each next one
        16     n  payload    opaque bytes, n = length

Why the checksum covers the header too: a checksum over the payload alone would let a corrupted
``length`` go unnoticed: the decoder would take a wrong slice as the payload (whose checksum
then fails, but only by luck of where the slice ends) and, worse, would start the next frame at
a wrong offset. A corrupted ``sequence`` would let a record be replayed in the wrong place. With
every byte after the checksum covered, any damage to a frame is caught by the one CRC check,
which is one contiguous ``zlib.crc32`` call because the checksum comes first.

Why CRC-32 and not CRC-32C: CRC-32C (Castagnoli), which LevelDB, RocksDB and PostgreSQL use, has
slightly better error detection and hardware support, but no implementation in Python's
standard library, and this module takes no dependencies. ``zlib.crc32`` (the IEEE 802.3
polynomial) detects every single-bit and every two-bit error, and every burst of 32 bits or
fewer, in frames of the sizes allowed here, which is what a torn or bit-rotted record looks like.

How decoding ends (``DecodeStop``): at ``END`` when the buffer ends exactly after a verified
frame; at ``TORN`` when it ends inside a frame (the header or the payload is incomplete: what a
crash in the middle of a write leaves at the tail of the log); at ``CORRUPT`` when a complete
frame fails verification (checksum, length bound, or a sequence number out of order). Decoding
stops at the first frame that is not ``END``-clean, and never returns a record it did not verify:
a torn tail followed by bytes that happen to look like a frame is still rejected by the checksum.

What it leaves out: splitting records into fixed blocks (LevelDB's FIRST/MIDDLE/LAST fragments,
which let a reader resynchronise after damage), a per-record type or format version byte (the
``.wal`` file name suffix stands for this format), compression and encryption. Deciding what a
bad frame *means* (a torn tail to cut off, or damage in the middle of the log to refuse) needs
to know which file it is in, so that rule lives in ``wal_file``; this module only offers
``find_intact_frame`` to look for evidence that the log went on past the damage.
"""

from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass

# The whole header at once, and the part after the checksum (which the checksum covers).
_HEADER = struct.Struct("<IIQ")
_LENGTH_AND_SEQUENCE = struct.Struct("<IQ")
_SEQUENCE = struct.Struct("<Q")

RECORD_HEADER_BYTES = _HEADER.size  # 16
# Where the checksummed bytes start, and where the sequence sits, within a frame.
_CHECKSUMMED_OFFSET = 4
_SEQUENCE_OFFSET = 8

# 16 MiB: far above any record distlab writes (a KV record holds a key of at most 1 KiB and a
# value of at most 1 MiB by default; gRPC's own default message cap is 4 MiB), so a real record
# never meets it; on decode, a length above it is treated as corruption, so a damaged length
# field can never make a reader allocate or skip gigabytes.
RECORD_PAYLOAD_BYTES_MAX = 16 * 1024 * 1024
# The sequence is a u64; 0 is never used, so "no record yet" can be written as 0.
SEQUENCE_MIN = 1
SEQUENCE_MAX = 2**64 - 1


@dataclass(frozen=True, slots=True)
class Record:
    sequence: int
    payload: bytes


class DecodeStop(enum.Enum):
    END = "end"  # the buffer ends exactly at a frame boundary
    TORN = "torn"  # the buffer ends inside a frame: an incomplete header or payload
    CORRUPT = "corrupt"  # a complete frame fails its checksum, length bound or sequence order


@dataclass(frozen=True, slots=True)
class DecodeResult:
    records: list[Record]
    valid_length: int  # bytes from the start of the buffer covered by the verified records
    stop: DecodeStop


def encode_record(sequence: int, payload: bytes) -> bytes:
    """One frame: the 16-byte header, then the payload. Raises ValueError on a bad argument."""
    if not SEQUENCE_MIN <= sequence <= SEQUENCE_MAX:
        raise ValueError(f"sequence must be in [{SEQUENCE_MIN}, {SEQUENCE_MAX}], got {sequence}")
    length = len(payload)
    if length > RECORD_PAYLOAD_BYTES_MAX:
        raise ValueError(
            f"payload is {length} bytes; the limit is RECORD_PAYLOAD_BYTES_MAX = "
            f"{RECORD_PAYLOAD_BYTES_MAX} bytes"
        )
    checksum = zlib.crc32(payload, zlib.crc32(_LENGTH_AND_SEQUENCE.pack(length, sequence)))
    return _HEADER.pack(checksum, length, sequence) + payload


def decode_records(
    buffer: bytes | memoryview, *, expected_sequence: int | None = None
) -> DecodeResult:
    """Decode frames from the start of ``buffer`` until it ends or a frame fails to verify.

    ``expected_sequence`` is the sequence the first frame must carry (None: whatever it carries,
    as long as it is a legal sequence); every next frame must carry the previous one plus 1.
    """
    view = memoryview(buffer).cast("B")
    end = len(view)
    records: list[Record] = []
    offset = 0
    # The loop is inlined (no helper call per frame) because recovery decodes whole segments:
    # a million small records should take about a second, not several.
    unpack_header = _HEADER.unpack_from
    crc32 = zlib.crc32
    while True:
        if offset == end:
            return DecodeResult(records, offset, DecodeStop.END)
        if end - offset < RECORD_HEADER_BYTES:
            return DecodeResult(records, offset, DecodeStop.TORN)
        checksum, length, sequence = unpack_header(view, offset)
        if length > RECORD_PAYLOAD_BYTES_MAX:
            # The header is complete, so this is what was written or damaged, not a tear.
            return DecodeResult(records, offset, DecodeStop.CORRUPT)
        frame_end = offset + RECORD_HEADER_BYTES + length
        if frame_end > end:
            return DecodeResult(records, offset, DecodeStop.TORN)
        if crc32(view[offset + _CHECKSUMMED_OFFSET : frame_end]) != checksum:
            return DecodeResult(records, offset, DecodeStop.CORRUPT)
        # Checked only after the checksum: a verified frame with an unexpected sequence is a
        # record that does not belong here (a stale or misplaced one), never a torn write.
        if expected_sequence is None:
            expected_sequence = max(sequence, SEQUENCE_MIN)  # the first frame sets the pace
        if sequence != expected_sequence:
            return DecodeResult(records, offset, DecodeStop.CORRUPT)
        records.append(Record(sequence, view[offset + RECORD_HEADER_BYTES : frame_end].tobytes()))
        expected_sequence = sequence + 1
        offset = frame_end


def find_intact_frame(buffer: bytes | memoryview, start: int, sequence: int) -> int | None:
    """The offset of the first frame at or after ``start`` that verifies and carries ``sequence``,
    or None. Evidence, for the file layer, that the log went on past a damaged frame.

    Looks for the sequence's 8 bytes with ``bytes.find`` (C speed) and verifies each hit as a
    frame, so the cost is one scan of the buffer plus one checksum per candidate.
    """
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    data = buffer if isinstance(buffer, bytes) else memoryview(buffer).tobytes()
    pattern = _SEQUENCE.pack(sequence)
    hit = data.find(pattern, start + _SEQUENCE_OFFSET)
    while hit != -1:
        offset = hit - _SEQUENCE_OFFSET
        if _frame_verifies(data, offset):
            return offset
        hit = data.find(pattern, hit + 1)
    return None


def _frame_verifies(data: bytes, offset: int) -> bool:
    """Whether a complete frame starts at ``offset`` and its checksum holds."""
    if len(data) - offset < RECORD_HEADER_BYTES:
        return False
    checksum: int
    length: int
    checksum, length, _ = _HEADER.unpack_from(data, offset)
    frame_end = offset + RECORD_HEADER_BYTES + length
    if length > RECORD_PAYLOAD_BYTES_MAX or frame_end > len(data):
        return False
    return zlib.crc32(memoryview(data)[offset + _CHECKSUMMED_OFFSET : frame_end]) == checksum
