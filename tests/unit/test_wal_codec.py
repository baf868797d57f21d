"""The WAL record codec (``distlab.common.wal``), pure: no files, no event loop.

The property under test is recovery's contract at the byte level (ARIES: only completely and
correctly written records are redone): whatever prefix of a log survives, and whatever bit of
it flips, decoding returns exactly the records whose frames are whole and verified, in order,
and never a damaged one.
"""

from __future__ import annotations

import random
import struct
import time
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distlab.common.wal import (
    RECORD_HEADER_BYTES,
    RECORD_PAYLOAD_BYTES_MAX,
    DecodeStop,
    Record,
    decode_records,
    encode_record,
    find_intact_frame,
)

SEED = 20240611


def payload_for(sequence: int, length: int) -> bytes:
    """A payload that differs from its neighbours', so a misplaced record cannot pass as one."""
    return bytes((sequence * 31 + index * 7) % 256 for index in range(length))


def build_log(lengths: list[int], first_sequence: int = 1) -> tuple[bytes, list[Record], list[int]]:
    """The bytes of a log holding one record per length, its records, and each frame's end."""
    records = [
        Record(first_sequence + index, payload_for(first_sequence + index, length))
        for index, length in enumerate(lengths)
    ]
    frames = [encode_record(record.sequence, record.payload) for record in records]
    ends = []
    total = 0
    for frame in frames:
        total += len(frame)
        ends.append(total)
    return b"".join(frames), records, ends


