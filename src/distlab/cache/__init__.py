"""Cache cluster (memcached-style, LRU + TTL per node, consistent-hash routing).

Not built yet: only its gRPC contract exists, in ``distlab/proto/cache.proto``."""
