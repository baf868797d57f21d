"""Pure tests of the coordinator's decisions (distlab.kvstore.coordinator); no event loop, no I/O.

References: DeCandia et al., "Dynamo: Amazon's Highly Available Key-value Store", SOSP 2007,
4.5 (the coordinator, R and W), 4.6 (sloppy quorum, hinted handoff) and 5 (read repair);
Vogels, "Eventually Consistent", CACM 2009 (R + W > N). Failures are definite or indefinite as in
Maelstrom's error model (distlab.common.errors).

The ring walks are written out by hand: "a" is the key's owner, then "b", "c" (the top 3), then
the nodes beyond the preference list in ring order. Trackers are fed answers as the shell would,
with made-up elapsed times.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distlab.common import errors
from distlab.kvstore.coordinator import (
    N_MAX,
    OUTCOME_TRANSITIONS,
    REASON_CHARS_MAX,
    REPLICA_TRANSITIONS,
    Outcome,
    QuorumConfig,
    ReadPlan,
    ReadTracker,
    Repair,
    ReplicaOutcome,
    ReplicaTarget,
    WritePlan,
    WriteTracker,
    coordinator_for,
    plan_read,
    plan_write,
)
from distlab.kvstore.versioning import ClockEntry, Dot, VectorClock, Version

# Derandomized: every run tries the same examples, so a failure replays as it is (hypothesis
# prints the failing example); no example database, so runs leave nothing behind.
PROPERTY_SETTINGS = settings(max_examples=200, deadline=None, derandomize=True, database=None)

WALK = ("a", "b", "c", "d", "e", "f")
ALL = frozenset(WALK)
STRICT = QuorumConfig(sloppy=False)
SLOPPY = QuorumConfig(sloppy=True)


def live_except(*down: str) -> frozenset[str]:
    return ALL - set(down)


def owner(node_id: str) -> ReplicaTarget:
    return ReplicaTarget(node_id)


def fallback(node_id: str, hint_for: str) -> ReplicaTarget:
    return ReplicaTarget(node_id, hint_for=hint_for)


def version(
    node_id: str, counter: int, seen: dict[str, int] | None = None, value: bytes | None = b"v"
) -> Version:
    """The version with dot (node_id, counter) whose writer had seen ``seen``."""
    context = VectorClock.from_entries(
        ClockEntry(seen_node, seen_counter, 0) for seen_node, seen_counter in (seen or {}).items()
    )
    return Version(Dot(node_id, counter), context, value, 0)


# The owners up, every node beyond them down: no spare can replace a failed write, so a tracker
# counts exactly its planned targets (replacements have tests of their own).
OWNERS_UP = frozenset({"a", "b", "c"})


def write_tracker(
    live: frozenset[str] = OWNERS_UP, config: QuorumConfig = SLOPPY, local_node: str = "a"
) -> WriteTracker:
    return WriteTracker(plan_write(WALK, live, config), config.w, local_node)


def read_tracker(live: frozenset[str] = ALL, config: QuorumConfig = SLOPPY) -> ReadTracker:
    return ReadTracker(plan_read(WALK, live, config), config.r)


# ---------------------------------------------------------------------------------------------
# QuorumConfig.
# ---------------------------------------------------------------------------------------------


def test_defaults_are_dynamos_common_configuration() -> None:
    """Dynamo 6: "The common (N,R,W) configuration used by several instances of Dynamo is
    (3,2,2)." Vogels 2009: "If W+R > N, then the write set and the read set always overlap"."""
    config = QuorumConfig()
    assert (config.n, config.r, config.w, config.sloppy) == (3, 2, 2, True)
    assert config.quorums_overlap
    assert not QuorumConfig(n=3, r=1, w=2).quorums_overlap


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"n": 0}, r"^n must be in 1\.\.N_MAX=7, got 0$"),
        ({"n": N_MAX + 1}, r"^n must be in 1\.\.N_MAX=7, got 8$"),
        ({"r": 0}, r"^r must be in 1\.\.n=3, got 0$"),
        ({"w": 4}, r"^w must be in 1\.\.n=3, got 4$"),
        ({"n": 1, "r": 2, "w": 1}, r"^r must be in 1\.\.n=1, got 2$"),
    ],
)
def test_config_refuses_counts_out_of_range_naming_the_field(
    fields: dict[str, int], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        QuorumConfig(**fields)  # type: ignore[arg-type]


def test_config_refuses_non_integers() -> None:
    with pytest.raises(TypeError, match="w must be an int"):
        QuorumConfig(w=True)
    with pytest.raises(TypeError, match="sloppy must be a bool"):
        QuorumConfig(sloppy=1)  # type: ignore[arg-type]


def test_per_request_overrides_replace_only_what_is_given_and_are_validated() -> None:
    config = QuorumConfig(n=3, r=2, w=2, sloppy=False)
    assert config.with_overrides(r=3, w=None) == QuorumConfig(n=3, r=3, w=2, sloppy=False)
    assert config.with_overrides(r=None, w=1) == QuorumConfig(n=3, r=2, w=1, sloppy=False)
    assert config.with_overrides(None, None) == config
    with pytest.raises(ValueError, match=r"^w must be in 1\.\.n=3, got 4$"):
        config.with_overrides(r=None, w=4)
    with pytest.raises(ValueError, match=r"^r must be in 1\.\.n=3, got 0$"):
        config.with_overrides(r=0, w=None)


# ---------------------------------------------------------------------------------------------
# Planning: strict and sloppy quorums (Dynamo 4.6).
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("down", "strict_targets", "sloppy_targets"),
    [
        ((), ("a", "b", "c"), ("a", "b", "c")),
        (("a",), ("b", "c"), ("b", "c", "d>a")),
        (("b",), ("a", "c"), ("a", "c", "d>b")),
        (("a", "c"), ("b",), ("b", "d>a", "e>c")),
        # A down node beyond the top N is skipped when choosing fallbacks.
        (("b", "d"), ("a", "c"), ("a", "c", "e>b")),
        (("a", "b", "d", "e"), ("c",), ("c", "f>a")),
    ],
)
def test_sloppy_quorum_replaces_each_down_owner_by_the_next_live_node_beyond_the_top_n(
    down: tuple[str, ...], strict_targets: tuple[str, ...], sloppy_targets: tuple[str, ...]
) -> None:
    """Dynamo 4.6: "all read and write operations are performed on the first N healthy nodes
    from the preference list", and "the replica that would normally have lived on A will now be
    sent to node D ... the replica sent to D will have a hint in its metadata that suggests which
    node was the intended recipient of the replica (in this case A)"."""

    def spelled(targets: Sequence[ReplicaTarget]) -> tuple[str, ...]:
        return tuple(
            t.node_id if t.hint_for is None else f"{t.node_id}>{t.hint_for}" for t in targets
        )

    live = live_except(*down)
    strict = plan_write(WALK, live, STRICT)
    sloppy = plan_write(WALK, live, SLOPPY)
    assert strict.preference_list == sloppy.preference_list == ("a", "b", "c")
    assert spelled(strict.targets) == strict_targets
    assert spelled(sloppy.targets) == sloppy_targets
    assert strict.live_owners == sloppy.live_owners == 3 - len(set(down) & {"a", "b", "c"})
    assert strict.down_owners == tuple(node for node in ("a", "b", "c") if node in down)
    assert strict.fallbacks == ()
    # W=2: a strict quorum needs two live owners; a sloppy one two live nodes, one an owner.
    assert strict.achievable == (len(strict_targets) >= 2)
    assert sloppy.achievable
    # Reads choose the same nodes.
    assert plan_read(WALK, live, STRICT).targets == strict.targets
    assert plan_read(WALK, live, SLOPPY).targets == sloppy.targets


