"""Key-value store. Today: a single-node storage engine (memtable, write-ahead log,
checkpoints) served over gRPC. The Dynamo-style replication (quorum, vector clocks, hinted
handoff) builds on it."""
