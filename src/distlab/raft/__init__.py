"""Raft consensus as a pure state machine, in the manner of etcd's raft package: ``core`` takes
ticks, messages and proposals and hands back, in a ``Ready``, what to persist, send and apply."""
