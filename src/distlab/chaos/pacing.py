"""The clients of a chaos workload: a fixed number of workers at a bounded total rate.

Jepsen's generator, reduced to what our workloads use: ``concurrency`` workers, each running
one operation at a time, share one schedule of start slots ``rate`` per second apart, so the
total rate never exceeds ``rate`` however many workers there are, and a worker stuck in a slow
call simply leaves its slots to the others. The run ends at the first slot past
``duration_s``; operations already started finish.

Each worker is a callable that runs one operation, given the seconds since the run began
(workloads use it to rotate their keys). Whatever a worker keeps between operations (its
process id, its random generator, the node it talks to) lives in the callable's own object.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Sequence

Worker = Callable[[float], Awaitable[None]]


async def run_paced(workers: Sequence[Worker], rate: float, duration_s: float) -> None:
    if rate <= 0 or duration_s <= 0:
        raise ValueError("rate and duration_s must be positive")
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + duration_s
    slots = itertools.count()

    async def drive(worker: Worker) -> None:
        while True:
            at = started + next(slots) / rate
            if at >= deadline:
                return
            await asyncio.sleep(max(0.0, at - loop.time()))
            await worker(loop.time() - started)

    await asyncio.gather(*(drive(worker) for worker in workers))