def flip_bit(data: bytes, bit_index: int) -> bytes:
    damaged = bytearray(data)
    damaged[bit_index // 8] ^= 1 << (bit_index % 8)
    return bytes(damaged)


def test_round_trip_of_a_few_records() -> None:
    buffer, records, _ = build_log([0, 1, 5, 300, 4096])

    result = decode_records(buffer, expected_sequence=1)

    assert result.records == records
    assert result.stop is DecodeStop.END
    assert result.valid_length == len(buffer)


def test_frame_layout_is_checksum_length_sequence_payload() -> None:
    frame = encode_record(7, b"abc")

    checksum, length, sequence = struct.unpack_from("<IIQ", frame)

    assert len(frame) == RECORD_HEADER_BYTES + 3
    assert (length, sequence, frame[RECORD_HEADER_BYTES:]) == (3, 7, b"abc")
    # The checksum covers everything after itself: the header fields too.
    assert checksum == zlib.crc32(frame[4:])


def test_decoding_a_memoryview_works_like_bytes() -> None:
    buffer, records, _ = build_log([3, 4])

    assert decode_records(memoryview(buffer)).records == records


def test_empty_buffer_is_a_clean_end() -> None:
    assert decode_records(b"") == decode_records(memoryview(b""))
    assert decode_records(b"").stop is DecodeStop.END
    assert decode_records(b"").records == []


def test_every_truncation_yields_exactly_the_whole_records_before_it() -> None:
    buffer, records, ends = build_log([0, 9, 40, 1, 70])

    for cut in range(len(buffer) + 1):
        result = decode_records(buffer[:cut], expected_sequence=1)

        whole = sum(1 for end in ends if end <= cut)
        assert result.records == records[:whole], f"cut at byte {cut}"
        assert result.valid_length == (ends[whole - 1] if whole else 0), f"cut at byte {cut}"
        expected_stop = DecodeStop.END if cut == result.valid_length else DecodeStop.TORN
        assert result.stop is expected_stop, f"cut at byte {cut}"


def test_every_single_bit_flip_in_a_small_record_is_detected() -> None:
    frame = encode_record(1, b"hello, log")

    for bit_index in range(len(frame) * 8):
        result = decode_records(flip_bit(frame, bit_index), expected_sequence=1)

        assert result.records == [], f"bit {bit_index}"
        assert result.stop in (DecodeStop.CORRUPT, DecodeStop.TORN), f"bit {bit_index}"
        assert result.valid_length == 0


def test_every_single_bit_flip_without_an_expected_sequence_is_detected() -> None:
    # Without expected_sequence the sequence field is checked by the CRC alone.
    frame = encode_record(5, b"xyz")

    for bit_index in range(len(frame) * 8):
        result = decode_records(flip_bit(frame, bit_index))

        assert result.records == [], f"bit {bit_index}"


def test_sampled_bit_flips_in_a_multi_record_log_never_return_a_damaged_record() -> None:
    rng = random.Random(SEED)
    buffer, records, ends = build_log([rng.randrange(0, 2000) for _ in range(20)])

    for trial in range(2000):
        bit_index = rng.randrange(len(buffer) * 8)
        damaged_record = next(index for index, end in enumerate(ends) if bit_index // 8 < end)

        result = decode_records(flip_bit(buffer, bit_index), expected_sequence=1)

        context = f"seed {SEED}, trial {trial}, bit {bit_index}"
        assert result.records == records[:damaged_record], context
        assert result.stop in (DecodeStop.CORRUPT, DecodeStop.TORN), context


def test_torn_tail_followed_by_frame_shaped_garbage_yields_no_record() -> None:
    rng = random.Random(SEED)
    buffer, records, ends = build_log([20, 30, 400])
    start_of_last = ends[1]

    for trial in range(500):
        cut = rng.randrange(start_of_last + 1, ends[2])
        # Garbage long enough to complete whatever length the torn header claims.
        garbage = rng.randbytes(rng.randrange(1, 600))

        result = decode_records(buffer[:cut] + garbage, expected_sequence=1)

        context = f"seed {SEED}, trial {trial}, cut {cut}"
        assert result.records == records[:2], context
        assert result.valid_length == start_of_last, context


def test_a_copy_of_an_old_frame_after_the_end_is_refused_by_its_sequence() -> None:
    buffer, records, ends = build_log([10, 10])

    result = decode_records(buffer + buffer[: ends[0]], expected_sequence=1)

    assert result.records == records
    assert result.stop is DecodeStop.CORRUPT
    assert result.valid_length == len(buffer)


def test_sequence_gap_is_corrupt() -> None:
    frames = [encode_record(sequence, b"p") for sequence in (1, 2, 4)]

    result = decode_records(b"".join(frames))

    assert [record.sequence for record in result.records] == [1, 2]
    assert result.stop is DecodeStop.CORRUPT
    assert result.valid_length == len(frames[0]) + len(frames[1])


def test_first_frame_must_carry_the_expected_sequence() -> None:
    frame = encode_record(3, b"p")

    assert decode_records(frame, expected_sequence=3).records == [Record(3, b"p")]
    mismatch = decode_records(frame, expected_sequence=2)
    assert (mismatch.records, mismatch.stop) == ([], DecodeStop.CORRUPT)


def test_a_verified_frame_with_sequence_zero_is_corrupt() -> None:
    tail = struct.pack("<IQ", 1, 0) + b"p"
    frame = struct.pack("<I", zlib.crc32(tail)) + tail

    assert decode_records(frame).stop is DecodeStop.CORRUPT


def test_encode_rejects_bad_sequences() -> None:
    with pytest.raises(ValueError, match="sequence"):
        encode_record(0, b"")
    with pytest.raises(ValueError, match="sequence"):
        encode_record(2**64, b"")
    assert decode_records(encode_record(2**64 - 1, b"")).records == [Record(2**64 - 1, b"")]


def test_oversize_payload_is_rejected_on_encode() -> None:
    with pytest.raises(ValueError, match="RECORD_PAYLOAD_BYTES_MAX"):
        encode_record(1, bytes(RECORD_PAYLOAD_BYTES_MAX + 1))


def test_length_above_the_limit_is_corruption_not_a_torn_record() -> None:
    # A complete header claiming more than the limit: corrupt at once, however short the
    # buffer; the decoder never waits for (or allocates) the claimed bytes.
    tail = struct.pack("<IQ", RECORD_PAYLOAD_BYTES_MAX + 1, 1)
    header = struct.pack("<I", zlib.crc32(tail)) + tail

    result = decode_records(header + b"x" * 10)

    assert (result.records, result.stop, result.valid_length) == ([], DecodeStop.CORRUPT, 0)


def test_find_intact_frame_finds_the_record_after_damage() -> None:
    buffer, _, ends = build_log([10, 20, 30, 40])
    damaged = flip_bit(buffer, (ends[0] + 20) * 8)  # inside record 2's payload

    assert decode_records(damaged).valid_length == ends[0]
    assert find_intact_frame(damaged, ends[0], 3) == ends[1]
    assert find_intact_frame(damaged, ends[0], 2) is None  # record 2 itself is damaged
    assert find_intact_frame(damaged, ends[0], 9) is None  # no such record
    assert find_intact_frame(memoryview(damaged), 0, 1) == 0


def test_find_intact_frame_ignores_a_sequence_pattern_inside_a_payload() -> None:
    fake = struct.pack("<IIQ", 0, 0, 2)  # sequence 2's bytes, but not a valid frame
    buffer = encode_record(1, fake)

    assert find_intact_frame(buffer, 0, 2) is None


@settings(max_examples=200, deadline=None)
@given(
    payloads=st.lists(st.binary(max_size=300), max_size=30),
    first_sequence=st.integers(min_value=1, max_value=2**64 - 100),
)
def test_round_trip_of_random_payloads(payloads: list[bytes], first_sequence: int) -> None:
    records = [Record(first_sequence + index, payload) for index, payload in enumerate(payloads)]
    buffer = b"".join(encode_record(record.sequence, record.payload) for record in records)

    result = decode_records(buffer, expected_sequence=first_sequence)

    assert result.records == records
    assert result.stop is DecodeStop.END
    assert result.valid_length == len(buffer)


@settings(max_examples=200, deadline=None)
@given(
    payloads=st.lists(st.binary(max_size=100), min_size=1, max_size=10),
    data=st.data(),
)
def test_random_truncation_and_flip_returns_a_verified_prefix(
    payloads: list[bytes], data: st.DataObject
) -> None:
    records = [Record(index + 1, payload) for index, payload in enumerate(payloads)]
    buffer = b"".join(encode_record(record.sequence, record.payload) for record in records)
    cut = data.draw(st.integers(min_value=0, max_value=len(buffer)), label="cut")
    damaged = bytearray(buffer[:cut])
    if damaged:
        bit_index = data.draw(st.integers(min_value=0, max_value=len(damaged) * 8 - 1))
        damaged[bit_index // 8] ^= 1 << (bit_index % 8)

    result = decode_records(bytes(damaged), expected_sequence=1)

    assert result.records == records[: len(result.records)]


@pytest.mark.slow
def test_decoding_a_million_small_records() -> None:
    """Scale check (slow): correctness at a million records. The time is printed for the
    reader, not asserted: performance is a benchmark's job, not a test's."""
    buffer = b"".join(encode_record(sequence, b"x" * 32) for sequence in range(1, 1_000_001))

    started = time.perf_counter()
    result = decode_records(buffer, expected_sequence=1)
    elapsed_s = time.perf_counter() - started

    assert len(result.records) == 1_000_000
    assert result.stop is DecodeStop.END
    print(f"decoded 1,000,000 records in {elapsed_s:.2f} s")
