"""Sans-I/O rule (STYLE.md rule 1): cores and pure common modules import no I/O.

Every module named ``core`` (or ``core_*``) anywhere in distlab, plus the pure modules listed
below, must (a) not import asyncio, grpc, socket, os, io, time, threading or subprocess, nor call
``open``, nor use the module-level ``random`` functions (a seeded ``random.Random`` is fine); and
(b) import cleanly in a fresh interpreter without pulling grpc, asyncio or socket in through a
dependency.
"""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import distlab

PACKAGE_ROOT = Path(distlab.__file__).parent

# Pure modules that are not named core: the shared algorithms and the storage core.
DECLARED_PURE = (
    "distlab.common.errors",
    "distlab.common.hashring",
    "distlab.common.limits",
    "distlab.common.wal",
    "distlab.kvstore.memtable",
    "distlab.kvstore.merkle",
    "distlab.kvstore.versioning",
    "distlab.kvstore.membership",
    "distlab.kvstore.coordinator",
    "distlab.kvstore.checker",
    "distlab.chaos.history",
    "distlab.chaos.nemesis",
    "distlab.chaos.linearizability",
    "distlab.chaos.checkers",
    "distlab.cache.routing",
    "distlab.raft.sessions",
    "distlab.raft.register",
    "distlab.cache.policy",
    "distlab.cache.traces",
    "distlab.cache.checker",
)
FORBIDDEN_IMPORTS = frozenset(
    {"asyncio", "grpc", "socket", "os", "io", "time", "threading", "subprocess", "selectors"}
)
FORBIDDEN_TRANSITIVE = ("grpc", "asyncio", "socket")


def pure_modules() -> list[str]:
    discovered = [
        info.name
        for info in pkgutil.walk_packages([str(PACKAGE_ROOT)], prefix="distlab.")
        if info.name.rsplit(".", 1)[-1].startswith("core")
    ]
    return sorted({*DECLARED_PURE, *discovered})


def module_path(name: str) -> Path:
    return PACKAGE_ROOT.joinpath(*name.split(".")[1:]).with_suffix(".py")


def violations(source: str) -> list[str]:
    """Each forbidden import or call in the source, as 'line N: what'."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        else:
            modules = []
        for module in modules:
            if module.split(".")[0] in FORBIDDEN_IMPORTS:
                found.append(f"line {node.lineno}: imports {module}")
        if isinstance(node, ast.Call):
            function = node.func
            if isinstance(function, ast.Name) and function.id == "open":
                found.append(f"line {node.lineno}: calls open()")
            if (
                isinstance(function, ast.Attribute)
                and isinstance(function.value, ast.Name)
                and function.value.id == "random"
                and function.attr != "Random"
            ):
                found.append(f"line {node.lineno}: calls random.{function.attr} (unseeded)")
    return found


def test_the_rule_covers_the_modules_it_should() -> None:
    modules = pure_modules()
    assert set(DECLARED_PURE) <= set(modules)
    for name in modules:
        assert module_path(name).is_file(), f"{name} is declared pure but does not exist"


@pytest.mark.parametrize("name", pure_modules())
def test_pure_module_imports_no_io(name: str) -> None:
    assert violations(module_path(name).read_text()) == [], name


@pytest.mark.parametrize("name", pure_modules())
def test_pure_module_pulls_in_no_io_transitively(name: str) -> None:
    probe = (
        f"import json, sys; import {name}; "
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{list(FORBIDDEN_TRANSITIVE)!r})))"
    )
    completed = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(completed.stdout) == [], f"importing {name} loads I/O modules"


def test_checker_catches_forbidden_imports() -> None:
    """Negative control: the checker must flag what the rule forbids."""
    source = "import asyncio\nfrom grpc import aio\nimport random\nx = random.random()\nopen('f')\n"
    assert violations(source) == [
        "line 1: imports asyncio",
        "line 2: imports grpc",
        "line 4: calls random.random (unseeded)",
        "line 5: calls open()",
    ]
    assert violations("import random\nrng = random.Random(7)\n") == []
