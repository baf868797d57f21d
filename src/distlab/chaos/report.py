"""The readable report of a chaos run: two plots and one static web page.

After Jepsen's store directory: ``latency-raw.png`` (every operation's latency against the
time it was invoked, coloured by outcome), ``rate.png`` (completions per second) and the web
page that puts the verdict first and then everything a reader needs to believe it: the seed
and the command that replays the run, the configuration, the outcome counts, each checker's
verdict, every anomaly with the history lines of the operations involved, and when each
fault was in force. The faults come from the history itself (the nemesis records a ``start``
and a ``stop`` for each, see ``distlab.chaos.history``), and are shaded on both plots so a
reader can see what the system did while a fault was on.

Time 0 on the plots and in the page is the earliest ``time_ns`` in the history (client and
nemesis operations alike), so times read as seconds since the history's first operation.

What it leaves out: interactive zooming or filtering (the page has no JavaScript and loads
nothing from outside the run directory), per-key timelines (Jepsen's ``timeline.html``),
and any judgement: verdicts come from the checkers, through ``results``.

matplotlib is imported inside the plotting functions, so importing this module stays cheap
for the checkers and the CLI. The plots draw on a bare ``matplotlib.figure.Figure`` (rendered
by Agg when saved to PNG) rather than through pyplot: no global backend switch in the
caller's process, and no figure registry to close and leak.
"""

from __future__ import annotations

import html
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard
from urllib.parse import quote

