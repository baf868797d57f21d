"""The Raft node's inbox (distlab.raft.node): a client's call may give up while its proposal or
read still waits for the driver, and the driver must then take it without failing."""

from __future__ import annotations

from pathlib import Path

import pytest

from distlab.common import errors
from distlab.common.errors import DistlabError
from distlab.raft.node import RaftNode, RaftNodeOptions
from distlab.raft.register import KeyValueRegister

# Never dialled: the node is not started, so it sends nothing.
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
