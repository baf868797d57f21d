"""Partitioned, replicated log (Kafka-like). Named ``distlab.queue``, never a top-level ``queue``,
which would shadow the standard library module that grpc and concurrent.futures import.

Not built yet: only its gRPC contract exists, in ``distlab/proto/queue.proto``."""