from distlab.chaos.history import (
    NEMESIS_PROCESS,
    HistoryError,
    Op,
    Operation,
    OpType,
    nemesis_ops,
    pair,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

NS_PER_S = 1_000_000_000
NS_PER_MS = 1_000_000

# --- Limits -------------------------------------------------------------------------------
# Anomalies listed on the page: past a few hundred nobody reads them one by one, and the page
# must stay small enough to open; all of them are in results.json.
ANOMALIES_SHOWN_MAX = 200
# History lines listed under one anomaly: a linearizability counterexample names a handful of
# operations; a checker that names thousands is summarising, and the history has them all.
ANOMALY_OPS_SHOWN_MAX = 50
# Rows of the fault timeline table: a nemesis fires every few seconds, so a long soak run has
# hundreds; past this the table is noise and the plots show the shape.
FAULT_ROWS_SHOWN_MAX = 500
# Characters of a value, error or config entry shown in a table cell before it is cut.
CELL_CHARS_MAX = 200
# Bins on the rate plot: a bin narrower than a pixel draws nothing more, so a long run at the
# default bin width gets wider bins instead of an enormous array.
RATE_BINS_MAX = 4_000
# Rows of fault bars above the plots: overlapping faults go to separate rows; past this many
# the strip would squeeze the plot, so further labels are shortened or dropped.
FAULT_LANES_MAX = 6
# Below this a latency is drawn at this value: a log axis cannot show 0, and a clock that
# reports two identical timestamps is not claiming the operation took no time.
LATENCY_MS_MIN = 0.01

# --- Look ---------------------------------------------------------------------------------
OUTCOME_COLOURS = {"ok": "#2ca02c", "fail": "#d62728", "info": "#ff7f0e"}
# Drawn in this order, so the rare outcomes land on top of the common one.
OUTCOMES = ("ok", "info", "fail")
F_MARKERS = {"put": "o", "get": "s", "delete": "D"}
F_MARKER_OTHER = "P"
F_LINESTYLES = ("-", "--", ":", "-.")
# Pale, so the points stay the strongest colour on the plot.
FAULT_COLOURS = {
    "partition": "#9ecae1",
    "kill": "#fc9272",
    "pause": "#bcbddc",
    "clock": "#fdd49e",
    "disk": "#d9c8b0",
    "latency": "#a1d99b",
}
FAULT_COLOUR_OTHER = "#cccccc"
FIGURE_SIZE_IN = (13.0, 6.5)
FIGURE_DPI = 110
LABEL_FONT_PT = 8.0
# Estimated width of one label character (inches) and the share of the figure width the plot
# takes, used to keep fault labels from running into each other before anything is drawn.
LABEL_CHAR_IN = 0.058
PLOT_WIDTH_SHARE = 0.78
LABEL_BACKING = {"boxstyle": "square,pad=0.15", "facecolor": "white", "alpha": 0.7, "lw": 0}


@dataclass(frozen=True, slots=True)
class FaultWindow:
    """One fault, from the nemesis's ``start`` to its ``stop``, in seconds since time 0.

    ``healed`` is False when the history has no ``stop`` for it (the run died, or ended with
    the fault on); ``end_s`` is then the end of the history.
    """

    fault: int
    kind: str
    label: str
    start_s: float
    end_s: float
    healed: bool = True


# --- Time ---------------------------------------------------------------------------------


def _time_zero_ns(ops: Sequence[Op]) -> int:
    return min((op.time_ns for op in ops), default=0)


def _history_end_s(ops: Sequence[Op]) -> float:
    if not ops:
        return 0.0
    return (max(op.time_ns for op in ops) - _time_zero_ns(ops)) / NS_PER_S


def _axis_end_s(ops: Sequence[Op], windows: Sequence[FaultWindow]) -> float:
    """The right edge of both plots: the history's end, never a zero-width axis."""
    end_s = max([_history_end_s(ops), *(window.end_s for window in windows)])
    return end_s if end_s > 0 else 1.0


# --- Fault windows ------------------------------------------------------------------------


def fault_windows(ops: Sequence[Op]) -> list[FaultWindow]:
    """Pair the nemesis's ``start`` and ``stop`` entries into windows, sorted by start.

    A start and its stop share ``extra["fault"]``; a history without fault ids pairs them by
    description, oldest open start first. A start with no stop lasts until the end of the
    history (``healed=False``). A stop with no start is ignored: the nemesis records every
    start before its stop, so only a damaged history has one.
    """
    time_zero_ns = _time_zero_ns(ops)
    end_s = _history_end_s(ops)
    open_starts: dict[object, list[Op]] = {}
    windows = []
    for op in nemesis_ops(ops):
        identity = _fault_identity(op)
        if op.f == "start":
            open_starts.setdefault(identity, []).append(op)
        elif op.f == "stop" and open_starts.get(identity):
            start = open_starts[identity].pop(0)
            windows.append(_window(start, time_zero_ns, (op.time_ns - time_zero_ns) / NS_PER_S))
    for starts in open_starts.values():
        windows.extend(_window(start, time_zero_ns, end_s, healed=False) for start in starts)
    windows.sort(key=lambda window: (window.start_s, window.fault))
    return windows


def _fault_identity(op: Op) -> object:
    fault = op.extra.get("fault")
    return ("id", fault) if fault is not None else ("label", str(op.value))


def _window(start: Op, time_zero_ns: int, end_s: float, healed: bool = True) -> FaultWindow:
    fault = start.extra.get("fault")
    return FaultWindow(
        fault=int(fault) if isinstance(fault, int) else start.index,
        kind=str(start.extra.get("kind", "fault")),
        label=str(start.value) if start.value is not None else "fault",
        start_s=(start.time_ns - time_zero_ns) / NS_PER_S,
        end_s=end_s,
        healed=healed,
    )


def _windows_from_results(faults: object, end_s: float) -> list[FaultWindow]:
    """Windows from ``results["faults"]``, for a history that carries no nemesis entries;
    a fault without an end lasts until ``end_s``."""
    if not isinstance(faults, list):
        return []
    windows = []
    for number, fault in enumerate(faults):
        if not isinstance(fault, Mapping) or not _is_number(fault.get("start_s")):
            continue
        start_s = float(fault["start_s"])
        healed = _is_number(fault.get("end_s"))
        windows.append(
            FaultWindow(
                fault=number,
                kind=str(fault.get("kind", "fault")),
                label=str(fault.get("description", "fault")),
                start_s=start_s,
                end_s=float(fault["end_s"]) if healed else max(start_s, end_s),
                healed=healed,
            )
        )
    return sorted(windows, key=lambda window: (window.start_s, window.fault))


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# --- Plots --------------------------------------------------------------------------------


def plot_latency(ops: Sequence[Op], path: Path) -> None:
    """Every client operation's latency against its invoke time, faults shaded.

    Raises HistoryError if the client operations do not pair (see ``history.pair``).
    """
    _draw_latency(pair(ops), ops, fault_windows(ops), path)


def plot_rate(ops: Sequence[Op], path: Path, bin_s: float = 1.0) -> None:
    """Completions per second, per operation and outcome, faults shaded.

    A run long enough to need more than ``RATE_BINS_MAX`` bins gets wider bins; the bin width
    used is in the axis label. Raises HistoryError if the client operations do not pair.
    """
    _draw_rate(pair(ops), ops, fault_windows(ops), path, bin_s)


def _draw_latency(
    operations: Sequence[Operation],
    ops: Sequence[Op],
    windows: Sequence[FaultWindow],
    path: Path,
) -> None:
    from matplotlib.lines import Line2D

    time_zero_ns = _time_zero_ns(ops)
    end_s = _axis_end_s(ops, windows)
    figure, axes = _figure(windows, end_s)
    done = [operation for operation in operations if operation.complete_ns is not None]
    pending = [operation for operation in operations if operation.complete_ns is None]
    marker_area = _marker_area(len(operations))
    f_names = sorted({operation.f for operation in operations}, key=_f_order)

    latencies_ms = []
    for outcome in OUTCOMES:
        for f in f_names:
            group = [op for op in done if op.f == f and str(op.type) == outcome]
            if not group:
                continue
            xs = [(op.invoke_ns - time_zero_ns) / NS_PER_S for op in group]
            ys = [_latency_ms(op) for op in group]
            latencies_ms.extend(ys)
            axes.scatter(
                xs,
                ys,
                s=marker_area,
                c=OUTCOME_COLOURS[outcome],
                marker=_marker(f),
                alpha=0.55 if outcome == "ok" else 0.8,
                linewidths=0,
                zorder=3 if outcome == "ok" else 4,
            )
    if pending:
        # At the top edge, in axes coordinates: their latency is unknown, at least the rest
        # of the run. clip_on=False so the triangles sit on the frame, not half under it.
        axes.scatter(
            [(op.invoke_ns - time_zero_ns) / NS_PER_S for op in pending],
            [0.985] * len(pending),
            s=max(marker_area * 4, 16.0),
            c=OUTCOME_COLOURS["info"],
            marker="^",
            edgecolors="black",
            linewidths=0.4,
            transform=axes.get_xaxis_transform(),
            clip_on=False,
            zorder=5,
        )

    axes.set_yscale("log")
    low_ms = min(latencies_ms, default=1.0)
    high_ms = max(latencies_ms, default=1000.0)
    axes.set_ylim(max(low_ms / 2, LATENCY_MS_MIN / 2), max(high_ms * 3, low_ms * 10))
    # A margin, so the first and the last operations are not cut in half by the frame.
    axes.set_xlim(-end_s / 100, end_s * 1.01)
    axes.set_xlabel("time since the history's first operation (s)")
    axes.set_ylabel("latency (ms, log scale)")
    axes.grid(True, which="major", alpha=0.3)

    handles: list[Any] = [
        Line2D([], [], linestyle="", marker="o", color=OUTCOME_COLOURS[outcome], label=outcome)
        for outcome in ("ok", "fail", "info")
    ]
    if pending:
        handles.append(
            Line2D(
                [],
                [],
                linestyle="",
                marker="^",
                color=OUTCOME_COLOURS["info"],
                markeredgecolor="black",
                label=f"never completed ({len(pending)})",
            )
        )
    handles.extend(
        Line2D([], [], linestyle="", marker=_marker(f), color="#555555", label=f) for f in f_names
    )
    handles.extend(_fault_handles(windows))
    _finish(
        figure,
        axes,
        handles,
        title=f"Latency of {len(operations)} client operations, by invoke time",
        empty=not operations,
        path=path,
    )


def _draw_rate(
    operations: Sequence[Operation],
    ops: Sequence[Op],
    windows: Sequence[FaultWindow],
    path: Path,
    bin_s: float,
) -> None:
    from matplotlib.lines import Line2D

    if not (bin_s > 0 and math.isfinite(bin_s)):
        raise ValueError(f"bin_s must be a positive number of seconds, not {bin_s!r}")
    time_zero_ns = _time_zero_ns(ops)
    end_s = _axis_end_s(ops, windows)
    bin_s = max(bin_s, end_s / RATE_BINS_MAX)
    bins = max(1, math.ceil(end_s / bin_s))
    edges = [index * bin_s for index in range(bins + 1)]
    figure, axes = _figure(windows, end_s)

    f_names = sorted({operation.f for operation in operations}, key=_f_order)
    # One line per f and outcome while the line styles stay tellable apart; past that, one
    # line per outcome.
    by_f = len(f_names) <= len(F_LINESTYLES)
    counts: Counter[tuple[str, str, int]] = Counter()
    for operation in operations:
        if operation.complete_ns is None:
            continue
        index = min(int((operation.complete_ns - time_zero_ns) / NS_PER_S / bin_s), bins - 1)
        counts[(operation.f if by_f else "all", str(operation.type), index)] += 1
    series = [(f, outcome) for f in (f_names if by_f else ["all"]) for outcome in OUTCOMES]

    handles: list[Any] = []
    peak_per_s = 0.0
    for f, outcome in series:
        rates = [counts[(f, outcome, index)] / bin_s for index in range(bins)]
        if not any(rates):
            continue
        peak_per_s = max(peak_per_s, *rates)
        linestyle = F_LINESTYLES[f_names.index(f)] if by_f else "-"
        axes.stairs(
            rates,
            edges,
            baseline=None,  # no vertical drop to 0 at either end of the run
            color=OUTCOME_COLOURS[outcome],
            linestyle=linestyle,
            linewidth=1.4 if outcome == "ok" else 1.1,
            zorder=3 if outcome == "ok" else 4,
        )
        label = f"{f} {outcome}" if by_f else outcome
        handles.append(Line2D([], [], color=OUTCOME_COLOURS[outcome], ls=linestyle, label=label))
    handles.extend(_fault_handles(windows))

    axes.set_xlim(0, end_s)
    axes.set_ylim(0, peak_per_s * 1.1 if peak_per_s > 0 else 1.0)
    axes.set_xlabel("time since the history's first operation (s)")
    axes.set_ylabel(f"completions per second (bins of {bin_s:g} s)")
    axes.grid(True, alpha=0.3)
    pending = sum(1 for operation in operations if operation.complete_ns is None)
    never = f"; {pending} never completed, not counted" if pending else ""
    _finish(
        figure,
        axes,
        handles,
        title=f"Throughput: completions per second by operation and outcome{never}",
        empty=not operations,
        path=path,
    )


def _figure(windows: Sequence[FaultWindow], end_s: float) -> tuple[Figure, Axes]:
    """A figure with the main plot, its fault bands, and a labelled fault strip above it."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=FIGURE_SIZE_IN, dpi=FIGURE_DPI, layout="constrained")
    if not windows:
        axes = figure.subplots()
        return figure, axes
    lanes = _label_lanes(windows, end_s)
    lane_count = max(lane for lane, _ in lanes) + 1
    strip, axes = figure.subplots(2, 1, sharex=True, height_ratios=[0.45 + 0.3 * lane_count, 6.0])
    for window, (lane, text) in zip(windows, lanes, strict=True):
        colour = FAULT_COLOURS.get(window.kind, FAULT_COLOUR_OTHER)
        axes.axvspan(window.start_s, window.end_s, color=colour, alpha=0.35, lw=0, zorder=0)
        strip.broken_barh(
            [(window.start_s, max(window.end_s - window.start_s, end_s / 2000))],
            (lane + 0.1, 0.8),
            facecolors=colour,
            edgecolors="#555555",
            linewidth=0.6,
            hatch="" if window.healed else "//",
        )
        if text:
            strip.text(
                _label_x(window, text, end_s),
                lane + 0.5,
                text,
                fontsize=LABEL_FONT_PT,
                va="center",
                ha="left",
                clip_on=True,
                # A pale backing keeps the text legible over a hatched (not healed) bar.
                bbox=None if window.healed else LABEL_BACKING,
            )
    strip.set_ylim(lane_count, 0)
    strip.set_yticks([])
    strip.set_ylabel("faults", rotation=0, ha="right", va="center")
    strip.tick_params(axis="x", labelbottom=False)
    strip.grid(True, axis="x", alpha=0.3)
    return figure, axes


def _label_lanes(windows: Sequence[FaultWindow], end_s: float) -> list[tuple[int, str]]:
    """A row and a label for each window, so that no two labels or bars overlap.

    Greedy interval colouring in start order: each window takes the first row free for its
    bar and its label; failing that, the first row free for the bar and a short label
    ("#id"); failing that, the row that frees up first, unlabelled.
    """
    lane_free_s: list[float] = []
    placed = []
    for window in windows:
        choice = None
        for text in (_window_text(window), f"#{window.fault}"):
            needed = _occupied(window, text, end_s)
            choice = _free_lane(lane_free_s, needed)
            if choice is not None:
                placed.append((choice, text))
                lane_free_s[choice] = needed[1]
                break
        if choice is None:
            lane = min(range(len(lane_free_s)), key=lane_free_s.__getitem__)
            placed.append((lane, ""))
            lane_free_s[lane] = max(lane_free_s[lane], window.end_s)
    return placed


def _free_lane(lane_free_s: list[float], needed: tuple[float, float]) -> int | None:
    for lane, free_s in enumerate(lane_free_s):
        if free_s <= needed[0]:
            return lane
    if len(lane_free_s) < FAULT_LANES_MAX:
        lane_free_s.append(-math.inf)
        return len(lane_free_s) - 1
    return None


def _window_text(window: FaultWindow) -> str:
    healed = "" if window.healed else " (not healed)"
    return f"#{window.fault} {window.label}{healed}"


def _text_width_s(text: str, end_s: float) -> float:
    plot_width_in = FIGURE_SIZE_IN[0] * PLOT_WIDTH_SHARE
    return (len(text) + 1) * LABEL_CHAR_IN * end_s / plot_width_in


def _label_x(window: FaultWindow, text: str, end_s: float) -> float:
    """Where a label starts: just inside its bar, or pulled left so it ends inside the plot."""
    pad_s = end_s / 400
    return max(pad_s, min(window.start_s + pad_s, end_s - _text_width_s(text, end_s)))


def _occupied(window: FaultWindow, text: str, end_s: float) -> tuple[float, float]:
    label_x = _label_x(window, text, end_s)
    gap_s = end_s / 200
    return (
        min(window.start_s, label_x) - gap_s,
        max(window.end_s, label_x + _text_width_s(text, end_s)) + gap_s,
    )


def _fault_handles(windows: Sequence[FaultWindow]) -> list[Any]:
    from matplotlib.patches import Patch

    kinds = sorted({window.kind for window in windows})
    handles: list[Any] = [
        Patch(facecolor=FAULT_COLOURS.get(kind, FAULT_COLOUR_OTHER), label=f"fault: {kind}")
        for kind in kinds
    ]
    if any(not window.healed for window in windows):
        handles.append(
            Patch(facecolor="white", edgecolor="#555555", hatch="//", label="not healed")
        )
    return handles


def _finish(
    figure: Figure, axes: Axes, handles: Sequence[Any], title: str, empty: bool, path: Path
) -> None:
    if empty:
        axes.text(
            0.5,
            0.5,
            "no client operations in the history",
            transform=axes.transAxes,
            ha="center",
            va="center",
            fontsize=14,
            color="#777777",
        )
    if handles:
        axes.legend(
            handles=handles,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            fontsize=LABEL_FONT_PT + 1,
            frameon=False,
        )
    figure.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")


def _latency_ms(operation: Operation) -> float:
    assert operation.complete_ns is not None
    return max((operation.complete_ns - operation.invoke_ns) / NS_PER_MS, LATENCY_MS_MIN)


def _marker_area(points: int) -> float:
    """Marker area (pt^2): big enough to see a lone failure, small enough that 50,000 points
    still show their spread instead of a solid block."""
    if points <= 1_000:
        return 20.0
    if points <= 10_000:
        return 6.0
    return 3.0


def _marker(f: str) -> str:
    return F_MARKERS.get(f, F_MARKER_OTHER)


def _f_order(f: str) -> tuple[int, str]:
    known = list(F_MARKERS)
    return (known.index(f) if f in known else len(known), f)


# --- Web page -----------------------------------------------------------------------------

VERDICT_HEADLINES = {
    "valid": "VALID",
    "invalid": "INVALID: anomalies found",
    "unknown": "UNKNOWN: could not decide",
}

PAGE_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1400px;
       padding: 0 1em; color: #222; }
h1 { padding: 0.4em 0.6em; border-radius: 6px; color: white; }
h1.valid { background: #2e7d32; } h1.invalid { background: #c62828; }
h1.unknown { background: #ef8f00; }
h2 { border-bottom: 1px solid #ddd; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 0.2em 0.6em; text-align: left;
         vertical-align: top; }
th { background: #f4f4f4; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
table.ops td { font: 12px/1.3 ui-monospace, monospace; white-space: pre-wrap; }
tr.context td { color: #888; }
pre { background: #f6f6f6; padding: 0.5em; overflow-x: auto; white-space: pre-wrap; }
.valid { color: #2e7d32; font-weight: bold; } .invalid { color: #c62828; font-weight: bold; }
.unknown { color: #ef8f00; font-weight: bold; }
.note { color: #666; font-style: italic; }
.anomaly { margin: 1em 0; padding: 0.5em 1em; border-left: 4px solid #c62828;
           background: #fdf6f6; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }
"""


def write_report(run_dir: Path, ops: Sequence[Op], results: Mapping[str, Any]) -> Path:
    """Write ``latency.png``, ``rate.png`` and ``index.html`` into run_dir; return the page.

    ``history.jsonl`` and ``results.json`` are the caller's, and are only linked. A history
    whose client operations do not pair still gets a page, saying so, with plots of the
    faults alone.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    notes = []
    try:
        operations = pair(ops)
    except HistoryError as error:
        operations = []
        notes.append(
            f"The client operations in the history do not pair, so none are plotted: {error}"
        )
    if not ops:
        notes.append("The history is empty: the run recorded no operations.")
    duration_s = results.get("duration_s")
    end_s = max(_history_end_s(ops), float(duration_s) if _is_number(duration_s) else 0.0)
    windows = fault_windows(ops) or _windows_from_results(results.get("faults"), end_s)
    _draw_latency(operations, ops, windows, run_dir / "latency.png")
    _draw_rate(operations, ops, windows, run_dir / "rate.png", bin_s=1.0)
    index = run_dir / "index.html"
    index.write_text(_page(ops, operations, windows, results, notes), encoding="utf-8")
    return index


def _page(
    ops: Sequence[Op],
    operations: Sequence[Operation],
    windows: Sequence[FaultWindow],
    results: Mapping[str, Any],
    notes: Sequence[str],
) -> str:
    verdict = str(results.get("verdict", "unknown")).lower()
    if verdict not in VERDICT_HEADLINES:
        verdict = "unknown"
    system = results.get("system", "?")
    title = f"distlab chaos run: {system}, seed {results.get('seed', '?')}: {verdict.upper()}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title>",
        f"<style>{PAGE_CSS}</style>",
        "</head><body>",
        f'<h1 class="{verdict}">{_e(VERDICT_HEADLINES[verdict])}</h1>',
        *(f'<p class="note">{_e(note)}</p>' for note in notes),
        # The short sections first, so the anomalies, which may run long, come last.
        _run_section(results),
        _files_section(results.get("logs")),
        _config_section(results.get("config")),
        _checks_section(results.get("checks")),
        _counts_section(results, operations),
        _faults_section(windows),
        "<h2>Plots</h2>",
        "<p>Latency of every client operation against the time it was invoked; faults shaded, "
        "one bar per fault above the plot.</p>",
        '<img src="latency.png" alt="latency of each client operation over time">',
        "<p>Completions per second.</p>",
        '<img src="rate.png" alt="completions per second over time">',
        _anomalies_section(results.get("anomalies"), ops),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _run_section(results: Mapping[str, Any]) -> str:
    rows = [
        ("system", results.get("system")),
        ("seed", results.get("seed")),
        ("duration (s)", results.get("duration_s")),
    ]
    parts = ["<h2>Run</h2>", _key_value_table((name, value) for name, value in rows)]
    for name, key in (("Replay this run", "replay"), ("Command", "command")):
        if results.get(key):
            parts.append(f"<h3>{_e(name)}</h3><pre><code>{_e(results[key])}</code></pre>")
    return "\n".join(parts)


def _config_section(config: object) -> str:
    if not isinstance(config, Mapping) or not config:
        return '<h2>Configuration</h2><p class="note">No configuration recorded.</p>'
    return "<h2>Configuration</h2>\n" + _key_value_table(sorted(config.items(), key=_by_str))


def _counts_section(results: Mapping[str, Any], operations: Sequence[Operation]) -> str:
    counts, by_f = results.get("counts"), results.get("by_f")
    source = ""
    if not isinstance(counts, Mapping) or not isinstance(by_f, Mapping):
        counts, by_f = _count(operations)
        source = '<p class="note">Counted from the history (results carry no counts); '
        source += "an operation that never completed counts as info.</p>"
    outcomes = ("ok", "fail", "info")
    header = "".join(f"<th>{outcome}</th>" for outcome in outcomes)
    rows = [f"<tr><th>all</th>{_count_cells(counts, outcomes)}</tr>"]
    rows.extend(
        f"<tr><th>{_e(f)}</th>{_count_cells(row, outcomes)}</tr>"
        for f, row in sorted(by_f.items(), key=_by_str)
    )
    return (
        "<h2>Outcomes</h2>\n"
        + source
        + f"<table><tr><th>operation</th>{header}<th>total</th></tr>\n"
        + "\n".join(rows)
        + "</table>"
    )


def _count(operations: Sequence[Operation]) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    counts: Counter[str] = Counter()
    by_f: dict[str, Counter[str]] = {}
    for operation in operations:
        counts[str(operation.type)] += 1
        by_f.setdefault(operation.f, Counter())[str(operation.type)] += 1
    return dict(counts), {f: dict(row) for f, row in by_f.items()}


def _count_cells(row: object, outcomes: Sequence[str]) -> str:
    if not isinstance(row, Mapping):
        row = {}
    values = [row.get(outcome) for outcome in outcomes]
    # A missing outcome is left blank, and the total is over the outcomes given.
    numbers = [value for value in values if _is_number(value)]
    total = sum(numbers) if numbers else None
    return "".join(
        f'<td class="number">{_e(value if value is not None else "")}</td>'
        for value in [*values, total]
    )


def _checks_section(checks: object) -> str:
    if not isinstance(checks, Mapping) or not checks:
        return '<h2>Checks</h2><p class="note">No checks recorded.</p>'
    rows = []
    for name, check in sorted(checks.items(), key=_by_str):
        check = check if isinstance(check, Mapping) else {}
        verdict = str(check.get("verdict", "unknown")).lower()
        css = verdict if verdict in VERDICT_HEADLINES else "unknown"
        required = check.get("required")
        role = "required" if required else "informative" if required is not None else "?"
        anomalies = check.get("anomalies", "")
        rows.append(
            f'<tr><td>{_e(name)}</td><td class="{css}">{_e(verdict)}</td><td>{_e(role)}</td>'
            f'<td class="number">{_e(anomalies)}</td><td>{_e(check.get("summary", ""))}</td></tr>'
        )
    return (
        "<h2>Checks</h2>\n<p>A required check decides the verdict; an informative one reports "
        "a property the system does not promise.</p>\n"
        "<table><tr><th>check</th><th>verdict</th><th>role</th><th>anomalies</th>"
        "<th>summary</th></tr>\n" + "\n".join(rows) + "</table>"
    )


def _anomalies_section(anomalies: object, ops: Sequence[Op]) -> str:
    if not isinstance(anomalies, list) or not anomalies:
        return '<h2>Anomalies</h2><p class="note">None reported.</p>'
    by_index = {op.index: op for op in ops}
    partners = _partners(ops)
    time_zero_ns = _time_zero_ns(ops)
    shown = anomalies[:ANOMALIES_SHOWN_MAX]
    parts = [f"<h2>Anomalies ({len(anomalies)})</h2>"]
    if len(anomalies) > len(shown):
        parts.append(
            f'<p class="note">Showing the first {len(shown)}; {len(anomalies) - len(shown)} '
            'more omitted (all are in <a href="results.json">results.json</a>).</p>'
        )
    for number, anomaly in enumerate(shown, start=1):
        anomaly = anomaly if isinstance(anomaly, Mapping) else {"message": anomaly}
        heading = " / ".join(
            str(anomaly[field]) for field in ("check", "kind") if anomaly.get(field) is not None
        )
        key = f", key {anomaly['key']}" if anomaly.get("key") is not None else ""
        parts.append(
            f'<div class="anomaly"><h3>{number}. {_e(heading or "anomaly")}{_e(key)}</h3>'
            f"<p>{_e(anomaly.get('message', ''))}</p>"
        )
        parts.append(_anomaly_ops(anomaly.get("ops"), by_index, partners, time_zero_ns))
        parts.append("</div>")
    return "\n".join(parts)


def _anomaly_ops(
    indexes: object, by_index: Mapping[int, Op], partners: Mapping[int, int], time_zero_ns: int
) -> str:
    """The history lines an anomaly names, each with its invoke or completion for context."""
    if not isinstance(indexes, list) or not indexes:
        return '<p class="note">No operations named.</p>'
    named = [index for index in indexes if isinstance(index, int) and not isinstance(index, bool)]
    shown = named[:ANOMALY_OPS_SHOWN_MAX]
    rows = {index: "named" for index in shown}
    for index in shown:
        partner = partners.get(index)
        if partner is not None:
            rows.setdefault(partner, "context")
    header = "".join(
        f"<th>{name}</th>"
        for name in ("index", "time (s)", "process", "type", "f", "key", "value", "error")
    )
    lines = [f'<table class="ops"><tr>{header}</tr>']
    for index in sorted(rows):
        op = by_index.get(index)
        css = ' class="context"' if rows[index] == "context" else ""
        if op is None:
            lines.append(f'<tr><td>{_e(index)}</td><td colspan="7">not in the history</td></tr>')
            continue
        cells = (
            op.index,
            f"{(op.time_ns - time_zero_ns) / NS_PER_S:.6f}",
            op.process,
            op.type,
            op.f,
            "" if op.key is None else op.key,
            "" if op.value is None else _cell(op.value),
            "" if op.error is None else _cell(op.error),
        )
        lines.append(f"<tr{css}>" + "".join(f"<td>{_e(cell)}</td>" for cell in cells) + "</tr>")
    lines.append("</table>")
    notes = []
    if len(named) > len(shown):
        notes.append(f"{len(named) - len(shown)} more operations named, not shown")
    if len(rows) > len(shown):
        notes.append("grey lines are the named operations' invokes or completions")
    if notes:
        lines.append(f'<p class="note">{_e("; ".join(notes))}.</p>')
    return "\n".join(lines)


def _partners(ops: Iterable[Op]) -> dict[int, int]:
    """For every client op index, the index of its invoke or completion (both directions)."""
    open_by_process: dict[int, int] = {}
    partners = {}
    for op in ops:
        if op.process == NEMESIS_PROCESS:
            continue
        if op.type is OpType.INVOKE:
            open_by_process[op.process] = op.index
        elif op.process in open_by_process:
            invoke = open_by_process.pop(op.process)
            partners[invoke] = op.index
            partners[op.index] = invoke
    return partners


def _faults_section(windows: Sequence[FaultWindow]) -> str:
    if not windows:
        return '<h2>Faults</h2><p class="note">No faults injected.</p>'
    shown = windows[:FAULT_ROWS_SHOWN_MAX]
    rows = []
    for window in shown:
        colour = FAULT_COLOURS.get(window.kind, FAULT_COLOUR_OTHER)
        end = f"{window.end_s:.3f}" if window.healed else f"{window.end_s:.3f} (not healed)"
        cells = (
            f"<td>{_e(window.fault)}</td>",
            f'<td style="background: {colour}">{_e(window.kind)}</td>',
            f"<td>{_e(window.label)}</td>",
            f'<td class="number">{window.start_s:.3f}</td>',
            f'<td class="number">{_e(end)}</td>',
            f'<td class="number">{window.end_s - window.start_s:.3f}</td>',
        )
        rows.append("<tr>" + "".join(cells) + "</tr>")
    omitted = len(windows) - len(shown)
    note = f'<p class="note">{omitted} more faults not shown.</p>' if omitted else ""
    return (
        "<h2>Faults</h2>\n<p>Times in seconds since the history's first operation.</p>\n"
        "<table><tr><th>#</th><th>kind</th><th>fault</th><th>start (s)</th><th>end (s)</th>"
        "<th>lasted (s)</th></tr>\n" + "\n".join(rows) + "</table>" + note
    )


def _files_section(logs: object) -> str:
    links = [("history.jsonl", "history.jsonl"), ("results.json", "results.json")]
    if isinstance(logs, list):
        links.extend((str(log), str(log)) for log in logs)
    items = "\n".join(
        f'<li><a href="{_href(target)}">{_e(name)}</a></li>' for name, target in links
    )
    return f"<h2>Files</h2>\n<ul>\n{items}\n</ul>"


def _key_value_table(rows: Iterable[tuple[object, object]]) -> str:
    cells = "\n".join(
        f"<tr><th>{_e(name)}</th><td>{_e(_cell(value))}</td></tr>"
        for name, value in rows
        if value is not None
    )
    return f"<table>\n{cells}\n</table>"


def _cell(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    if len(text) > CELL_CHARS_MAX:
        return text[: CELL_CHARS_MAX - 1] + "\u2026"
    return text


def _by_str(item: tuple[object, object]) -> str:
    return str(item[0])


def _href(target: str) -> str:
    """A relative link: ':' is quoted too, so no path can become a ``javascript:`` URL."""
    return html.escape(quote(target, safe="/.-_~"), quote=True)


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)
