"""Pure tests of the linearizability checker (distlab.chaos.linearizability).

References: Herlihy & Wing, "Linearizability", TOPLAS 1990 (the definition: each operation takes
effect at one instant between its invoke and its completion); Wing & Gong 1993 and Lowe 2017
(the search); Maelstrom's rule for indefinite operations ("when in doubt, indefinite": an ``info``
write may take effect at any time after its invoke, or never).

Hand-written histories read as transcripts: ``Script.op(process, f, start_s, end_s, ...)`` is one
client operation. The property tests drive an atomic register in simulation, so every history
they generate is linearizable by construction, and compare the search with brute force on small
arbitrary histories.
"""

from __future__ import annotations

import ast
import itertools
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distlab.chaos import linearizability
from distlab.chaos.history import HistoryRecorder, Operation, OpType, pair
from distlab.chaos.linearizability import (
    STEPS_MAX_DEFAULT,
    Call,
    KeyResult,
    RegisterModel,
    Verdict,
    check_calls,
    check_register_history,
    register_calls,
)

NS_PER_S = 1_000_000_000


# --- Transcripts ----------------------------------------------------------------------------


@dataclass
class Script:
    """Client operations written down one per line, recorded in time order on ``operations()``.

    ``end_s=None`` leaves the operation without a completion (the history ends first).
    """

    events: list[tuple[int, int, OpType, int, str, str, Any]] = field(default_factory=list)

    def op(
        self,
        process: int,
        f: str,
        start_s: float,
        end_s: float | None,
        value: Any = None,
        result: Any = None,
        type: OpType = OpType.OK,
        key: str = "k",
    ) -> None:
        order = len(self.events)
        self.events.append(
            (round(start_s * NS_PER_S), order, OpType.INVOKE, process, f, key, value)
        )
        if end_s is not None:
            completion_value = result if type is OpType.OK else None
            self.events.append(
                (round(end_s * NS_PER_S), order + 1, type, process, f, key, completion_value)
            )

    def operations(self) -> list[Operation]:
        recorder = HistoryRecorder()
        for time_ns, _, op_type, process, f, key, value in sorted(self.events):
            recorder.record(op_type, process, f, time_ns, key=key, value=value)
        return pair(recorder.ops)


def check(script: Script, steps_max: int = STEPS_MAX_DEFAULT) -> dict[str, KeyResult]:
    return {
        result.key: result
        for result in check_register_history(script.operations(), steps_max_per_key=steps_max)
    }


def call_id(script: Script, process: int, f: str) -> int:
    """The op id (history index of the invoke) of ``process``'s only ``f`` operation."""
    (found,) = [
        operation.invoke.index
        for operation in script.operations()
        if operation.process == process and operation.f == f
    ]
    return found


# --- Hand-written histories -----------------------------------------------------------------


def test_sequential_puts_and_gets_are_linearizable() -> None:
    script = Script()
    script.op(1, "put", 0.0, 1.0, value="v1")
    script.op(2, "get", 2.0, 3.0, result=["v1"])
    script.op(1, "put", 4.0, 5.0, value="v2")
    script.op(2, "get", 6.0, 7.0, result=["v2"])
    result = check(script)["k"]
    assert result.verdict is Verdict.OK
    assert result.calls == 4
    assert result.linearization == (0, 2, 4, 6)
    assert result.explanation == ""
    assert result.stuck_calls == ()


@pytest.mark.parametrize("seen", [None, ["v1"]])
def test_a_get_overlapping_a_put_may_see_the_old_or_the_new_value(seen: list[str] | None) -> None:
    """Herlihy & Wing 1990: overlapping operations may take effect in either order."""
    script = Script()
    script.op(1, "put", 0.0, 2.0, value="v1")
    script.op(2, "get", 1.0, 3.0, result=seen)
    assert check(script)["k"].verdict is Verdict.OK


def test_a_stale_read_after_an_acknowledged_put_is_illegal() -> None:
    script = Script()
    script.op(1, "put", 0.0, 1.0, value="v1")
    script.op(1, "put", 2.0, 3.0, value="v2")
    script.op(2, "get", 4.0, 5.0, result=["v1"])
    result = check(script)["k"]
    stale_get = call_id(script, 2, "get")
    assert result.verdict is Verdict.ILLEGAL
    assert result.stuck_calls == (stale_get,)
    assert result.states == ("'v2'",)
    assert len(result.linearization) == 2
    assert f"op {stale_get}," in result.explanation
    assert "process 2" in result.explanation
    assert "['v1']" in result.explanation
    assert "4.000-5.000 s" in result.explanation
    assert "'v2' (put by process 1, op 2)" in result.explanation


