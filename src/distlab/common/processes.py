"""Node processes on this machine: start one with a port file, wait until it serves, stop it.

Used by ``distlab up``, the benchmarks, the integration tests and the chaos harness, so that all
of them start, find and stop nodes the same way (``command`` picks the system: ``node`` for the
key-value store, ``raft node`` for Raft). Only processes started here are ever signalled,
by their own pid.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

# Generous: a cold interpreter importing grpc on a busy 2-core machine can take seconds.
START_DEADLINE_S = 60.0
STOP_DEADLINE_S = 30.0
POLL_INTERVAL_S = 0.02


class NodeStartError(Exception):
    pass


@dataclass
class NodeProcess:
    """One ``distlab node`` process. ``port`` is 0 until the first start, then kept, so a
    restarted node comes back at the address its peers know."""

    name: str
    data_dir: Path
    log_path: Path
    arguments: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    command: tuple[str, ...] = ("node",)  # the distlab subcommand: ("raft", "node") for Raft

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def port_file(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.port"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, wait: bool = True) -> None:
        if self.running():
            raise NodeStartError(f"{self.name} is already running")
        self.port_file.unlink(missing_ok=True)
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, "-m", "distlab.cli", *self.command,
            "--node-id", self.name,
            "--data-dir", str(self.data_dir),
            "--host", self.host,
            "--port", str(self.port),
            "--port-file", str(self.port_file),
            *self.arguments,
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        if wait:
            self.wait_serving()

    def wait_serving(self, deadline_s: float = START_DEADLINE_S) -> None:
        assert self.process is not None, "start() first"
        deadline = time.monotonic() + deadline_s
        while not self.port_file.exists():
            if self.process.poll() is not None:
                raise NodeStartError(
                    f"{self.name} exited with status {self.process.returncode}; "
                    f"last log lines:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise NodeStartError(
                    f"{self.name} not serving after {deadline_s} s:\n{self.log_tail()}"
                )
            time.sleep(POLL_INTERVAL_S)
        self.port = int(self.port_file.read_text())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def terminate(self, deadline_s: float = STOP_DEADLINE_S) -> int | None:
        """SIGTERM (graceful shutdown), then SIGKILL if it outlives the deadline."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=deadline_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def kill(self) -> None:
        """kill -9: no shutdown code runs, as in a crash."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=STOP_DEADLINE_S)

    def pause(self) -> None:
        if self.running():
            assert self.process is not None
            os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.running():
            assert self.process is not None
            os.kill(self.process.pid, signal.SIGCONT)


def start_all(nodes: Iterable[NodeProcess], deadline_s: float = START_DEADLINE_S) -> None:
    """Start every node, then wait until each serves: they boot side by side, not in turn."""
    started = list(nodes)
    for node in started:
        node.start(wait=False)
    for node in started:
        node.wait_serving(deadline_s)
