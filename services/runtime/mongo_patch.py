"""Make pymongo's async condition waits safe to cancel on Python 3.11.

pymongo (4.20) waits on its topology and pool conditions with
``asyncio.wait_for(condition.wait(), timeout)``. Before Python 3.12, ``wait_for`` runs the
wait in a task of its own. If that wait has timed out and is re-acquiring the lock while
another task (the topology monitor) holds it, and the *caller* is cancelled at that moment,
the caller unwinds at once: its ``async with lock`` releases the monitor's hold, and the
orphaned wait acquires the lock afterwards and never releases it. From then on every
operation of the process waits forever for server selection - observed in the chaos runs
as an executor that stayed unhealthy after a 40 s store outage (the executor cancels an
intervention's lease heartbeat, and an intervention on a lost lease, while they wait for
the store), with "Lock is not acquired" raised in the monitor.

:func:`apply` replaces the helper with one built on ``asyncio.timeout`` (3.11+): the wait
runs in the caller's own task, so a cancellation re-acquires the lock before it
propagates, as ``Condition.wait`` guarantees. Python 3.12's ``wait_for`` is built the same
way, so there the patch is not applied. Tested by
``tests/unit/runtime/test_mongo_cancellation.py`` against pymongo's own lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pymongo.asynchronous.pool
import pymongo.asynchronous.topology
import pymongo.lock

NEEDED = sys.version_info < (3, 12)
_MODULES = (pymongo.lock, pymongo.asynchronous.pool, pymongo.asynchronous.topology)
_ORIGINAL: Callable[[Any, float | None], Awaitable[bool]] = pymongo.lock._async_cond_wait


async def _cond_wait(condition: Any, timeout: float | None) -> bool:
    try:
        async with asyncio.timeout(timeout):
            return bool(await condition.wait())
    except TimeoutError:
        return False


def apply() -> None:
    """Install the cancellation-safe wait in every pymongo module that uses it."""
    if NEEDED:
        for module in _MODULES:
            module._async_cond_wait = _cond_wait  # type: ignore[attr-defined]


def cond_wait() -> Callable[[Any, float | None], Awaitable[bool]]:
    """The wait pymongo's topology uses now (for the tests)."""
    return pymongo.asynchronous.topology._async_cond_wait  # type: ignore[attr-defined]


@contextlib.contextmanager
def unpatched() -> Iterator[None]:
    """pymongo's own wait, for the test that shows why the patch exists."""
    current = [module._async_cond_wait for module in _MODULES]
    for module in _MODULES:
        module._async_cond_wait = _ORIGINAL  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for module, wait in zip(_MODULES, current, strict=True):
            module._async_cond_wait = wait  # type: ignore[attr-defined]
