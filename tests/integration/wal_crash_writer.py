"""The writer process of ``test_wal_crash.py``: append to a WAL (fsync=always) until killed.

Usage: ``python wal_crash_writer.py DIRECTORY ROUND THREADS SEGMENT_BYTES_MAX``

Each thread appends records whose payload is derived from (round, thread, counter), and after
each append returns prints one line ``SEQUENCE ROUND THREAD COUNTER`` to stdout, flushed: that
line is the acknowledgement. The parent kills this process with SIGKILL at a moment of its
choosing; if nobody does, it stops by itself after ``RUN_SECONDS_MAX``.
"""

from __future__ import annotations

import hashlib
import sys
import threading
import time

from distlab.common.wal_file import FsyncPolicy, WalOptions, WriteAheadLog

# A safety net, not a test parameter: the parent kills the writer within a second or two; if the
# parent died first, the writer must not run forever.
RUN_SECONDS_MAX = 120.0
# Payloads of 0 to 199 filler bytes after their label, so frames have many sizes.
FILLER_BYTES_MAX = 200


def payload_for(round_number: int, thread: int, counter: int) -> bytes:
    """A payload that names its origin and that a damaged or misplaced copy cannot imitate."""
    label = f"{round_number}:{thread}:{counter}:".encode()
    digest = hashlib.sha256(label).digest()
    filler_bytes = (counter * 37 + thread * 11) % FILLER_BYTES_MAX
    return label + (digest * (filler_bytes // len(digest) + 1))[:filler_bytes]


def parse_label(payload: bytes) -> tuple[int, int, int]:
    round_number, thread, counter, _ = payload.split(b":", 3)
    return int(round_number), int(thread), int(counter)


def main(arguments: list[str]) -> None:
    directory, round_number = arguments[0], int(arguments[1])
    threads_count, segment_bytes_max = int(arguments[2]), int(arguments[3])
    options = WalOptions(fsync_policy=FsyncPolicy.ALWAYS, segment_bytes_max=segment_bytes_max)
    log, _ = WriteAheadLog.open(directory, options)
    print_lock = threading.Lock()
    deadline = time.monotonic() + RUN_SECONDS_MAX

    def writer(thread: int) -> None:
        counter = 0
        while time.monotonic() < deadline:
            sequence = log.append(payload_for(round_number, thread, counter))
            with print_lock:
                # One short write per line: a kill cannot leave half an acknowledgement that
                # parses as a whole one (the parent also ignores an unterminated last line).
                sys.stdout.write(f"{sequence} {round_number} {thread} {counter}\n")
                sys.stdout.flush()
            counter += 1

    threads = [threading.Thread(target=writer, args=(index,)) for index in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log.close()


if __name__ == "__main__":
    main(sys.argv[1:])
