"""What fault-injection rules do to one-way messages on a stream (``message_fate``), which have
no call of their own for the interceptor to fail, drop or delay."""

from __future__ import annotations

import pytest

from distlab.chaos.rpc_faults import (
    DELIVERED,
    LinkFaults,
    MessageFate,
    RpcFaultAction,
    RpcFaultRule,
    message_fate,
)

PEER = "127.0.0.1:7001"
OTHER_PEER = "127.0.0.1:7002"


def faults_with(*rules: RpcFaultRule) -> LinkFaults:
    faults = LinkFaults()
    faults.set_rules(rules)
    return faults


def test_no_rule_delivers_once() -> None:
    assert message_fate(LinkFaults(), PEER, "Step") == DELIVERED == MessageFate(copies=1)


def test_a_cut_link_loses_the_message() -> None:
    faults = LinkFaults()
    faults.set_blocked([PEER])
    assert message_fate(faults, PEER, "Step").copies == 0
    assert message_fate(faults, OTHER_PEER, "Step") == DELIVERED


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        (RpcFaultAction.FAIL, MessageFate(copies=0)),
        (RpcFaultAction.DROP, MessageFate(copies=0)),
        (RpcFaultAction.DROP_REPLY, MessageFate(copies=1)),  # there is no reply to lose
        (RpcFaultAction.DELAY, MessageFate(copies=1, delay_s=0.25)),
        (RpcFaultAction.DUPLICATE, MessageFate(copies=2)),
    ],
)
def test_each_action_on_a_one_way_message(action: RpcFaultAction, expected: MessageFate) -> None:
    faults = faults_with(RpcFaultRule(action, peer=PEER, method="Step", delay_ms=250))
    assert message_fate(faults, PEER, "Step") == expected


def test_rules_match_by_peer_and_method() -> None:
    faults = faults_with(RpcFaultRule(RpcFaultAction.DROP, peer=PEER, method="Step"))
    assert message_fate(faults, OTHER_PEER, "Step") == DELIVERED
    assert message_fate(faults, PEER, "ReplicaPut") == DELIVERED


def test_a_probability_applies_to_a_share_of_batches() -> None:
    faults = LinkFaults()
    faults.set_rules([RpcFaultRule(RpcFaultAction.DROP, probability=0.3)], seed=5)
    lost = sum(message_fate(faults, PEER, "Step").copies == 0 for _ in range(2000))
    assert 450 < lost < 750