def test_no_fallbacks_left_leaves_the_remaining_down_owners_unreplaced() -> None:
    walk = ("a", "b", "c", "d", "e")
    plan = plan_write(walk, frozenset({"c", "e"}), SLOPPY)  # a, b, d down: one spare, e
    assert plan.targets == (owner("c"), fallback("e", "a"))
    assert plan.down_owners == ("a", "b")
    assert plan.achievable  # W=2
    assert not plan_write(
        walk, frozenset({"c", "e"}), SLOPPY.with_overrides(r=None, w=3)
    ).achievable


def test_a_cluster_smaller_than_n_replicates_on_every_node_and_never_lowers_w() -> None:
    """With fewer than N nodes the preference list is the whole ring and nothing lies beyond it
    to fall back on; W is not lowered to fit."""
    walk = ("a", "b")
    full = QuorumConfig(n=3, r=3, w=3)
    plan = plan_write(walk, frozenset(walk), full)
    assert plan.preference_list == ("a", "b")
    assert plan.targets == (owner("a"), owner("b"))
    assert not plan.achievable
    assert "W=3 needs 3 live replicas, only 2 reachable (a, b)" in plan.refusal_message()
    assert plan_write(walk, frozenset(walk), SLOPPY).achievable
    assert not plan_read(walk, frozenset({"b"}), SLOPPY).achievable


def test_unachievable_plans_explain_themselves() -> None:
    strict = plan_write(WALK, live_except("a", "c"), STRICT)
    assert strict.refusal_message() == (
        "quorum not reachable: W=2 needs 2 live replicas, only 1 reachable (b) for preference "
        "list a, b, c (down: a, c; strict quorum: no fallbacks); refused before contacting any "
        "replica"
    )
    read = plan_read(("a", "b", "c", "d"), frozenset({"b"}), SLOPPY)
    assert read.refusal_message() == (
        "quorum not reachable: R=2 needs 2 live replicas, only 1 reachable (b) for preference "
        "list a, b, c (down: a, c; no live fallback left for 2 of them); refused before "
        "contacting any replica"
    )
    with pytest.raises(RuntimeError):
        plan_write(WALK, ALL, SLOPPY).refusal_message()


