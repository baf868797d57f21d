"""The README's first command: ``distlab up`` starts the key-value and cache clusters, they
answer the CLI, and Ctrl-C (SIGINT) stops every node."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

DEADLINE_S = 60.0


def free_port_run(count: int) -> int:
    """A base port with ``count`` free ports after it (checked by binding each)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + count > 65535:
            continue
        sockets = []
        try:
            for offset in range(count):
                taken = socket.socket()
                sockets.append(taken)
                taken.bind(("127.0.0.1", base + offset))
        except OSError:
            continue
        finally:
            for taken in sockets:
                taken.close()
        return base
    raise AssertionError("no run of free ports found")


def distlab(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "distlab.cli", *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_up_serves_both_clusters_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    kv_base = free_port_run(3)
    cache_base = free_port_run(3)
    up = subprocess.Popen(
        [
            sys.executable, "-m", "distlab.cli", "up",
            "--base-port", str(kv_base),
            "--cache-base-port", str(cache_base),
            "--data-dir", str(tmp_path / "data"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    lines: list[str] = []
    try:
        assert up.stdout is not None
        deadline = time.monotonic() + DEADLINE_S
        while "Ctrl-C stops the cluster." not in lines:
            assert time.monotonic() < deadline, "\n".join(lines)
            line = up.stdout.readline()
            assert line, f"distlab up exited: {lines}"
            lines.append(line.strip())
        assert any(line.startswith("cache3  127.0.0.1:") for line in lines), lines
        kv = f"127.0.0.1:{kv_base}"
        caches = ",".join(f"127.0.0.1:{cache_base + index}" for index in range(3))
        assert distlab("kv", "put", "greeting", "hello", "--to", kv).returncode == 0
        got = distlab("kv", "get", "greeting", "--to", f"127.0.0.1:{kv_base + 1}")
        assert "hello" in got.stdout, got.stderr
        assert distlab("cache", "set", "greeting", "hi", "--nodes", caches).stdout == "STORED\n"
        assert distlab("cache", "get", "greeting", "--nodes", caches).stdout == "hi\n"
        stats = distlab("cache", "stats", "--nodes", caches)
        assert stats.stdout.count("items=") == 3
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=DEADLINE_S) == 0
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
            # Its nodes outlive a killed parent: end them by the ids it printed.
            for line in lines:
                if " pid " in line:
                    with contextlib.suppress(ProcessLookupError, ValueError):
                        os.kill(int(line.rsplit(" pid ", 1)[1]), signal.SIGKILL)
        if up.stdout is not None:
            up.stdout.close()
