"""A pymongo operation cancelled while it waits in server selection must not wedge the client.

pymongo's async client waits on its topology condition with ``asyncio.wait_for``. On Python
3.11 ``wait_for`` runs the wait in a task of its own: when that wait has timed out and is
re-acquiring the lock (held by the topology monitor) and the caller is cancelled just then
(an executor cancelling an intervention or its lease heartbeat), the caller leaves at once
and its ``async with lock`` releases the *monitor's* hold, while the orphaned wait acquires
the lock later and keeps it for good: every later operation of the process hangs (the
executor after a store outage in the chaos runs). These tests drive pymongo's own lock and
condition through that interleaving.
"""

from __future__ import annotations

import asyncio
import contextlib

from pymongo.lock import _async_create_condition, _async_create_lock

from services.runtime import mongo_patch


async def interleave() -> tuple[bool, list[BaseException]]:
    """Returns (lock still held at the end, errors raised by the lock's holders)."""
    lock = _async_create_lock()
    condition = _async_create_condition(lock)
    errors: list[BaseException] = []
    tasks: list[asyncio.Task[None]] = []

    async def selector() -> None:  # a server selection waiting for the topology to change
        try:
            async with lock:
                await mongo_patch.cond_wait()(condition, 0.05)
        except RuntimeError as exc:
            errors.append(exc)

    async def monitor() -> None:  # the topology monitor, holding the lock a while
        await asyncio.sleep(0.04)
        async with lock:
            await asyncio.sleep(0.06)  # the wait timed out at 0.05 and waits for the lock
            tasks[0].cancel()  # the caller is cancelled just as the monitor lets go

    tasks.append(asyncio.create_task(selector()))
    tasks.append(asyncio.create_task(monitor()))
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await asyncio.sleep(0.05)
    return lock.locked(), errors


async def test_a_cancelled_server_selection_leaves_the_topology_lock_free() -> None:
    mongo_patch.apply()
    held, errors = await interleave()
    assert errors == []
    assert not held


async def test_the_unpatched_wait_wedges_the_lock_on_this_python() -> None:
    """Why the patch exists: without it the same interleaving leaves the lock held by a
    task nobody awaits (or raises "Lock is not acquired" in the monitor). Only on Pythons
    whose ``wait_for`` runs the awaitable in a separate task (before 3.12)."""
    if not mongo_patch.NEEDED:
        return
    with mongo_patch.unpatched():
        held, errors = await interleave()
    assert held or errors