def test_a_put_whose_owners_are_all_down_is_refused_even_when_fallbacks_could_take_it() -> None:
    """Dynamo 4.5: the coordinator "is the first among the top N nodes in the preference
    list". With none of them live there is no owner to mint and first store the version."""
    live = live_except("a", "b", "c")
    plan = plan_write(WALK, live, SLOPPY)
    assert plan.targets == (fallback("d", "a"), fallback("e", "b"), fallback("f", "c"))
    assert plan.live_owners == 0
    assert not plan.achievable
    assert plan.refusal_message().startswith("no owner of the key is live")
    assert coordinator_for(WALK, live, SLOPPY) is None
    # A get may still ask the fallbacks: they count towards R (and most likely hold nothing).
    assert plan_read(WALK, live, SLOPPY).achievable


def test_nodes_outside_the_walk_and_an_empty_walk() -> None:
    plan = plan_write(("a", "b", "c"), frozenset({"a", "b", "c", "z"}), SLOPPY)
    assert [t.node_id for t in plan.targets] == ["a", "b", "c"]
    empty = plan_write((), frozenset({"a"}), SLOPPY)
    assert (empty.preference_list, empty.targets, empty.achievable) == ((), (), False)
    assert coordinator_for((), frozenset({"a"}), SLOPPY) is None


def test_a_walk_must_name_each_node_once() -> None:
    with pytest.raises(ValueError, match="names node 'a' twice"):
        plan_write(("a", "b", "a"), ALL, SLOPPY)
    with pytest.raises(ValueError, match="non-empty str ids"):
        plan_read(("a", ""), ALL, SLOPPY)


def test_plan_can_coordinate_only_on_a_live_owner() -> None:
    plan = plan_write(WALK, live_except("a"), SLOPPY)
    assert plan.can_coordinate("b")
    assert not plan.can_coordinate("d")  # a fallback
    assert not plan.can_coordinate("a")  # down
    assert not plan.can_coordinate("f")  # not a target


# ---------------------------------------------------------------------------------------------
# The coordinator (Dynamo 4.5).
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("down", "expected"),
    [((), "a"), (("a",), "b"), (("a", "b"), "c"), (("a", "b", "c"), None), (("b",), "a")],
)
@pytest.mark.parametrize("config", [STRICT, SLOPPY])
def test_the_coordinator_is_the_first_live_node_among_the_top_n(
    down: tuple[str, ...], expected: str | None, config: QuorumConfig
) -> None:
    """Dynamo 4.5: "a node handling a read or write operation is known as the coordinator.
    Typically, this is the first among the top N nodes in the preference list"."""
    assert coordinator_for(WALK, live_except(*down), config) == expected


# ---------------------------------------------------------------------------------------------
# WriteTracker (Dynamo 4.5: "If at least W-1 nodes respond then the write is considered
# successful"; the coordinator's own write is the W-th).
# ---------------------------------------------------------------------------------------------


def test_a_put_succeeds_at_exactly_the_wth_acknowledgement() -> None:
    tracker = write_tracker()
    assert tracker.outcome is Outcome.PENDING
    assert tracker.on_ack("a", 0.4) is Outcome.PENDING  # the coordinator's local write
    assert tracker.on_ack("c", 3.0) is Outcome.SUCCEEDED
    assert tracker.trace().decided_ms == 3.0
    # The straggler is recorded, and changes nothing.
    assert tracker.on_failure("b", 9.0, "connection reset") is Outcome.SUCCEEDED
    assert tracker.on_deadline(100.0) is Outcome.SUCCEEDED
    assert [r.outcome for r in tracker.trace().replicas] == [
        ReplicaOutcome.ACKED,
        ReplicaOutcome.FAILED,
        ReplicaOutcome.ACKED,
    ]
    with pytest.raises(RuntimeError, match="has not failed: SUCCEEDED"):
        tracker.failure_message()


@pytest.mark.parametrize("w", [1, 2, 3])
def test_the_decision_tracks_w(w: int) -> None:
    tracker = write_tracker(config=QuorumConfig(w=w))
    outcomes = [tracker.on_ack(node_id, 1.0) for node_id in ("a", "b", "c")]
    assert outcomes == [Outcome.PENDING] * (w - 1) + [Outcome.SUCCEEDED] * (4 - w)


def test_a_put_fails_as_soon_as_w_is_out_of_reach() -> None:
    tracker = write_tracker(config=QuorumConfig(w=3))
    assert tracker.on_ack("a", 0.5) is Outcome.PENDING
    # One failure of three with W=3: the quorum is lost although c has not answered.
    assert tracker.on_failure("b", 2.0, "connection refused") is Outcome.FAILED
    assert tracker.failure_message() == (
        "quorum not reached: 1 of 3 required replicas acknowledged (answered: a; failed: b "
        "(connection refused); no answer: c); the write is durable on a and is not rolled back, "
        "so it may still be read later"
    )
    # Never changes after deciding: a late acknowledgement is recorded, the answer stands.
    assert tracker.on_ack("c", 5.0) is Outcome.FAILED
    assert tracker.failure_message().startswith("quorum not reached: 1 of 3")
    assert tracker.trace().replicas[2].outcome is ReplicaOutcome.ACKED


