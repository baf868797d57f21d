"""Five-minute chaos runs of the key-value store (slow: `pytest -m slow`), the chaos matrix's
long runs: every fault kind the harness has, against the safe configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from distlab.chaos.checkers import CheckVerdict
from tests.chaos.harness import chaos_run, check

ALL_FAULTS = ("partition", "kill", "pause", "clock", "disk", "latency", "gray")


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_five_minutes_of_every_fault_lose_no_acknowledged_write(tmp_path: Path, seed: int) -> None:
    outcome = chaos_run(
        tmp_path,
        seed=seed,
        duration_s=300.0,
        faults=ALL_FAULTS,
        interval_s=10.0,
        fault_s=(2.0, 8.0),
        rate=100.0,
        converge_wait_s=10.0,
    )

    assert len(outcome.results["faults"]) >= 10
    assert check(outcome, "lost-writes")["counts"]["acknowledged"] > 5_000
    assert outcome.verdict is CheckVerdict.VALID
