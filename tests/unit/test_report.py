"""The chaos run report: fault windows, the two plots, and the static page.

The plots are checked as files (a PNG signature and a non-trivial size); what they look like
was checked by eye. pytest turns warnings into errors, so these tests also check that
matplotlib has nothing to warn about (a log axis with a zero latency, an empty plot).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from distlab.chaos.history import NEMESIS_PROCESS, HistoryRecorder, Op, OpType
from distlab.chaos.report import (
    ANOMALIES_SHOWN_MAX,
    FaultWindow,
    fault_windows,
    plot_latency,
    plot_rate,
    write_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Monotonic clocks start anywhere: time 0 of the report is the history's first operation.
BASE_NS = 5_000_000_000_000
MS = 1_000_000
S = 1_000_000_000


def small_history() -> list[Op]:
    """Two faults (the second never healed), and every kind of client outcome."""
    history = HistoryRecorder()

    def nemesis(f: str, at_ns: int, fault: int, kind: str, label: str) -> None:
        history.record(
            OpType.INFO,
            NEMESIS_PROCESS,
            f,
            BASE_NS + at_ns,
            value=label,
            extra={"fault": fault, "kind": kind},
        )

    def client(
        process: int,
        f: str,
        start_ns: int,
        end_ns: int | None,
        outcome: OpType = OpType.OK,
        key: str = "k1",
        value: object = None,
        error: str | None = None,
    ) -> None:
        history.record(OpType.INVOKE, process, f, BASE_NS + start_ns, key=key, value=value)
        if end_ns is not None:
            history.record(outcome, process, f, BASE_NS + end_ns, key=key, value=value, error=error)

    client(0, "put", 0, 2 * MS, value=1)  # index 0, 1
    client(1, "get", 1 * MS, 1 * MS, value=1)  # 2, 3: zero latency, must not break the log axis
    nemesis("start", 1 * S, 7, "partition", "partition halves: {n1, n2} | {n3}")  # 4
    client(0, "put", 1 * S + 10 * MS, 1 * S + 60 * MS, OpType.FAIL, "k7", 2, "UNAVAILABLE")  # 5, 6
    client(1, "delete", 1 * S + 20 * MS, 1 * S + 520 * MS, OpType.INFO, "k7", None, "DEADLINE")
    nemesis("stop", 2 * S, 7, "partition", "partition halves: {n1, n2} | {n3}")  # 9
    client(2, "cas", 2 * S + 5 * MS, 2 * S + 9 * MS, value=[1, 3])  # 10, 11: an f without marker
    nemesis("start", 2 * S + 500 * MS, 8, "kill", "kill n2")  # 12
    client(0, "put", 2 * S + 600 * MS, None, key="k7", value="<script>alert(1)</script>")  # 13
    client(3, "get", 3 * S, 3 * S + 4 * MS, key="k7", value=2)  # 14, 15
    return history.ops


def results_for(ops: list[Op]) -> dict[str, object]:
    return {
        "verdict": "invalid",
        "system": "kv",
        "seed": 42,
        "duration_s": 3.0,
        "command": "distlab chaos run --system kv --seed 42",
        "replay": "distlab chaos run --replay runs/kv-42",
        "config": {"nodes": 3, "r": 2, "w": 2, "fsync": "always"},
        "counts": {"ok": 4, "fail": 1, "info": 2},
        "by_f": {"put": {"ok": 1, "fail": 1, "info": 1}},
        "checks": {
            "lost-writes": {
                "verdict": "invalid",
                "required": True,
                "summary": "1 of 2 acknowledged puts lost",
                "anomalies": 1,
            },
            "linearizability": {"verdict": "valid", "required": False, "summary": "ok"},
        },
        "anomalies": [
            {
                "check": "lost-writes",
                "kind": "lost-write",
                "key": "k7",
                "message": "acknowledged put of <b>2</b> not read back",
                "ops": [6, 15],
            }
        ],
        "logs": ["logs/n1.log", "logs/n2.log"],
    }


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 10_000  # a drawn figure, not an empty canvas


def test_fault_windows_pair_start_and_stop_in_seconds_from_the_first_op() -> None:
    windows = fault_windows(small_history())

    assert windows == [
        FaultWindow(7, "partition", "partition halves: {n1, n2} | {n3}", 1.0, 2.0),
        # No stop: the run ended with the fault on, so it lasts to the history's last op.
        FaultWindow(8, "kill", "kill n2", 2.5, 3.004, healed=False),
    ]


def test_fault_windows_pair_overlapping_faults_by_id() -> None:
    history = HistoryRecorder()
    for f, at_s, fault in (("start", 0, 1), ("start", 1, 2), ("stop", 2, 1), ("stop", 4, 2)):
        history.record(
            OpType.INFO,
            NEMESIS_PROCESS,
            f,
            at_s * S,
            value=f"pause n{fault}",
            extra={"fault": fault, "kind": "pause"},
        )

    windows = fault_windows(history.ops)

    assert [(w.fault, w.start_s, w.end_s) for w in windows] == [(1, 0.0, 2.0), (2, 1.0, 4.0)]


def test_fault_windows_without_ids_pair_by_description() -> None:
    history = HistoryRecorder()
    history.record(OpType.INFO, NEMESIS_PROCESS, "start", 0, value="kill n1")
    history.record(OpType.INFO, NEMESIS_PROCESS, "stop", 3 * S, value="kill n1")

    (window,) = fault_windows(history.ops)

    assert (window.label, window.start_s, window.end_s, window.healed) == ("kill n1", 0, 3, True)


def test_fault_windows_of_an_empty_history() -> None:
    assert fault_windows([]) == []


def test_write_report_writes_the_plots_and_the_page(tmp_path: Path) -> None:
    ops = small_history()

    index = write_report(tmp_path, ops, results_for(ops))

    assert index == tmp_path / "index.html"
    assert_png(tmp_path / "latency.png")
    assert_png(tmp_path / "rate.png")
    page = index.read_text(encoding="utf-8")
    assert '<h1 class="invalid">INVALID: anomalies found</h1>' in page
    assert "distlab chaos run --replay runs/kv-42" in page
    assert "<th>fsync</th><td>always</td>" in page
    assert "<td>required</td>" in page
    assert "<td>informative</td>" in page
    assert "1 of 2 acknowledged puts lost" in page


def test_page_lists_the_history_lines_of_each_anomaly(tmp_path: Path) -> None:
    ops = small_history()

    page = write_report(tmp_path, ops, results_for(ops)).read_text(encoding="utf-8")

    anomaly = page[page.index("<h2>Anomalies") :]
    # The named operations (6: the failed put, 15: the get) and their invokes (5, 14).
    for line in (
        "<tr><td>6</td><td>1.060000</td><td>0</td><td>fail</td><td>put</td><td>k7</td>"
        "<td>2</td><td>UNAVAILABLE</td></tr>",
        "<tr><td>15</td><td>3.004000</td><td>3</td><td>ok</td><td>get</td><td>k7</td>"
        "<td>2</td><td></td></tr>",
        '<tr class="context"><td>5</td>',
        '<tr class="context"><td>14</td>',
    ):
        assert line in anomaly


def test_page_escapes_every_value(tmp_path: Path) -> None:
    ops = small_history()
    results = results_for(ops)
    results["anomalies"] = [{"check": "<i>x</i>", "message": "<b>2</b>", "ops": [13]}]
    results["command"] = "run --label '<script>alert(2)</script>'"

    page = write_report(tmp_path, ops, results).read_text(encoding="utf-8")

    for tag in ("<script", "<b>", "<i>"):
        assert tag not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # op 13's value
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in page
    assert "&lt;i&gt;x&lt;/i&gt;" in page


def test_page_links_the_plots_the_history_and_the_logs(tmp_path: Path) -> None:
    ops = small_history()
    results = results_for(ops)
    results["logs"] = ["logs/n1.log", "javascript:alert(1)"]

    page = write_report(tmp_path, ops, results).read_text(encoding="utf-8")

    for link in (
        'src="latency.png"',
        'src="rate.png"',
        'href="history.jsonl"',
        'href="results.json"',
        'href="logs/n1.log"',
        'href="javascript%3Aalert%281%29"',  # a relative path, never a script URL
    ):
        assert link in page
    assert "http" not in page  # self-contained: nothing loaded from elsewhere


def test_page_shows_the_fault_timeline(tmp_path: Path) -> None:
    ops = small_history()

    page = write_report(tmp_path, ops, results_for(ops)).read_text(encoding="utf-8")

    faults = page[page.index("<h2>Faults") : page.index("<h2>Plots")]
    assert "partition halves: {n1, n2} | {n3}" in faults
    assert "3.004 (not healed)" in faults


def test_page_caps_the_anomalies_shown(tmp_path: Path) -> None:
    ops = small_history()
    results = results_for(ops)
    results["anomalies"] = [
        {"check": "lost-writes", "message": f"anomaly {n}", "ops": [1]}
        for n in range(ANOMALIES_SHOWN_MAX + 7)
    ]

    page = write_report(tmp_path, ops, results).read_text(encoding="utf-8")

    assert f"anomaly {ANOMALIES_SHOWN_MAX - 1}<" in page
    assert f"anomaly {ANOMALIES_SHOWN_MAX}<" not in page
    assert "7 more omitted" in page


def test_empty_history_and_empty_results_still_give_a_report(tmp_path: Path) -> None:
    index = write_report(tmp_path, [], {})

    assert_png(tmp_path / "latency.png")
    assert_png(tmp_path / "rate.png")
    page = index.read_text(encoding="utf-8")
    assert '<h1 class="unknown">UNKNOWN: could not decide</h1>' in page
    assert "The history is empty" in page
    assert "No faults injected" in page


def test_counts_come_from_the_history_when_results_have_none(tmp_path: Path) -> None:
    ops = small_history()

    page = write_report(tmp_path, ops, {"verdict": "valid"}).read_text(encoding="utf-8")

    assert '<h1 class="valid">VALID</h1>' in page
    counts = page[page.index("<h2>Outcomes") :]
    # 4 ok, 1 fail, 1 info and 1 never completed (counted as info): 7 operations.
    assert '<tr><th>all</th><td class="number">4</td><td class="number">1</td>' in counts
    assert '<td class="number">2</td><td class="number">7</td></tr>' in counts


def test_a_history_that_does_not_pair_still_gets_a_page(tmp_path: Path) -> None:
    history = HistoryRecorder()
    history.record(OpType.OK, 0, "put", 5 * MS, key="k1")  # a completion with no invoke

    page = write_report(tmp_path, history.ops, {}).read_text(encoding="utf-8")

    assert "do not pair" in page
    assert_png(tmp_path / "latency.png")


def test_plots_without_faults(tmp_path: Path) -> None:
    ops = [op for op in small_history() if op.process != NEMESIS_PROCESS]

    plot_latency(ops, tmp_path / "latency.png")
    plot_rate(ops, tmp_path / "rate.png", bin_s=0.25)

    assert_png(tmp_path / "latency.png")
    assert_png(tmp_path / "rate.png")


def test_plots_of_operations_that_never_completed(tmp_path: Path) -> None:
    history = HistoryRecorder()
    history.record(OpType.INVOKE, 0, "put", 0, key="k1")
    history.record(OpType.INVOKE, 1, "get", 2 * S, key="k1")

    plot_latency(history.ops, tmp_path / "latency.png")
    plot_rate(history.ops, tmp_path / "rate.png")

    assert_png(tmp_path / "latency.png")
    assert_png(tmp_path / "rate.png")


@pytest.mark.parametrize("bin_s", [0.0, -1.0, float("nan")])
def test_plot_rate_refuses_a_bin_that_is_not_positive(tmp_path: Path, bin_s: float) -> None:
    with pytest.raises(ValueError, match="bin_s"):
        plot_rate(small_history(), tmp_path / "rate.png", bin_s=bin_s)


def test_importing_the_report_does_not_import_matplotlib() -> None:
    code = "import sys, distlab.chaos.report; sys.exit('matplotlib' in sys.modules)"

    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_faults_come_from_results_when_the_history_has_none(tmp_path: Path) -> None:
    ops = [op for op in small_history() if op.process != NEMESIS_PROCESS]
    results = {
        "duration_s": 3.0,
        "faults": [
            {"description": "kill n2", "start_s": 0.5, "end_s": 1.5, "kind": "kill"},
            {"description": "pause n3", "start_s": 2.0, "kind": "pause"},
        ],
    }

    page = write_report(tmp_path, ops, results).read_text(encoding="utf-8")

    faults = page[page.index("<h2>Faults") : page.index("<h2>Plots")]
    assert "kill n2" in faults
    assert "3.004 (not healed)" in faults