def test_a_put_acknowledged_by_the_coordinator_alone_is_an_indefinite_failure() -> None:
    """Dynamo has no rollback: the value is durable on the coordinator and may come back
    through read repair, so the client must treat the failure as "maybe happened"."""
    tracker = write_tracker()
    tracker.on_ack("a", 0.5)
    tracker.on_failure("b", 2.0, "connection refused", definite=True)
    assert tracker.on_failure("c", 3.0, "disk full", definite=True) is Outcome.FAILED
    assert tracker.failure_message() == (
        "quorum not reached: 1 of 2 required replicas acknowledged (answered: a; failed: b "
        "(connection refused), c (disk full)); the write is durable on a and is not rolled "
        "back, so it may still be read later"
    )
    assert not tracker.failure_is_definite()
    assert not tracker.failure_is_deadline()
    assert tracker.failure_kind() is errors.WRITE_QUORUM_NOT_REACHED
    assert not errors.WRITE_QUORUM_NOT_REACHED.definite


def test_a_put_is_definite_only_when_every_target_certainly_stored_nothing() -> None:
    tracker = write_tracker(config=QuorumConfig(w=1))
    tracker.on_failure("a", 1.0, "disk full", definite=True)
    tracker.on_failure("b", 2.0, "refused before writing", definite=True)
    assert tracker.on_failure("c", 3.0, "connection refused", definite=True) is Outcome.FAILED
    assert tracker.failure_is_definite()
    assert tracker.failure_kind() is errors.NOT_ENOUGH_REPLICAS
    assert errors.NOT_ENOUGH_REPLICAS.definite
    assert tracker.failure_message().endswith(
        "failed: a (disk full), b (refused before writing), c (connection refused))"
    )


@pytest.mark.parametrize("ambiguous", ["a", "b", "c"])
def test_one_ambiguous_failure_makes_the_put_indefinite(ambiguous: str) -> None:
    """Maelstrom: when in doubt, indefinite. A timeout or a reset call may have stored it."""
    tracker = write_tracker(config=QuorumConfig(w=1))
    for node_id in ("a", "b", "c"):
        tracker.on_failure(node_id, 1.0, "failed", definite=node_id != ambiguous)
    assert tracker.outcome is Outcome.FAILED
    assert not tracker.failure_is_definite()
    assert tracker.failure_message().endswith(
        "; a replica may have stored the write before failing or going silent"
    )


def test_a_put_that_fails_early_with_replicas_still_out_is_indefinite() -> None:
    """A replica that has not answered may yet store the write it was sent."""
    tracker = write_tracker(config=QuorumConfig(w=3))
    assert tracker.on_failure("a", 1.0, "disk full", definite=True) is Outcome.FAILED
    assert not tracker.failure_is_definite()
    assert "no answer: b, c" in tracker.failure_message()


def test_a_put_pending_at_the_deadline_fails_indefinitely() -> None:
    tracker = write_tracker(frozenset({"a", "c", "d"}))  # targets a, c, d (for b); no spare
    tracker.on_ack("a", 0.3)
    assert tracker.on_failure("d", 15.0, "timeout") is Outcome.PENDING
    assert tracker.on_deadline(2000.0) is Outcome.FAILED
    assert tracker.failure_is_deadline()
    assert not tracker.failure_is_definite()
    assert tracker.failure_kind() is errors.DEADLINE_EXCEEDED
    assert tracker.failure_message() == (
        "quorum not reached: 1 of 2 required replicas acknowledged (answered: a; failed: d "
        "(fallback for b; timeout); no answer: c); the deadline passed after 2000 ms; the write "
        "is durable on a and is not rolled back, so it may still be read later"
    )
    # A second deadline changes nothing.
    assert tracker.on_deadline(3000.0) is Outcome.FAILED
    assert tracker.trace().decided_ms == 2000.0


def test_a_fallback_that_acknowledges_holds_a_hint() -> None:
    """Dynamo 4.6: "Nodes that receive hinted replicas will keep them in a separate local
    database"; its acknowledgement counts towards W."""
    tracker = write_tracker(live_except("b", "c"))  # targets a, d (for b), e (for c)
    tracker.on_ack("a", 0.3)
    assert tracker.on_ack("e", 4.0) is Outcome.SUCCEEDED
    assert tracker.hints_written() == (fallback("e", "c"),)
    trace = tracker.trace().to_dict()
    assert trace["hints_written"] == [{"node_id": "e", "hint_for": "c"}]
    assert trace["targets"] == [
        {"node_id": "a", "hint_for": None},
        {"node_id": "d", "hint_for": "b"},
        {"node_id": "e", "hint_for": "c"},
    ]


