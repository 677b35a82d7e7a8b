"""The event loop every process of the service runs on."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

try:
    import uvloop
    _loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
except ImportError:  # Windows has no uvloop: asyncio's own loop serves there
    _loop_factory = None

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` on uvloop where it is installed. Measured with httptools (which uvicorn
    picks up by itself): a check, one at a time, cost the API-and-worker process 22.4 ms of
    CPU on asyncio's loop and h11, 16.8 ms on these (benchmarks/cpu_cost.py); under load at
    20 checks/s, with its share of the other requests, 35.5 ms before and 32.8 ms after."""
    with asyncio.Runner(loop_factory=_loop_factory) as runner:
        return runner.run(main)