def test_reading_a_value_never_written_is_illegal() -> None:
    script = Script()
    script.op(1, "put", 0.0, 1.0, value="v1")
    script.op(2, "get", 0.5, 2.0, result=["ghost"])
    result = check(script)["k"]
    assert result.verdict is Verdict.ILLEGAL
    assert result.stuck_calls == (call_id(script, 2, "get"),)
    assert result.states == ("'v1'",)
    assert "['ghost']" in result.explanation


def test_an_indefinite_put_whose_value_is_read_later_took_effect() -> None:
    script = Script()
    script.op(1, "put", 0.0, 1.0, value="v1", type=OpType.INFO)
    script.op(2, "get", 5.0, 6.0, result=["v1"])
    result = check(script)["k"]
    assert result.verdict is Verdict.OK
    assert result.linearization == (0, 2)


def test_an_indefinite_put_may_take_effect_after_its_client_gave_up() -> None:
    script = Script()
    script.op(1, "put", 0.0, 1.0, value="v1", type=OpType.INFO)
    script.op(2, "get", 2.0, 3.0, result=None)
    script.op(2, "get", 4.0, 5.0, result=["v1"])
    assert check(script)["k"].verdict is Verdict.OK


@pytest.mark.parametrize("type", [OpType.INFO, None])
def test_an_indefinite_put_whose_value_is_never_read_is_ok(type: OpType | None) -> None:
    script = Script()
    script.op(1, "put", 0.0, 1.0, value="v1")
    if type is None:
        script.op(3, "put", 1.5, None, value="lost")
    else:
        script.op(3, "put", 1.5, 2.0, value="lost", type=type)
    script.op(2, "get", 3.0, 4.0, result=["v1"])
    result = check(script)["k"]
    assert result.verdict is Verdict.OK
    assert result.calls == 3
    lost = call_id(script, 3, "put")
    assert lost not in result.linearization  # it never took effect, or took effect last


def test_a_read_of_an_indefinite_put_then_a_read_of_the_older_value_is_illegal() -> None:
    script = Script()
    script.op(1, "put", 0.0, 1.0, value="v1")
    script.op(1, "put", 2.0, 3.0, value="v2", type=OpType.INFO)
    script.op(2, "get", 4.0, 5.0, result=["v2"])
    script.op(2, "get", 6.0, 7.0, result=["v1"])
    result = check(script)["k"]
    assert result.verdict is Verdict.ILLEGAL
    (later_get,) = [
        call.id
        for call in register_calls(script.operations())["k"]
        if call.f == "get" and call.result == ["v1"]
    ]
    assert result.stuck_calls == (later_get,)
    assert result.states == ("'v2'",)
    assert f"op {later_get}," in result.explanation
    (indefinite_put,) = [
        call.id for call in register_calls(script.operations())["k"] if call.argument == "v2"
    ]
    assert f"'v2' (put by process 1, op {indefinite_put}, indefinite)" in result.explanation


def test_a_failed_put_did_not_happen() -> None:
    script = Script()
    script.op(1, "put", 0.0, 1.0, value="v1")
    script.op(1, "put", 2.0, 3.0, value="v2", type=OpType.FAIL)
    script.op(2, "get", 4.0, 5.0, result=["v2"])
    result = check(script)["k"]
    assert result.calls == 2
    assert result.verdict is Verdict.ILLEGAL


def test_a_delete_then_a_get_finds_nothing() -> None:
    script = Script()
    script.op(1, "put", 0.0, 1.0, value="v1")
    script.op(1, "delete", 2.0, 3.0)
    script.op(2, "get", 4.0, 5.0, result=None)
    assert check(script)["k"].verdict is Verdict.OK
    script.op(2, "get", 6.0, 7.0, result=["v1"])
    assert check(script)["k"].verdict is Verdict.ILLEGAL


