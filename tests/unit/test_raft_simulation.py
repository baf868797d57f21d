"""Deterministic simulation of distlab.raft.core over many seeds (the simulator and its fault
model are in tests/unit/raft_sim.py).

After every step of every seed the simulator checks the properties of Raft 2014, Figure 3
(election safety, log matching, leader completeness, state machine safety) and that ReadIndex
never serves a stale read; at the end of each seed, with the network healed, a proposal must
commit. A failure names its seed and step, and ``Simulation(seed).run()`` replays it exactly.

The checker is itself tested the way TigerBeetle tests its VOPR: bugs are injected into the core
(a vote granted without the 5.4.1 check, a commit by counting replicas of an older term, 5.4.2,
a leader counting a write it handed to its disk as durable, thesis 10.2.1) and the simulator must
catch each within a bounded number of seeds.
"""

from __future__ import annotations

import pytest

from distlab.raft import core
from tests.unit.raft_sim import (
    SafetyViolation,
    Simulation,
    first_violation,
    run_seeds,
)

# 1,000 seeds take about 15 s on a busy 2-core machine (about 15 ms, 1,000 steps a seed); in
# chunks, so a failure shows which range to replay and progress is visible.
SEEDS_DEFAULT = 1_000
SEEDS_SLOW = 100_000
SEEDS_PER_CHUNK = 100
SEEDS_PER_SLOW_CHUNK = 2_000
# The injected bugs must be caught within this many seeds. The broken vote is caught by about a
# third of the seeds; Figure 8 (the broken commit rule) by about one in twelve of the seeds that
# run the leader-churn mix on three nodes for 400 ticks.
SEEDS_TO_CATCH_A_BUG_MAX = 2_000
# Figure 8 needs several leaders in a row to fail at the wrong moment: the leader-churn mix, on
# three nodes (the fewest that show it), for 400 ticks.
FIGURE_8_NODES = 3
FIGURE_8_FAULT_TICKS = 400
FIGURE_8_CONTROL_SEEDS = 20


@pytest.mark.parametrize("first_seed", range(0, SEEDS_DEFAULT, SEEDS_PER_CHUNK))
def test_safety_over_many_seeds(first_seed: int) -> None:
    results = run_seeds(range(first_seed, first_seed + SEEDS_PER_CHUNK))
    # The runs did something: leaders came and went, and entries were committed (fewer in the
    # seeds with asynchronous writes, whose leaders lose their unwritten tails when they crash).
    assert sum(result.leaders for result in results) > 2 * len(results)
    assert sum(result.committed for result in results) > 6 * len(results)


@pytest.mark.slow
@pytest.mark.parametrize("first_seed", range(0, SEEDS_SLOW, SEEDS_PER_SLOW_CHUNK))
def test_safety_over_100k_seeds(first_seed: int) -> None:
    run_seeds(range(first_seed, first_seed + SEEDS_PER_SLOW_CHUNK))


def test_a_seed_replays_exactly() -> None:
    first, second = Simulation(4242).run(), Simulation(4242).run()
    assert first == second
    assert first.steps > 100
    assert Simulation(4243).run().trace_digest != first.trace_digest


def test_a_vote_without_the_up_to_date_check_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Raft 2014, 5.4.1: without the restriction, a candidate missing committed entries can win
    and overwrite them (leader completeness fails first)."""
    monkeypatch.setattr(core, "candidate_log_is_up_to_date", lambda *arguments: True)
    found = first_violation(range(SEEDS_TO_CATCH_A_BUG_MAX))
    assert found is not None, f"no seed in {SEEDS_TO_CATCH_A_BUG_MAX} caught the broken vote"
    seed, violation = found
    print(f"the broken vote is caught by seed {seed}: {violation}")
    assert violation.startswith(f"seed {seed}, step ")
    assert "leader completeness" in violation or "state machine safety" in violation
    with pytest.raises(SafetyViolation) as replayed:
        Simulation(seed).run()
    assert str(replayed.value) == violation  # the same seed fails the same way at the same step


def test_commit_by_counting_replicas_of_an_older_term_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Raft 2014, 5.4.2 and Figure 8: a leader that commits an older term's entry by counting
    replicas can see it overwritten by a later leader."""
    monkeypatch.setattr(core, "may_commit_by_counting_replicas", lambda *arguments: True)
    found = first_violation(
        range(SEEDS_TO_CATCH_A_BUG_MAX),
        churn=True,
        node_count=FIGURE_8_NODES,
        fault_ticks=FIGURE_8_FAULT_TICKS,
    )
    assert found is not None, f"no seed in {SEEDS_TO_CATCH_A_BUG_MAX} caught Figure 8"
    seed, violation = found
    print(f"the broken commit rule is caught by seed {seed}: {violation}")
    assert violation.startswith(f"seed {seed}, step ")
    with pytest.raises(SafetyViolation) as replayed:
        Simulation(
            seed, churn=True, node_count=FIGURE_8_NODES, fault_ticks=FIGURE_8_FAULT_TICKS
        ).run()
    assert str(replayed.value) == violation


def test_a_leader_counting_its_log_before_it_is_durable_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Thesis 10.2.1, with asynchronous writes: a leader that takes a write it handed to its disk
    as durable (``accept`` doing what ``advance`` does) commits an entry a majority may not hold;
    when it crashes before the write lands, a leader without the entry can win."""
    monkeypatch.setattr(core.RaftCore, "accept", core.RaftCore.advance)
    found = first_violation(range(SEEDS_TO_CATCH_A_BUG_MAX), async_writes=True)
    assert found is not None, f"no seed in {SEEDS_TO_CATCH_A_BUG_MAX} caught the early count"
    seed, violation = found
    print(f"counting the leader's log before it is durable is caught by seed {seed}: {violation}")
    assert "leader completeness" in violation or "state machine safety" in violation
    with pytest.raises(SafetyViolation) as replayed:
        Simulation(seed, async_writes=True).run()
    assert str(replayed.value) == violation


def test_the_correct_core_survives_the_figure_8_mix() -> None:
    """The same mix that catches the broken commit rule finds nothing wrong with the real one."""
    run_seeds(
        range(FIGURE_8_CONTROL_SEEDS),
        churn=True,
        node_count=FIGURE_8_NODES,
        fault_ticks=FIGURE_8_FAULT_TICKS,
    )