def test_an_owner_whose_write_fails_is_replaced_by_the_next_spare_with_a_hint() -> None:
    """Dynamo 4.6: "if A is temporarily down or unreachable during a write operation then a
    replica that would normally have lived on A will now be sent to node D". Here b is up in the
    failure detector's view, but its write fails: d stands in for it, and W=3 is still reached."""
    tracker = write_tracker(ALL, QuorumConfig(w=3))  # targets a, b, c; spares d, e, f
    tracker.on_ack("a", 0.3)
    assert tracker.replacement_for("b") is None
    assert tracker.on_failure("b", 2.0, "connection reset") is Outcome.PENDING
    assert tracker.replacement_for("b") == fallback("d", "b")
    assert tracker.on_ack("c", 3.0) is Outcome.PENDING
    assert tracker.on_ack("d", 5.0) is Outcome.SUCCEEDED
    assert tracker.hints_written() == (fallback("d", "b"),)
    trace = tracker.trace().to_dict()
    assert trace["targets"][-1] == {"node_id": "d", "hint_for": "b"}
    assert [replica["outcome"] for replica in trace["replicas"]] == [
        "acked",
        "failed",
        "acked",
        "acked",
    ]


def test_a_failed_fallback_is_replaced_too_and_the_spares_run_out() -> None:
    tracker = write_tracker(live_except("e"), QuorumConfig(w=3))  # spares d, f
    tracker.on_ack("a", 0.3)
    tracker.on_failure("b", 1.0, "timeout")
    assert tracker.replacement_for("b") == fallback("d", "b")
    tracker.on_failure("d", 2.0, "timeout")
    assert tracker.replacement_for("d") == fallback("f", "b")  # still holding b's hint
    assert tracker.on_failure("f", 3.0, "timeout") is Outcome.FAILED  # no spare left
    assert tracker.replacement_for("f") is None
    assert "failed: b (timeout), d (fallback for b; timeout), f (fallback for b" in (
        tracker.failure_message()
    )
    assert tracker.on_failure("c", 4.0, "late") is Outcome.FAILED
    assert tracker.replacement_for("c") is None  # the put has failed: nothing to save


def test_a_strict_quorum_never_replaces_a_failed_owner() -> None:
    tracker = write_tracker(ALL, QuorumConfig(w=3, sloppy=False))
    tracker.on_ack("a", 0.3)
    assert tracker.on_failure("b", 2.0, "timeout") is Outcome.FAILED
    assert tracker.replacement_for("b") is None
    assert plan_write(WALK, ALL, STRICT).spares == ()
    assert plan_write(WALK, live_except("b", "e"), SLOPPY).spares == ("f",)  # d stands for b


def test_write_tracker_refuses_what_the_shell_must_not_do() -> None:
    with pytest.raises(ValueError, match="refuse the put instead"):
        WriteTracker(plan_write(WALK, live_except("a", "b"), STRICT), 2, "c")
    with pytest.raises(ValueError, match="w=3 differs from the plan's w=2"):
        WriteTracker(plan_write(WALK, ALL, SLOPPY), 3, "a")
    with pytest.raises(ValueError, match="'d' is not a live owner"):
        WriteTracker(plan_write(WALK, live_except("a"), SLOPPY), 2, "d")
    tracker = write_tracker()
    tracker.on_ack("a", 1.0)
    with pytest.raises(ValueError, match="'a' already answered this put \\(acked\\)"):
        tracker.on_failure("a", 2.0, "late")
    with pytest.raises(ValueError, match="'z' is not a target of this put"):
        tracker.on_ack("z", 1.0)
    with pytest.raises(ValueError, match="elapsed_ms must be finite and >= 0"):
        tracker.on_ack("b", -1.0)
    with pytest.raises(ValueError, match="elapsed_ms must be finite and >= 0"):
        tracker.on_deadline(float("nan"))


def test_failure_reasons_are_clipped() -> None:
    tracker = write_tracker(config=QuorumConfig(w=3))
    tracker.on_failure("b", 1.0, "x" * 10_000)
    reason = tracker.trace().replicas[1].reason
    assert reason is not None
    assert len(reason) == REASON_CHARS_MAX
    assert reason.endswith("...")
    assert len(tracker.failure_message()) < 2 * REASON_CHARS_MAX
    tracker.on_failure("c", 1.0, "   ")
    assert tracker.trace().replicas[2].reason == "no reason given"


# ---------------------------------------------------------------------------------------------
# ReadTracker (Dynamo 4.5: the coordinator "waits for R responses before returning the result
# to the client"; 4.4 siblings; 5 read repair).
# ---------------------------------------------------------------------------------------------