def test_a_get_returning_siblings_that_include_the_current_value_is_ok() -> None:
    """The lenient reading of Dynamo siblings (DeCandia et al. 2007, 4.4): any one will do."""
    script = Script()
    script.op(1, "put", 0.0, 1.0, value="v1")
    script.op(2, "put", 0.5, 1.5, value="v2")
    script.op(3, "get", 2.0, 3.0, result=["v1", "v2"])
    assert check(script)["k"].verdict is Verdict.OK
    script.op(3, "get", 4.0, 5.0, result=["v0", "ghost"])
    assert check(script)["k"].verdict is Verdict.ILLEGAL


def test_reads_with_unknown_outcome_are_dropped() -> None:
    script = Script()
    script.op(1, "put", 0.0, 1.0, value="v1")
    script.op(2, "get", 2.0, 3.0, type=OpType.INFO)
    script.op(3, "get", 2.0, None)
    script.op(4, "get", 2.0, 3.0, type=OpType.FAIL)
    assert register_calls(script.operations())["k"] == [
        Call(id=0, process=1, f="put", argument="v1", result=None, call_ns=0,
             return_ns=NS_PER_S, completion_id=1),
    ]  # fmt: skip


def test_register_calls_keeps_indefinite_writes_and_ignores_other_operations() -> None:
    script = Script()
    script.op(1, "put", 0.0, 1.0, value="v1", type=OpType.INFO)
    script.op(2, "delete", 0.5, None)
    script.op(3, "get", 0.6, 0.7, result=["v1"])
    script.op(4, "cas", 0.8, 0.9, value=["v1", "v2"])
    script.op(5, "put", 1.0, 1.1, value="x", key="other")
    recorder = HistoryRecorder()
    recorder.record(OpType.INVOKE, 6, "put", 0, key=None, value="keyless")
    recorder.record(OpType.OK, 6, "put", 1, key=None)
    by_key = register_calls([*script.operations(), *pair(recorder.ops)])
    assert sorted(by_key) == ["k", "other"]
    put, delete, get = by_key["k"]
    assert (put.f, put.argument, put.return_ns) == ("put", "v1", None)
    assert put.completion_id is not None
    assert (delete.f, delete.return_ns, delete.completion_id) == ("delete", None, None)
    assert (get.result, get.return_ns) == (["v1"], round(0.7 * NS_PER_S))


def test_keys_are_checked_independently() -> None:
    """P-compositionality (Herlihy & Wing 1990, 3.3 locality): one bad key spoils no other."""
    script = Script()
    script.op(1, "put", 0.0, 1.0, value="a1", key="a")
    script.op(2, "get", 2.0, 3.0, result=["ghost"], key="a")
    script.op(3, "put", 0.0, 1.0, value="b1", key="b")
    script.op(4, "get", 2.0, 3.0, result=["b1"], key="b")
    results = check_register_history(script.operations())
    assert [(result.key, result.verdict) for result in results] == [
        ("a", Verdict.ILLEGAL),
        ("b", Verdict.OK),
    ]


def test_an_exhausted_budget_gives_unknown_not_a_guess() -> None:
    script = Script()
    for process in range(1, 6):
        script.op(process, "put", 0.0, 1.0, value=f"v{process}")
    script.op(9, "get", 2.0, 3.0, result=["ghost"])
    result = check(script, steps_max=3)["k"]
    assert result.verdict is Verdict.UNKNOWN
    assert result.steps == 3
    assert result.stuck_calls == ()
    assert "budget of 3 steps" in result.explanation
    assert check(script)["k"].verdict is Verdict.ILLEGAL


def test_an_empty_history_is_linearizable() -> None:
    result = check_calls(RegisterModel(), [], key="k")
    assert (result.verdict, result.calls, result.linearization) == (Verdict.OK, 0, ())


def test_malformed_calls_are_refused() -> None:
    put = Call(id=1, process=1, f="put", argument="v", result=None, call_ns=5, return_ns=9)
    with pytest.raises(ValueError, match="same id"):
        check_calls(RegisterModel(), [put, put])
    with pytest.raises(ValueError, match="before its call"):
        check_calls(RegisterModel(), [replace(put, return_ns=4)])
    with pytest.raises(ValueError, match="no operation 'cas'"):
        check_calls(RegisterModel(), [replace(put, f="cas")])


