"""The README's test command is what CI runs, word for word."""

from __future__ import annotations

import re
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]


def readme_command(label: str) -> str:
    readme = (REPOSITORY / "README.md").read_text()
    match = re.search(rf"<!-- {label} -->\n```(?:sh|bash)\n(.+?)\n```", readme, re.DOTALL)
    assert match, f"README has no code block after <!-- {label} -->"
    return match.group(1).strip()


def test_ci_runs_the_readme_test_command() -> None:
    command = readme_command("test-command")
    script = (REPOSITORY / ".ci" / "run").read_text().splitlines()
    assert command in script, f".ci/run must contain the README's test command: {command}"


def test_readme_run_command_starts_the_local_cluster() -> None:
    command = readme_command("run-command")
    assert "pip install" in command
    assert command.endswith("distlab up")