V1 = version("a", 1)
V2 = version("a", 2, seen={"a": 1})  # a put that read V1: it obsoletes V1
X = version("a", 3, seen={"a": 2})  # X and Y: two puts from the same read, concurrent
Y = version("b", 1, seen={"a": 2})
MERGED = version("c", 1, seen={"a": 3, "b": 1})  # a put that read both siblings


def test_a_get_answers_at_the_rth_reply_and_a_replica_without_the_key_replies_too() -> None:
    tracker = read_tracker()
    assert tracker.on_reply("b", (), 1.0) is Outcome.PENDING
    assert tracker.on_reply("a", (V2,), 2.0) is Outcome.SUCCEEDED
    assert tracker.result() == (V2,)
    assert not tracker.all_answered
    assert tracker.on_reply("c", (V1,), 8.0) is Outcome.SUCCEEDED
    assert tracker.all_answered


def test_concurrent_versions_are_returned_as_siblings() -> None:
    """Dynamo 4.5: "If the coordinator ends up gathering multiple versions of the data, it
    returns all the versions it deems to be causally unrelated"."""
    tracker = read_tracker(config=QuorumConfig(r=3))
    tracker.on_reply("a", (X,), 1.0)
    tracker.on_reply("b", (Y,), 1.0)
    tracker.on_reply("c", (V1,), 1.0)
    assert tracker.outcome is Outcome.SUCCEEDED
    assert tracker.result() == (X, Y)  # V1 is obsolete; X and Y are concurrent, in dot order


def test_read_repair_sends_the_reconciled_set_to_each_stale_or_empty_replica() -> None:
    """Dynamo 5: "If stale versions were returned in any of the responses, the coordinator
    updates those nodes with the latest version. This process is called read repair"."""
    tracker = read_tracker()
    tracker.on_reply("a", (V2,), 1.0)
    tracker.on_reply("b", (V1,), 2.0)  # stale
    tracker.on_reply("c", (), 3.0)  # missed the key altogether
    assert tracker.repairs() == [Repair("b", (V2,)), Repair("c", (V2,))]


def test_read_repair_of_siblings_gives_each_replica_the_versions_it_lacks() -> None:
    tracker = read_tracker()
    tracker.on_reply("a", (X,), 1.0)
    tracker.on_reply("b", (Y,), 2.0)
    tracker.on_reply("c", (Y, X), 3.0)  # order does not matter
    assert tracker.repairs() == [Repair("a", (X, Y)), Repair("b", (X, Y))]


def test_a_put_from_the_merged_context_obsoletes_both_siblings() -> None:
    tracker = read_tracker()
    tracker.on_reply("a", (X, Y), 1.0)
    tracker.on_reply("b", (MERGED,), 2.0)
    tracker.on_reply("c", (MERGED,), 3.0)
    assert tracker.result() == (MERGED,)
    assert tracker.repairs() == [Repair("a", (MERGED,))]


@pytest.mark.parametrize("versions", [(), (V2,), (X, Y)])
def test_no_repair_when_every_replica_agrees(versions: tuple[Version, ...]) -> None:
    tracker = read_tracker()
    for node_id in ("a", "b", "c"):
        tracker.on_reply(node_id, versions, 1.0)
    assert tracker.repairs() == []
    assert tracker.trace().repairs == ()


def test_each_reply_is_reconciled_on_arrival() -> None:
    """A replica holding an obsolete version beside the one that replaced it agrees all the same."""
    tracker = read_tracker()
    tracker.on_reply("a", (V1, V2), 1.0)
    tracker.on_reply("b", (V2,), 1.0)
    assert tracker.trace().replicas[0].versions == (V2,)  # reconciled on arrival
    assert tracker.repairs() == []


def test_sloppy_reads_count_a_fallbacks_empty_reply_towards_r() -> None:
    """Dynamo 4.6: a fallback holds the hinted copy in "a separate local database"; a read of
    its main store finds nothing, and the reply still counts: why sloppy quorums can read stale
    data even with R + W > N. Fallbacks are not read-repaired: they are not replicas."""
    tracker = read_tracker(live_except("b", "c"))  # targets a, d (for b), e (for c)
    assert tracker.on_reply("d", (), 1.0) is Outcome.PENDING
    assert tracker.on_reply("a", (V1,), 2.0) is Outcome.SUCCEEDED
    tracker.on_reply("e", (), 3.0)
    assert tracker.result() == (V1,)
    assert tracker.repairs() == []  # d and e are fallbacks: not repaired


def test_a_get_fails_as_soon_as_r_is_out_of_reach_and_repairs_still_cover_late_replies() -> None:
    tracker = read_tracker()
    tracker.on_failure("a", 1.0, "connection refused")
    assert tracker.on_failure("b", 2.0, "timeout") is Outcome.FAILED
    assert tracker.failure_message() == (
        "quorum not reached: 0 of 2 required replicas replied (failed: a (connection refused), "
        "b (timeout); no answer: c)"
    )
    assert tracker.failure_kind() is errors.READ_QUORUM_NOT_REACHED
    assert tracker.failure_is_definite()
    tracker.on_reply("c", (V1,), 50.0)
    assert tracker.outcome is Outcome.FAILED
    assert tracker.repairs() == []  # only c replied, and it agrees with itself


