"""Pieces every system shares: the hash ring, the write-ahead log, clocks, errors, limits, and the
gRPC server bootstrap. The pure modules here (hashring, wal, limits, errors) import no I/O."""
