"""Cache cluster: memcached-style nodes bounded by bytes (LRU or W-TinyLFU), client-side
routing with failover, and leases against stale sets and thundering herds."""
