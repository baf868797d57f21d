"""A linearizability checker: Wing & Gong's search with Lowe's memoization, one key at a time.

A history is **linearizable** (Herlihy & Wing, "Linearizability: a correctness condition for
concurrent objects", TOPLAS 1990) if every operation can be given a single instant between its
invoke and its completion such that, taken in the order of those instants, the operations are a
legal run of the sequential object (the **model**). This module decides that for one object at
a time, and for the KV store sees each key as a register.

References:

- J. M. Wing and C. Gong, "Testing and verifying concurrent objects", JPDC 17(1), 1993: the
  search below, which extends a linearization one call at a time and backtracks.
- G. Lowe, "Testing for linearizability", Concurrency and Computation 29(4), 2017: memoize the
  configurations already explored, keyed by (the set of linearized calls as a bitset, the model
  state), so that two orders reaching the same configuration are searched once.
- Herlihy & Wing 1990, section 3.3 (locality) and Horn & Kroening, "Faster linearizability
  checking via P-compositionality", FORTE 2015: an object made of independent parts is
  linearizable iff each part is, so the KV history is checked key by key.
- Porcupine (github.com/anishathalye/porcupine, ``checker.go``) and Knossos
  (github.com/jepsen-io/knossos), whose layout this follows: calls sorted by invoke time, a doubly
  linked list of call and return **entries** from which a linearized call is *lifted* and into
  which it is *unlifted* on backtrack, and an explicit stack instead of recursion.

Theory of operation. Sort all call and return entries by time (a call before a return at the same
instant, so touching operations count as concurrent). A **configuration** is the set of calls
linearized so far and the model state they lead to. The calls that may be linearized next are
exactly the call entries in the list before its first return entry: a call invoked after some
unlinearized call returned must come after it. Depth first, try each such candidate: if the model
says it is legal and the new configuration is not in the cache, lift it (remove its two entries)
and continue from the new configuration; when no candidate is left, pop the last call, unlift it
and try the next candidate of the configuration before. The history is linearizable iff the
search places every completed call; it is not iff the search exhausts every configuration.

Indefinite calls (completed ``info``, or never completed) may have taken effect at any time after
their invoke, or never (Maelstrom: "when in doubt, indefinite"). Porcupine and Knossos give them
return time +infinity: they never close a window, and linearizing them at the very end is the same
as them never taking effect. So they have a call entry and no return entry, and the search
succeeds as soon as every *completed* call is placed; the indefinite calls placed by then are the
ones that took effect. Definite failures (``fail``) did not happen and are not given to the search.

Four prunings on top of Lowe's cache keep the search small; the first two stop indefinite calls
from multiplying the configurations by 2^k, the last two cut the orders that cannot matter.

1. **Dominance.** Two configurations with the same completed calls placed and the same state
   differ only in which indefinite calls they used up; the one that used fewer can do everything
   the other can (an indefinite call never has to be placed, and never blocks another). So the
   cache keeps, for each (completed-call bitset, state), the minimal sets of indefinite calls
   explored, and a configuration whose set contains one of them is pruned. With no indefinite
   calls this is exactly Lowe's cache.
2. **Completed calls first, indefinite calls as a batch.** From each configuration the search
   tries the completed candidates first, depth first as Wing & Gong do. Only when they are used up
   does it compute all the indefinite candidates at once and enter them all in the cache before
   descending into any: then "put a; put b", whose state is b's, is pruned by the sibling "put b"
   instead of being searched before it.
3. **Reads go first.** If a completed candidate that changes the state in no state (a *read*,
   said by the model's optional ``read_only(call)``) is legal now, placing it now loses nothing:
   any linearization that places it later stays one when it is moved here (nothing it overtakes
   had to precede it, or it would not be a candidate, and it changes no state on the way). So it
   is the configuration's only child. An indefinite read is never placed at all.
4. **Calls of one kind are interchangeable.** Two indefinite candidates with the same ``f`` and
   argument have the same effect, and a candidate stays one until placed, so the batch takes only
   the earliest-invoked candidate of each kind; which of them were used is then always the
   earliest few, and the cache sees symmetric configurations (three deletes, any one of which
   explains a read of nothing) as one.

Soundness of the whole: every configuration in the cache is searched in full (or replaced by a
read child that does at least as well) before the search gives up, and every pruned one is
dominated by one in the cache, so if some configuration could reach a full linearization, the
cached one nearest to it would have.

A budget, ``steps_max`` model steps per object, bounds the work; a search that runs out gives
``UNKNOWN``, never a guess. For a history that is not linearizable the report names the longest
partial linearization found, the state(s) it reaches, and the completed calls that could not be
placed next (the culprits), as Porcupine's visualization and Knossos's final-paths do.

What it leaves out: Knossos's linear (just-in-time) search and Gibbons & Korach's polynomial
algorithm for registers with unique values (our siblings, deletes and indefinite writes break its
premises), and any model but the register (``RegisterModel``); the search is generic over
``Model``.

Pure: standard library and ``distlab.chaos.history`` only.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any, Protocol, TypeVar

from distlab.chaos.history import Operation, OpType

# Model steps (legality checks) one object's search may take. CPython does 0.5-1 million steps a
# second here. An ordinary key of a chaos run (tens of calls, a few clients at a time) is decided
# in tens to a few thousand steps: a 60 s run's ~10^4 operations over 100-1000 keys check in
# about 0.1 s in all, anomalies included. The budget bites only on a pathological key (ten
# clients hammering one key for 200 calls with an anomaly to prove, ~10^5-10^6 steps): 200k steps
# caps such a key at a few tenths of a second, so even a dozen of them keep the whole check in
# the low seconds. Pass a larger steps_max to decide such a key.
STEPS_MAX_DEFAULT = 200_000
# States listed for the longest partial linearization: enough to show a reader that concurrent
# writes could leave either value, few enough for one line of the report.
STATES_DESCRIBED_MAX = 8
# Other stuck calls named by op id in the explanation, after the main culprit.
STUCK_NAMED_MAX = 5

NS_PER_S = 1_000_000_000

S = TypeVar("S")


class Verdict(StrEnum):
    OK = "ok"
    ILLEGAL = "illegal"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Call:
    """One operation as the search sees it: when it ran and what it did or observed."""

    id: int  # the history index of the invoke; names the operation in reports
    process: int
    f: str
    argument: Any  # the input, e.g. the value written
    result: Any  # the observed output; meaningless when return_ns is None
    call_ns: int
    return_ns: int | None  # None: indefinite, may take effect any time after call_ns, or never
    completion_id: int | None = None  # history index of the completion, if any


class Model(Protocol[S]):
    """A sequential specification. States must be hashable (they key the cache); ``step`` must be
    a pure function of the state and the call's ``f``, ``argument`` and ``result`` (the search
    replays it, and takes indefinite calls of the same f and argument as interchangeable).

    A model may also define ``read_only(call) -> bool``: True when ``call`` leaves every state
    unchanged. The search then places a legal read at once (pruning 3); without it, no call is
    taken to be a read, which is slower but equally correct.
    """

    def init(self) -> S: ...

    def step(self, state: S, call: Call) -> tuple[bool, S]:
        """Whether ``call``, with its observed result, is legal in ``state``; the state after."""
        ...

    def describe(self, state: S) -> str: ...


@dataclass(frozen=True, slots=True)
class KeyResult:
    key: str
    verdict: Verdict
    calls: int  # calls checked for this key
    steps: int  # model steps the search used
    # OK: call ids in a valid order (the indefinite calls that took effect included).
    # ILLEGAL or UNKNOWN: the longest partial linearization found.
    linearization: tuple[int, ...]
    # ILLEGAL: the completed calls that could not be placed next after the longest partial
    # linearization, the earliest-returning first. Empty otherwise.
    stuck_calls: tuple[int, ...]
    # ILLEGAL: model.describe() of the state(s) the longest partial linearization(s) reach.
    states: tuple[str, ...]
    explanation: str  # for a person, naming calls by id, process, f and time. Empty for OK.


# --- The register model ---------------------------------------------------------------------


class RegisterModel:
    """A KV store key seen as a register; the state is its value, None when absent.

    ``put`` writes its argument and ``delete`` makes the key absent; both are always legal.
    A ``get`` returns None (not found) or a list of sibling values. It is legal if the key is
    absent and the get found nothing, or if the register's value is one of the siblings. That is
    the lenient reading of Dynamo's siblings (DeCandia et al. 2007, 4.4): a read that returns
    concurrent versions counts as linearizable if any one of them is the register's value, so
    this model does not flag a stale sibling returned next to the current value. A get whose
    outcome is unknown constrains nothing: always legal, state unchanged.
    """

    def init(self) -> str | None:
        return None

    def step(self, state: str | None, call: Call) -> tuple[bool, str | None]:
        if call.f == "put":
            value: str | None = call.argument
            return True, value
        if call.f == "delete":
            return True, None
        if call.f == "get":
            return _read_is_legal(state, call), state
        raise ValueError(f"op {call.id}: the register model has no operation {call.f!r}")

    def describe(self, state: str | None) -> str:
        return "absent" if state is None else repr(state)

    def read_only(self, call: Call) -> bool:
        """A get changes the register in no state (the optional hook of ``Model``)."""
        return call.f == "get"


def _read_is_legal(state: str | None, call: Call) -> bool:
    if call.return_ns is None:
        return True
    if call.result is None:
        return state is None
    if isinstance(call.result, str):  # a single value rather than a list of siblings
        return state == call.result
    return state is not None and state in call.result


REGISTER_FUNCTIONS = frozenset({"put", "get", "delete"})


def register_calls(operations: Iterable[Operation]) -> dict[str, list[Call]]:
    """The KV history as register calls, grouped by key, each list in invoke order.

    Dropped: operations that are not put/get/delete or have no key; ``fail`` operations (they
    did not happen); gets that did not complete ``ok`` (a read with no result constrains
    nothing). Kept as indefinite (return_ns None): puts and deletes that completed ``info`` or
    never completed.
    """
    by_key: dict[str, list[Call]] = {}
    for operation in operations:
        call = _register_call(operation)
        if call is not None:
            assert operation.key is not None
            by_key.setdefault(operation.key, []).append(call)
    for calls in by_key.values():
        calls.sort(key=lambda call: (call.call_ns, call.id))
    return by_key


def _register_call(operation: Operation) -> Call | None:
    if operation.f not in REGISTER_FUNCTIONS or operation.key is None:
        return None
    if operation.type is OpType.FAIL:
        return None
    definite = operation.type is OpType.OK
    if operation.f == "get" and not definite:
        return None
    completion = operation.completion
    return Call(
        id=operation.invoke.index,
        process=operation.process,
        f=operation.f,
        argument=operation.invoke.value if operation.f == "put" else None,
        result=operation.result if definite else None,
        call_ns=operation.invoke_ns,
        return_ns=operation.complete_ns if definite else None,
        completion_id=completion.index if completion is not None else None,
    )


def check_register_history(
    operations: Iterable[Operation], steps_max_per_key: int = STEPS_MAX_DEFAULT
) -> list[KeyResult]:
    """Check each key of a paired KV history as a register; results sorted by key."""
    model = RegisterModel()
    by_key = register_calls(operations)
    return [
        check_calls(model, by_key[key], key=key, steps_max=steps_max_per_key)
        for key in sorted(by_key)
    ]


# --- The search -----------------------------------------------------------------------------


def check_calls(
    model: Model[S], calls: Sequence[Call], key: str = "", steps_max: int = STEPS_MAX_DEFAULT
) -> KeyResult:
    """Decide whether ``calls`` (one object's history) are linearizable with respect to ``model``.

    Raises ValueError for a malformed history: duplicate call ids, or a return before its call.
    """
    if steps_max < 0:
        raise ValueError(f"steps_max must be >= 0, not {steps_max}")
    ordered = _validated(calls)
    search = _Search(model, ordered, steps_max)
    outcome = search.run()
    return _result(model, ordered, key, steps_max, search, outcome)


def _validated(calls: Sequence[Call]) -> list[Call]:
    ids = set()
    for call in calls:
        if call.id in ids:
            raise ValueError(f"op {call.id}: two calls with the same id")
        ids.add(call.id)
        if call.return_ns is not None and call.return_ns < call.call_ns:
            raise ValueError(f"op {call.id}: returns at {call.return_ns} ns before its call")
    return sorted(calls, key=lambda call: (call.call_ns, call.id))


class _BudgetExhausted(Exception):
    pass


class _Phase(IntEnum):
    """Where a configuration's search of its candidates stands (module docstring, prunings)."""

    READS = 0  # look for a read legal now: if there is one, it is the only child
    COMPLETED = 1  # the completed candidates, depth first, as Wing & Gong
    INDEFINITE = 2  # the indefinite candidates, admitted as a batch, then each in turn


class _Frame:
    """One configuration on the search stack, and where its search of candidates stands."""

    __slots__ = ("call", "children", "cursor", "definite", "indefinite", "phase", "state")

    def __init__(self, call: int, state: Any, definite: int, indefinite: int, cursor: int) -> None:
        self.call = call  # the call whose placement led here; -1 at the root
        self.state = state
        self.definite = definite  # bitset of the completed calls placed
        self.indefinite = indefinite  # bitset of the indefinite calls placed
        self.phase = _Phase.READS
        # COMPLETED: the next entry of the list to try. INDEFINITE: the next child to descend into.
        self.cursor = cursor
        # INDEFINITE: the children, all admitted to the cache, as (call, state, indefinite).
        self.children: list[tuple[int, Any, int]] = []


class _Search:
    """Wing & Gong's search over one object's calls; see the module docstring."""

    def __init__(self, model: Model[Any], calls: list[Call], steps_max: int) -> None:
        self.model = model
        self.calls = calls
        self.steps_max = steps_max
        self.steps = 0
        self.definite = [call.return_ns is not None for call in calls]
        self.definite_total = sum(self.definite)
        read_only = getattr(model, "read_only", None)
        self.read_only = [callable(read_only) and bool(read_only(call)) for call in calls]
        self.kind = [_kind(index, call) for index, call in enumerate(calls)]
        self._build_entries()
        # (definite bitset, state) -> the minimal indefinite bitsets explored with them.
        self.cache: dict[tuple[int, Any], list[int]] = {}
        self.path: list[int] = []  # the calls placed, in order: the stack's linearization
        # The longest partial linearization: its completed-call count and bitset, and each
        # distinct state reached with that bitset with the path that reached it.
        self.best_count = -1
        self.best_definite = 0
        self.best: list[tuple[Any, tuple[int, ...]]] = []

    def _build_entries(self) -> None:
        """The doubly linked list of entries; index 0 is the head and the last is the tail.

        Entry kinds and times sort a call before a return at the same instant, so operations
        that touch count as concurrent (Porcupine does the same).
        """
        events = []
        for index, call in enumerate(self.calls):
            events.append((call.call_ns, 0, index))
            if call.return_ns is not None:
                events.append((call.return_ns, 1, index))
        events.sort()
        size = len(events) + 2
        self.next = list(range(1, size + 1))
        self.previous = list(range(-1, size - 1))
        self.is_call = [False] * size
        self.entry_call = [-1] * size
        self.call_entry = [0] * len(self.calls)
        self.return_entry = [-1] * len(self.calls)
        for position, (_, kind, index) in enumerate(events, start=1):
            self.entry_call[position] = index
            if kind == 0:
                self.is_call[position] = True
                self.call_entry[index] = position
            else:
                self.return_entry[index] = position

    def _lift(self, index: int) -> None:
        """Remove a call's entries from the list; ``_unlift`` must undo lifts in reverse order."""
        for entry in (self.call_entry[index], self.return_entry[index]):
            if entry >= 0:
                self.next[self.previous[entry]] = self.next[entry]
                self.previous[self.next[entry]] = self.previous[entry]

    def _unlift(self, index: int) -> None:
        for entry in (self.return_entry[index], self.call_entry[index]):
            if entry >= 0:
                self.next[self.previous[entry]] = entry
                self.previous[self.next[entry]] = entry

    def _step(self, state: Any, index: int) -> tuple[bool, Any]:
        self.steps += 1
        if self.steps > self.steps_max:
            raise _BudgetExhausted
        return self.model.step(state, self.calls[index])

    def _admit(self, definite: int, indefinite: int, state: Any) -> bool:
        """Enter a configuration in the cache, unless one there dominates it (module docstring,
        pruning 1): same completed calls and state, a subset of its indefinite calls."""
        key = (definite, state)
        explored = self.cache.get(key)
        if explored is None:
            self.cache[key] = [indefinite]
            return True
        for seen in explored:
            if seen & ~indefinite == 0:
                return False
        # Keep the list an antichain: the new set dominates any superset of it.
        explored[:] = [seen for seen in explored if indefinite & ~seen != 0]
        explored.append(indefinite)
        return True

    def _strictly_dominated(self, definite: int, indefinite: int, state: Any) -> bool:
        explored = self.cache.get((definite, state), [])
        return any(seen != indefinite and seen & ~indefinite == 0 for seen in explored)

    def run(self) -> bool | None:
        """True: linearizable (``path`` is a linearization); False: not; None: out of budget."""
        try:
            return self._search()
        except _BudgetExhausted:
            self.steps = self.steps_max
            return None

    def _search(self) -> bool:
        state = self.model.init()
        self._admit(0, 0, state)
        root = _Frame(-1, state, 0, 0, self.next[0])
        if self._arrive(root, 0):
            return True
        stack = [root]
        while stack:
            frame = stack[-1]
            child = self._next_child(frame)
            if child is None:
                stack.pop()
                if frame.call >= 0:
                    self._unlift(frame.call)
                    self.path.pop()
                continue
            if self._arrive(child, child.definite.bit_count()):
                return True
            stack.append(child)
        assert not self.path, "every lift was undone"
        return False

    def _next_child(self, frame: _Frame) -> _Frame | None:
        """The next configuration to descend into from ``frame``, lifted and admitted; None when
        the frame's candidates are used up."""
        if frame.phase is _Phase.READS:
            frame.phase = _Phase.COMPLETED
            read = self._legal_read(frame)
            if read is not None:
                frame.phase = _Phase.INDEFINITE  # with no children: the read is the only one
                return self._descend(frame, *read)
        if frame.phase is _Phase.COMPLETED:
            child = self._next_completed_child(frame)
            if child is not None:
                return child
            frame.phase = _Phase.INDEFINITE
            frame.children = self._indefinite_children(frame)
            frame.cursor = 0
        while frame.cursor < len(frame.children):
            index, state, indefinite = frame.children[frame.cursor]
            frame.cursor += 1
            if not self._strictly_dominated(frame.definite, indefinite, state):
                self._lift(index)
                return _Frame(index, state, frame.definite, indefinite, self.next[0])
        return None

    def _legal_read(self, frame: _Frame) -> tuple[int, Any] | None:
        """A completed read-only candidate legal in the frame's state (pruning 3), if any."""
        entry = frame.cursor
        while self.is_call[entry]:  # the first return entry (or the tail) closes the window
            index = self.entry_call[entry]
            entry = self.next[entry]
            if self.definite[index] and self.read_only[index]:
                legal, state = self._step(frame.state, index)
                if legal:
                    return index, state
        return None

    def _next_completed_child(self, frame: _Frame) -> _Frame | None:
        entry = frame.cursor
        while self.is_call[entry]:
            index = self.entry_call[entry]
            entry = self.next[entry]
            if not self.definite[index] or self.read_only[index]:
                continue  # a read here was found illegal in phase READS
            legal, state = self._step(frame.state, index)
            if legal:
                frame.cursor = entry
                child = self._descend(frame, index, state)
                if child is not None:
                    return child
        frame.cursor = entry
        return None

    def _descend(self, frame: _Frame, index: int, state: Any) -> _Frame | None:
        """The child that places completed call ``index``, lifted; None if the cache has it."""
        definite = frame.definite | (1 << index)
        if not self._admit(definite, frame.indefinite, state):
            return None
        self._lift(index)
        return _Frame(index, state, definite, frame.indefinite, self.next[0])

    def _indefinite_children(self, frame: _Frame) -> list[tuple[int, Any, int]]:
        """One child per kind of indefinite candidate, admitted as a batch (prunings 2 and 4)."""
        children = []
        kinds = set()
        entry = self.next[0]
        while self.is_call[entry]:
            index = self.entry_call[entry]
            entry = self.next[entry]
            if self.definite[index] or self.read_only[index]:
                continue  # an indefinite read never needs to be placed
            if self.kind[index] in kinds:
                continue  # the list is in invoke order: the earliest of its kind is taken
            kinds.add(self.kind[index])
            legal, state = self._step(frame.state, index)
            indefinite = frame.indefinite | (1 << index)
            if legal and self._admit(frame.definite, indefinite, state):
                children.append((index, state, indefinite))
        return children

    def _arrive(self, frame: _Frame, definite_count: int) -> bool:
        """Record a configuration just pushed; True when it places every completed call."""
        if frame.call >= 0:
            self.path.append(frame.call)
        if definite_count > self.best_count:
            self.best_count = definite_count
            self.best_definite = frame.definite
            self.best = [(frame.state, tuple(self.path))]
        elif (
            frame.definite == self.best_definite
            and len(self.best) < STATES_DESCRIBED_MAX
            and all(state != frame.state for state, _ in self.best)
        ):
            self.best.append((frame.state, tuple(self.path)))
        return definite_count == self.definite_total


def _kind(index: int, call: Call) -> Hashable:
    """Calls of one kind have the same effect in every state: an indefinite call's result is
    meaningless, so its f and argument say all it does. An unhashable argument is its own kind."""
    try:
        hash(call.argument)
    except TypeError:
        return ("call", index)
    return ("effect", call.f, call.argument)


# --- Reporting ------------------------------------------------------------------------------


def _result(
    model: Model[Any],
    calls: list[Call],
    key: str,
    steps_max: int,
    search: _Search,
    outcome: bool | None,
) -> KeyResult:
    def ids(indexes: Iterable[int]) -> tuple[int, ...]:
        return tuple(calls[index].id for index in indexes)

    if outcome is True:
        return KeyResult(key, Verdict.OK, len(calls), search.steps, ids(search.path), (), (), "")
    longest = search.best[0][1] if search.best else ()
    if outcome is None:
        explanation = (
            f"The search ran out of its budget of {steps_max} steps; the longest linearizable "
            f"prefix it found places {max(search.best_count, 0)} of {search.definite_total} "
            f"completed calls."
        )
        return KeyResult(
            key, Verdict.UNKNOWN, len(calls), search.steps, ids(longest), (), (), explanation
        )
    stuck = _stuck_calls(search)
    explanation = _explain(model, calls, search, stuck)
    return KeyResult(
        key=key,
        verdict=Verdict.ILLEGAL,
        calls=len(calls),
        steps=search.steps,
        linearization=ids(longest),
        stuck_calls=ids(stuck),
        states=tuple(model.describe(state) for state, _ in search.best),
        explanation=explanation,
    )


def _stuck_calls(search: _Search) -> list[int]:
    """The completed calls that were candidates after the longest partial linearization.

    The search exhausted that configuration without placing another completed call, so each of
    them was illegal in every state listed (a legal one would have made a longer prefix). The
    earliest-returning unplaced call is always among them: its return closes the window.
    """
    calls = search.calls
    unplaced = [
        index
        for index in range(len(calls))
        if search.definite[index] and not search.best_definite >> index & 1
    ]
    assert unplaced, "an illegal history leaves some completed call unplaced"
    window_end_ns = min(_return_ns(calls[index]) for index in unplaced)
    stuck = [index for index in unplaced if calls[index].call_ns <= window_end_ns]
    return sorted(stuck, key=lambda index: (_return_ns(calls[index]), calls[index].call_ns))


def _return_ns(call: Call) -> int:
    assert call.return_ns is not None
    return call.return_ns


def _explain(model: Model[Any], calls: list[Call], search: _Search, stuck: list[int]) -> str:
    culprit, others = stuck[0], stuck[1:]
    placed = f"{search.best_count} of {search.definite_total} completed calls"
    states = " or ".join(
        f"{model.describe(state)} ({_origin(model, calls, path)})" for state, path in search.best
    )
    text = (
        f"{_describe_call(calls[culprit])}, but after the longest linearizable "
        f"prefix ({placed}) the state is {states}."
    )
    if others:
        named = ", ".join(f"op {calls[index].id}" for index in others[:STUCK_NAMED_MAX])
        unnamed = len(others) - STUCK_NAMED_MAX
        more = f" and {unnamed} more" if unnamed > 0 else ""
        text += f" No other pending call fits there either: {named}{more}."
    return text


def _origin(model: Model[Any], calls: list[Call], path: tuple[int, ...]) -> str:
    """Which call of the path last changed the state to its final value, by replaying it."""
    state = model.init()
    origin = None
    for index in path:
        _, after = model.step(state, calls[index])
        if after != state:
            origin = index
        state = after
    if origin is None:
        return "the initial state"
    call = calls[origin]
    indefinite = ", indefinite" if call.return_ns is None else ""
    return f"{call.f} by process {call.process}, op {call.id}{indefinite}"


def _describe_call(call: Call) -> str:
    what = call.f if call.argument is None else f"{call.f} {call.argument!r}"
    start_s = call.call_ns / NS_PER_S
    if call.return_ns is None:
        when = f"invoked at {start_s:.3f} s, outcome unknown"
    else:
        when = f"{start_s:.3f}-{call.return_ns / NS_PER_S:.3f} s"
    text = f"{what} by process {call.process} (op {call.id}, {when})"
    if call.return_ns is not None:
        text += f" returned {call.result!r}"
    return text
