"""Start real ``distlab node`` processes on loopback on kernel-chosen ports; always stop them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# Generous: a cold interpreter importing grpc on a busy 2-core CI machine can take seconds.
NODE_START_DEADLINE_S = 60.0
NODE_STOP_DEADLINE_S = 30.0


@dataclass
class NodeProcess:
    data_dir: Path
    log_path: Path
    extra_args: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    port: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def port_file(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.port"

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None, "already running"
        self.port_file.unlink(missing_ok=True)
        command = [
            sys.executable, "-m", "distlab.cli", "node",
            "--data-dir", str(self.data_dir),
            "--port", str(self.port),  # 0 the first time; the same port on restart
            "--port-file", str(self.port_file),
            *self.extra_args,
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + NODE_START_DEADLINE_S
        while not self.port_file.exists():
            if self.process.poll() is not None:
                raise AssertionError(f"node exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"node not serving after {NODE_START_DEADLINE_S} s:\n{self.log()}"
                )
            time.sleep(0.02)
        self.port = int(self.port_file.read_text())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """kill -9: no shutdown code runs."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=NODE_STOP_DEADLINE_S)

    def terminate(self) -> int:
        """SIGTERM, then wait for the graceful shutdown; returns the exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=NODE_STOP_DEADLINE_S)


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[object]:
    started: list[NodeProcess] = []

    def start(name: str = "node1", *extra_args: str) -> NodeProcess:
        node = NodeProcess(tmp_path / name, tmp_path / f"{name}.log", list(extra_args))
        started.append(node)
        node.start()
        return node

    try:
        yield start
    finally:
        for node in started:
            node.kill()