def test_a_get_pending_at_the_deadline_fails_and_late_replies_feed_read_repair() -> None:
    tracker = read_tracker()
    tracker.on_reply("a", (V2,), 1.0)
    assert tracker.on_deadline(1500.0) is Outcome.FAILED
    assert tracker.failure_is_deadline()
    assert tracker.failure_kind() is errors.DEADLINE_EXCEEDED
    assert tracker.failure_message() == (
        "quorum not reached: 1 of 2 required replicas replied (answered: a; no answer: b, c); "
        "the deadline passed after 1500 ms"
    )
    # The stragglers arrive while the shell waits in the background.
    tracker.on_reply("b", (V1,), 1600.0)
    tracker.on_reply("c", (V2,), 1700.0)
    assert tracker.outcome is Outcome.FAILED
    assert tracker.all_answered
    assert tracker.repairs() == [Repair("b", (V2,))]


def test_a_version_conflict_counts_the_reply_as_failed_and_keeps_the_earlier_result() -> None:
    tracker = read_tracker()
    tracker.on_reply("a", (version("a", 1, value=b"one"),), 1.0)
    assert tracker.on_reply("b", (version("a", 1, value=b"two"),), 2.0) is Outcome.PENDING
    replica_b = tracker.trace().replicas[1]
    assert replica_b.outcome is ReplicaOutcome.FAILED
    assert replica_b.reason is not None
    assert replica_b.reason.startswith("version conflict: two different versions share the dot")
    assert tracker.result() == (version("a", 1, value=b"one"),)


def test_read_tracker_refuses_what_the_shell_must_not_do() -> None:
    with pytest.raises(ValueError, match="refuse the get instead"):
        ReadTracker(plan_read(WALK, live_except("a", "b"), STRICT), 2)
    with pytest.raises(ValueError, match="r=1 differs from the plan's r=2"):
        ReadTracker(plan_read(WALK, ALL, SLOPPY), 1)
    tracker = read_tracker()
    tracker.on_reply("a", (V1,), 1.0)
    with pytest.raises(ValueError, match="'a' already answered this get"):
        tracker.on_reply("a", (V2,), 2.0)
    assert tracker.result() == (V1,)  # the refused answer left no trace
    with pytest.raises(ValueError, match="'f' is not a target of this get"):
        tracker.on_reply("f", (), 1.0)


# ---------------------------------------------------------------------------------------------
# Traces.
# ---------------------------------------------------------------------------------------------


def test_a_get_trace_shows_who_answered_how_fast_what_they_held_and_what_gets_repaired() -> None:
    tracker = read_tracker(live_except("c"))  # targets a, b, d (for c)
    tracker.on_reply("a", (V2,), 1.25)
    tracker.on_reply("b", (version("b", 1, value=None), V1), 2.5)
    tracker.on_failure("d", 3.0, "unavailable")
    trace = tracker.trace().to_dict()
    assert json.loads(json.dumps(trace)) == trace
    assert trace == {
        "operation": "get",
        "n": 3,
        "required": 2,
        "sloppy": True,
        "coordinator": None,
        "preference_list": ["a", "b", "c"],
        "targets": [
            {"node_id": "a", "hint_for": None},
            {"node_id": "b", "hint_for": None},
            {"node_id": "d", "hint_for": "c"},
        ],
        "replicas": [
            {
                "node_id": "a",
                "hint_for": None,
                "outcome": "replied",
                "elapsed_ms": 1.25,
                "reason": None,
                "versions": ["a:2"],
            },
            {
                "node_id": "b",
                "hint_for": None,
                "outcome": "replied",
                "elapsed_ms": 2.5,
                "reason": None,
                "versions": ["a:1", "b:1 (tombstone)"],
            },
            {
                "node_id": "d",
                "hint_for": "c",
                "outcome": "failed",
                "elapsed_ms": 3.0,
                "reason": "unavailable",
                "versions": [],
            },
        ],
        "outcome": "succeeded",
        "decided_ms": 2.5,
        "decided_by_deadline": False,
        "failure": None,
        "hints_written": [],
        "result": ["a:2", "b:1 (tombstone)"],
        "repairs": [
            {"node_id": "a", "versions": ["a:2", "b:1 (tombstone)"]},
            {"node_id": "b", "versions": ["a:2", "b:1 (tombstone)"]},
        ],
    }


