"""Raft consensus as a pure state machine, in the manner of etcd's raft package. Not built yet."""
