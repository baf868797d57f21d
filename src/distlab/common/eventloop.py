"""The event loop every distlab process runs its asyncio code on.

uvloop (libuv under asyncio's API) where it is installed, because a node spends much of its CPU
in the event loop itself: waking tasks, polling sockets, running callbacks. On this project's
2-core benchmark machine it raised Raft puts by about a tenth. Everything distlab runs goes
through ``run`` (nodes, routers, benchmarks with their in-process echo reference, chaos runs), so
a benchmark's reference and the system it measures share one kind of loop.

``DISTLAB_EVENT_LOOP=asyncio`` picks the standard library's loop instead, to compare the two or
to rule uvloop out when chasing a bug.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

ResultT = TypeVar("ResultT")
EVENT_LOOP_VARIABLE = "DISTLAB_EVENT_LOOP"
EVENT_LOOPS = ("uvloop", "asyncio")


def chosen() -> str:
    """The loop ``run`` uses: the environment's choice, else uvloop when it imports."""
    choice = os.environ.get(EVENT_LOOP_VARIABLE, "").strip().lower()
    if choice and choice not in EVENT_LOOPS:
        raise ValueError(f"{EVENT_LOOP_VARIABLE} must be one of {EVENT_LOOPS}, got {choice!r}")
    if choice == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if choice == "uvloop":
            raise
        return "asyncio"
    return "uvloop"


def run(main: Coroutine[Any, Any, ResultT]) -> ResultT:
    """``asyncio.run(main)`` on the chosen loop."""
    if chosen() == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)
