"""Waiting in tests for something that happens elsewhere: one polling helper for every suite.

Tests import it as ``from polling import eventually`` with this directory on ``sys.path``
(as for ``executor_targets``).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(check: Callable[[], Awaitable[T] | T], timeout: float = 15.0, *,
                     interval: float = 0.05, what: str = "condition") -> T:
    """Call ``check`` (plain or async) until it returns something truthy, and return that.

    Fails the test (AssertionError naming ``what``) when it has not after ``timeout``
    seconds. ``check`` is called every ``interval`` seconds, at least once, and the last
    time after the deadline passed.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result  # type: ignore[return-value]
        if loop.time() > deadline:
            raise AssertionError(f"not reached in {timeout:g}s: {what}")
        await asyncio.sleep(interval)