def test_the_checker_is_sans_io() -> None:
    """STYLE.md rule 1, checked here as tests/unit/test_pure_modules.py checks the cores."""
    tree = ast.parse(Path(linearizability.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported <= {"__future__", "collections", "dataclasses", "enum", "typing", "distlab"}


# --- An atomic register in simulation -------------------------------------------------------


@dataclass
class SimulatedOp:
    process: int
    f: str
    start_ns: int
    end_ns: int | None  # None: the history ends before the completion
    type: OpType
    value: Any = None  # put: the value written
    result: Any = None  # get: what the register held at the instant it took effect
    effect_ns: int | None = None  # when it took effect; None: never


def simulate_register(
    rng: random.Random, processes: int, ops: int, indefinite_fraction: float
) -> list[SimulatedOp]:
    """Operations on one atomic register, with random overlapping timings.

    Each operation takes effect at one instant inside its interval (an indefinite write at any
    instant after its invoke, possibly after its client gave up, or never), and each get returns
    what the register held at that instant: linearizable by construction.
    """
    clock_ns = [rng.randrange(0, 20) for _ in range(processes)]
    process_ids = list(range(processes))
    history: list[SimulatedOp] = []
    for number in range(ops):
        slot = rng.randrange(processes)
        start_ns = clock_ns[slot] + rng.randrange(0, 10)
        end_ns = start_ns + rng.randrange(1, 40)
        clock_ns[slot] = end_ns
        f = rng.choices(["put", "get", "delete"], weights=[5, 6, 1])[0]
        effect_ns = rng.randint(start_ns, end_ns)
        op = SimulatedOp(process_ids[slot], f, start_ns, end_ns, OpType.OK, effect_ns=effect_ns)
        if f == "put":
            op.value = f"p{process_ids[slot]}-{number}"
        if rng.random() < indefinite_fraction:
            op.type = OpType.INFO
            op.effect_ns = rng.choice([None, rng.randint(start_ns, end_ns + 200)])
            process_ids[slot] += processes  # Jepsen's rule: a crashed process is replaced
            if rng.random() < 0.3:
                op.end_ns = None
        history.append(op)
    return settle(history)


def record(ops: Sequence[SimulatedOp]) -> list[Operation]:
    events: list[tuple[int, int, OpType, int, str, Any]] = []
    for number, op in enumerate(ops):
        events.append((op.start_ns, 2 * number, OpType.INVOKE, op.process, op.f, op.value))
        if op.end_ns is not None:
            value = op.result if op.type is OpType.OK and op.f == "get" else None
            events.append((op.end_ns, 2 * number + 1, op.type, op.process, op.f, value))
    recorder = HistoryRecorder()
    for time_ns, _, op_type, process, f, value in sorted(events):
        recorder.record(op_type, process, f, time_ns, key="k", value=value)
    return pair(recorder.ops)


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    processes=st.integers(1, 6),
    ops=st.integers(1, 40),
    indefinite_fraction=st.sampled_from([0.0, 0.1, 0.3]),
)
def test_an_atomic_register_is_always_linearizable_and_one_ghost_read_is_not(
    seed: int, processes: int, ops: int, indefinite_fraction: float
) -> None:
    rng = random.Random(seed)
    history = simulate_register(rng, processes, ops, indefinite_fraction)
    results = check_register_history(record(history))
    assert [result.verdict for result in results] in ([], [Verdict.OK]), results
    gets = [op for op in history if op.f == "get" and op.type is OpType.OK]
    if not gets:
        return
    ghost = rng.choice(gets)
    ghost.result = ["never-written"]
    (result,) = check_register_history(record(history))
    assert result.verdict is Verdict.ILLEGAL, seed
    assert result.explanation
    assert result.stuck_calls


# --- The search against brute force ---------------------------------------------------------


def brute_force_linearizable(calls: Sequence[Call]) -> bool:
    """Herlihy & Wing's definition, read literally: some subset of the indefinite calls and
    some order of the calls that respects real time is a legal run of the register."""
    model = RegisterModel()
    definite = [call for call in calls if call.return_ns is not None]
    indefinite = [call for call in calls if call.return_ns is None]
    for size in range(len(indefinite) + 1):
        for chosen in itertools.combinations(indefinite, size):
            for order in itertools.permutations([*definite, *chosen]):
                if respects_real_time(order) and is_legal(model, order):
                    return True
    return False


def respects_real_time(order: Sequence[Call]) -> bool:
    for position, later in enumerate(order):
        for earlier in order[position + 1 :]:
            if earlier.return_ns is not None and earlier.return_ns < later.call_ns:
                return False
    return True


def is_legal(model: RegisterModel, order: Sequence[Call]) -> bool:
    state = model.init()
    for call in order:
        legal, state = model.step(state, call)
        if not legal:
            return False
    return True


@st.composite
def arbitrary_calls(draw: st.DrawFn) -> list[Call]:
    """Up to six register calls with arbitrary timings and arbitrary reads of a few values."""
    count = draw(st.integers(0, 6))
    calls = []
    for number in range(count):
        f = draw(st.sampled_from(["put", "put", "get", "get", "delete"]))
        call_ns = draw(st.integers(0, 10))
        indefinite = f != "get" and draw(st.booleans())
        return_ns = None if indefinite else call_ns + draw(st.integers(0, 6))
        argument = draw(st.sampled_from(["a", "b"])) if f == "put" else None
        result = None
        if f == "get":
            result = draw(st.sampled_from([None, ["a"], ["b"], ["a", "b"]]))
        calls.append(Call(number, number, f, argument, result, call_ns, return_ns))
    return calls


@settings(max_examples=300, deadline=None)
@given(calls=arbitrary_calls())
def test_the_search_agrees_with_brute_force(calls: list[Call]) -> None:
    result = check_calls(RegisterModel(), calls)
    assert result.verdict is not Verdict.UNKNOWN
    assert (result.verdict is Verdict.OK) == brute_force_linearizable(calls)
    if result.verdict is Verdict.OK:
        placed = [call for call in calls if call.id in result.linearization]
        order = sorted(placed, key=lambda call: result.linearization.index(call.id))
        assert respects_real_time(order)
        assert is_legal(RegisterModel(), order)
        assert {call.id for call in calls if call.return_ns is not None} <= {
            call.id for call in order
        }


# --- Scale ----------------------------------------------------------------------------------


def test_two_hundred_calls_with_thirty_indefinite_decide_quickly() -> None:
    """A busy key of a chaos run: 200 calls from 10 clients, 30 of them indefinite writes."""
    rng = random.Random(20240611)
    history = simulate_register(rng, processes=10, ops=200, indefinite_fraction=0.0)
    writes = [op for op in history if op.f != "get"]
    for op in rng.sample(writes, 30):
        op.type = OpType.INFO
    history = settle(history)
    started = time.perf_counter()
    (result,) = check_register_history(record(history))
    elapsed_s = time.perf_counter() - started
    assert result.calls == 200
    assert result.verdict is Verdict.OK
    assert elapsed_s < 2.0
    gets = [op for op in history if op.f == "get" and op.type is OpType.OK]
    gets[len(gets) // 2].result = ["never-written"]
    (result,) = check_register_history(record(history))
    assert result.verdict is Verdict.ILLEGAL


def settle(history: list[SimulatedOp]) -> list[SimulatedOp]:
    """Run the operations that took effect in the order they did, and fill in each get's result
    with what the register held then."""
    register = None
    for op in sorted(history, key=lambda op: op.effect_ns or 0):
        if op.effect_ns is None:
            continue
        if op.f == "put":
            register = op.value
        elif op.f == "delete":
            register = None
        else:
            op.result = None if register is None else [register]
    return history


@pytest.mark.parametrize("stale_read_at_the_end", [False, True])
def test_thirty_interchangeable_indefinite_deletes_decide_quickly(
    stale_read_at_the_end: bool,
) -> None:
    """Any one of the pending deletes explains a read of nothing: the search must not try them
    one by one (module docstring, pruning 4)."""
    script = Script()
    for round_ in range(30):
        script.op(100 + round_, "delete", round_, round_ + 0.5, type=OpType.INFO)
        script.op(1, "put", round_ + 0.1, round_ + 0.2, value=f"v{round_}")
        seen = None if round_ % 2 else [f"v{round_}"]
        script.op(2, "get", round_ + 0.3, round_ + 0.4, result=seen)
    if stale_read_at_the_end:
        script.op(2, "get", 40.0, 41.0, result=["v0"])
    result = check(script)["k"]
    expected = Verdict.ILLEGAL if stale_read_at_the_end else Verdict.OK
    assert result.verdict is expected
    assert result.steps < STEPS_MAX_DEFAULT // 10