def test_a_put_trace_names_the_coordinator_and_the_outstanding_replicas() -> None:
    tracker = write_tracker()
    tracker.on_ack("a", 0.5)
    tracker.on_deadline(10.0)
    trace = tracker.trace()
    assert trace.coordinator == "a"
    assert trace.outcome is Outcome.FAILED
    assert trace.failure == tracker.failure_message()
    assert [r.outcome for r in trace.replicas] == [
        ReplicaOutcome.ACKED,
        ReplicaOutcome.NO_ANSWER,
        ReplicaOutcome.NO_ANSWER,
    ]
    as_dict = trace.to_dict()
    assert (as_dict["operation"], as_dict["required"], as_dict["decided_by_deadline"]) == (
        "put",
        2,
        True,
    )
    assert as_dict["replicas"][1]["elapsed_ms"] is None


def test_the_state_tables_make_every_decision_final() -> None:
    assert OUTCOME_TRANSITIONS[Outcome.PENDING] == {Outcome.SUCCEEDED, Outcome.FAILED}
    assert OUTCOME_TRANSITIONS[Outcome.SUCCEEDED] == OUTCOME_TRANSITIONS[Outcome.FAILED] == set()
    assert all(
        not REPLICA_TRANSITIONS[answer]
        for answer in ReplicaOutcome
        if answer is not ReplicaOutcome.NO_ANSWER
    )


# ---------------------------------------------------------------------------------------------
# Properties.
# ---------------------------------------------------------------------------------------------


@st.composite
def cluster_views(draw: st.DrawFn) -> tuple[tuple[str, ...], frozenset[str], QuorumConfig]:
    node_count = draw(st.integers(min_value=0, max_value=10))
    walk = tuple(draw(st.permutations([f"n{index}" for index in range(node_count)])))
    live = frozenset(draw(st.sets(st.sampled_from(walk))) if walk else set())
    n = draw(st.integers(min_value=1, max_value=N_MAX))
    r = draw(st.integers(min_value=1, max_value=n))
    w = draw(st.integers(min_value=1, max_value=n))
    return walk, live, QuorumConfig(n=n, r=r, w=w, sloppy=draw(st.booleans()))


@PROPERTY_SETTINGS
@given(cluster_views())
def test_targets_are_the_first_n_healthy_nodes_with_hints_for_the_down_owners(
    view: tuple[tuple[str, ...], frozenset[str], QuorumConfig],
) -> None:
    walk, live, config = view
    plan: WritePlan = plan_write(walk, live, config)
    read: ReadPlan = plan_read(walk, live, config)
    top_n = walk[: config.n]
    beyond = walk[config.n :]
    node_ids = [target.node_id for target in plan.targets]
    assert read.targets == plan.targets
    assert plan.preference_list == top_n
    # Distinct, never down, every live owner included.
    assert len(set(node_ids)) == len(node_ids)
    assert set(node_ids) <= live
    assert {node for node in top_n if node in live} <= set(node_ids)
    # Fallbacks come from beyond the top N, each standing in for a distinct down owner, in order.
    fallbacks = plan.fallbacks
    assert all(t.node_id in beyond for t in fallbacks)
    assert [t.hint_for for t in fallbacks] == list(plan.down_owners[: len(fallbacks)])
    assert all(t.hint_for not in live for t in fallbacks)
    # Dynamo 4.6: sloppy targets are "the first N healthy nodes" of the walk, in walk order.
    healthy = [node for node in walk if node in live]
    if config.sloppy:
        assert node_ids == healthy[: config.n]
    else:
        assert fallbacks == ()
        assert node_ids == [node for node in top_n if node in live]
    assert plan.achievable == (len(node_ids) >= config.w and plan.live_owners >= 1)
    assert read.achievable == (len(node_ids) >= config.r)
    coordinator = coordinator_for(walk, live, config)
    assert coordinator == next((node for node in top_n if node in live), None)
    assert (coordinator is not None) == (plan.live_owners >= 1)
    if coordinator is not None:
        assert plan.can_coordinate(coordinator)


@PROPERTY_SETTINGS
@given(
    w=st.integers(min_value=1, max_value=3),
    answers=st.permutations(["a", "b", "c"]),
    acks=st.lists(st.booleans(), min_size=3, max_size=3),
)
def test_the_write_decision_is_made_at_the_first_answer_that_settles_it(
    w: int, answers: list[str], acks: list[bool]
) -> None:
    """A model check: SUCCEEDED at the w-th ack, FAILED at the first moment that acks plus
    outstanding drop below w, and never a change afterwards."""
    tracker = write_tracker(config=QuorumConfig(w=w))
    acked = failed = 0
    decided: Outcome | None = None
    for node_id, ack in zip(answers, acks, strict=True):
        outcome = tracker.on_ack(node_id, 1.0) if ack else tracker.on_failure(node_id, 1.0, "no")
        acked += ack
        failed += not ack
        if decided is None:
            if acked >= w:
                decided = Outcome.SUCCEEDED
            elif acked + (3 - acked - failed) < w:
                decided = Outcome.FAILED
        assert outcome is (decided or Outcome.PENDING)
    assert decided is not None
    if decided is Outcome.FAILED:
        assert tracker.failure_is_definite() is False  # no failure here was declared certain
