"""The Raft node's shell (distlab.raft.node) on its own, without a network: a call that gives up
while it waits in the inbox, and a disk that refuses a write."""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path
from typing import Any

import pytest

from distlab.common import errors
from distlab.common.errors import DistlabError
from distlab.raft.core import Role
from distlab.raft.node import RaftNode, RaftNodeOptions
from distlab.raft.register import PUT, KeyValueRegister, encode_command
from distlab.raft.writer import StorageFailedError

# Never dialled: the first test's node is not started, the second's has no peer but itself.
PEERS = {"n1": "127.0.0.1:1", "n2": "127.0.0.1:2", "n3": "127.0.0.1:3"}


@pytest.mark.asyncio
async def test_calls_that_timed_out_in_the_inbox_are_refused_quietly_by_a_follower(
    tmp_path: Path,
) -> None:
    node = RaftNode(RaftNodeOptions("n1", tmp_path, PEERS), KeyValueRegister())
    try:
        with pytest.raises(DistlabError) as proposal:
            await node.propose(b"command", deadline_s=0.01)
        assert proposal.value.kind is errors.DEADLINE_EXCEEDED
        with pytest.raises(DistlabError) as read:
            await node.read(b"key", deadline_s=0.01)
        assert read.value.kind is errors.UNAVAILABLE
        # The driver reaches them late; a follower refuses both, and nobody is left to tell.
        assert len(node._inbox) == 2
        while node._inbox:
            node._inbox.popleft()()
    finally:
        await node.close()


@pytest.mark.asyncio
async def test_a_write_the_disk_refuses_stops_the_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chaos matrix row 17: after a failed write nothing is acknowledged, every waiting call
    fails, and the node asks its server to stop (a restart recovers from the log)."""
    stopped = asyncio.Event()
    options = RaftNodeOptions("n1", tmp_path, {"n1": PEERS["n1"]}, tick_ms=5)
    node = RaftNode(options, KeyValueRegister(), on_failure=stopped.set)
    await node.start()
    try:
        async with asyncio.timeout(10):  # a single voter elects itself, then commits alone
            while True:
                try:
                    applied = await node.propose(encode_command(PUT, b"k", b"v1"), deadline_s=5)
                    break
                except DistlabError as error:
                    if error.kind is not errors.FAILED_PRECONDITION:  # not the leader yet
                        raise
                    await asyncio.sleep(0.01)
        assert applied.index >= 1
        assert node.core.role is Role.LEADER

        def refuse(*arguments: Any, **keywords: Any) -> None:
            raise OSError(errno.EIO, "fsync failed")

        monkeypatch.setattr(node.storage, "save", refuse)
        with pytest.raises(DistlabError) as refused:
            await node.propose(encode_command(PUT, b"k", b"v2"), deadline_s=5)
        assert refused.value.kind is errors.STORAGE_FAILED
        assert stopped.is_set()
        assert isinstance(node.failure, StorageFailedError)
        with pytest.raises(DistlabError) as later:
            await node.propose(encode_command(PUT, b"k", b"v3"), deadline_s=5)
        assert later.value.kind is errors.STORAGE_FAILED  # at once, not at the deadline
    finally:
        await node.close()
