"""Group commit for hot-path inserts and deletes: those into (or from) one collection that
arrive while one is on its way to the store go together in the next round trip, one
``insert_many`` (:class:`GroupInsert`) or one ``delete_many`` by ``_id`` (:class:`GroupDelete`).

Why (issue 17): FerretDB serialises writes, so in a 1,000-ticket burst every insert waited
about 180 ms for the store. The consumer runtime hands a batch of tickets to the handlers
at once, and the executor runs many interventions at once, so many tasks reach the same
insert within the same few milliseconds: here they share one round trip and one store
transaction. Used by the notifier (facts, pages, claims, chat posts, metric marks) and by
the audit log (every service's records: :mod:`services.runtime.audit`).

Nothing about a single insert changes for its caller. Each document is still its own
test-and-set: an unordered ``insert_many`` refuses a duplicate ``_id`` per document and
inserts the others (FerretDB 1.24 answers with the per-document ``writeErrors``, as
MongoDB does), so :meth:`GroupInsert.insert` returns when its document is durable, raises
:class:`~pymongo.errors.DuplicateKeyError` when its ``_id`` was taken (by an earlier writer
or by another document of the same group: the first one wins), and raises the round trip's
own error (a lost connection) when the whole group failed, exactly what ``insert_one``
would have done. A unique index other than ``_id`` (the audit log's ``record_id`` per
chain) refuses its document the same way.

The first insert after a quiet spell waits only for the tasks already runnable (one turn
of the event loop): under light load an insert costs what it did; under load the group
grows by itself with the store's latency, which is group commit's point.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, Generic, TypeVar

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, DuplicateKeyError, WriteError

from services.runtime.store_ops import DUPLICATE_KEY

Item = TypeVar("Item")


class _Grouped(Generic[Item]):
    """The queue both share: one writer task at a time sends what waits, ``limit`` items at
    most per round trip, and settles each caller's future."""

    def __init__(self, coll: AsyncCollection[Any], *, limit: int = 1000) -> None:
        self.coll = coll
        self._limit = limit
        self._queue: list[tuple[Item, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def _enqueue(self, item: Item, what: str) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._queue.append((item, future))
        if self._writer is None:
            self._writer = loop.create_task(self._write(), name=f"{what}-{self.coll.name}")
        await future

    async def _write(self) -> None:
        try:
            await asyncio.sleep(0)  # the tasks runnable in this turn join the first group
            while self._queue:
                group, self._queue = self._queue[:self._limit], self._queue[self._limit:]
                try:
                    await self._send(group)
                except Exception as exc:  # noqa: BLE001 - handed to every caller, who raises it
                    for _, future in group:
                        _settle(future, exc)
                except BaseException:  # cancelled on its way: the callers are cancelled too
                    for _, future in group:
                        future.cancel()
                    raise
        except BaseException:  # cancelled (the loop shuts down): nobody is left waiting
            for _, future in self._queue:
                future.cancel()
            self._queue = []
            raise
        finally:
            self._writer = None

    async def _send(self, group: list[tuple[Item, asyncio.Future[None]]]) -> None:
        raise NotImplementedError


class GroupInsert(_Grouped[dict[str, Any]]):
    """Inserts into one collection, written in groups (module doc)."""

    async def insert(self, doc: Mapping[str, Any]) -> None:
        """``insert_one(doc)``, sent with the others waiting (module doc)."""
        await self._enqueue(dict(doc), "insert")

    async def insert_new(self, docs: Sequence[Mapping[str, Any]]) -> set[str]:
        """Insert ``docs``, skipping those whose ``_id`` is already there; the ``_id`` of each
        skipped one (:func:`services.runtime.store_ops.insert_new`, grouped)."""
        results = await asyncio.gather(*(self.insert(d) for d in docs), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, DuplicateKeyError):
                raise result
        return {str(d["_id"]) for d, r in zip(docs, results, strict=True)
                if isinstance(r, DuplicateKeyError)}

    async def _send(self, group: list[tuple[dict[str, Any], asyncio.Future[None]]]) -> None:
        try:
            await self.coll.insert_many([doc for doc, _ in group], ordered=False)
        except BulkWriteError as exc:
            errors = {int(e["index"]): e for e in exc.details.get("writeErrors", [])}
            for index, (_, future) in enumerate(group):
                error = errors.get(index)
                if error is not None:
                    _settle(future, _write_error(error))
                else:  # inserted, unless the store could not confirm the write concern
                    _settle(future, exc if exc.details.get("writeConcernErrors") else None)
        else:
            for _, future in group:
                _settle(future, None)


class GroupDelete(_Grouped[str]):
    """Deletes by ``_id`` from one collection, written in groups: the keys that arrive while
    one ``delete_many`` is on its way go together in the next (intake's outbox entries once
    published). :meth:`delete` returns once its document is gone (or was not there), or
    raises the round trip's error. Meant for small collections of in-flight state: a
    filter other than one ``_id`` is evaluated by reading the collection."""

    async def delete(self, key: str) -> None:
        await self._enqueue(key, "delete")

    async def _send(self, group: list[tuple[str, asyncio.Future[None]]]) -> None:
        keys = list(dict.fromkeys(key for key, _ in group))
        if len(keys) == 1:  # by _id alone: the store's cheapest delete
            await self.coll.delete_one({"_id": keys[0]})
        else:
            await self.coll.delete_many({"_id": {"$in": keys}})
        for _, future in group:
            _settle(future, None)


def _write_error(error: Mapping[str, Any]) -> WriteError:
    code = int(error.get("code", 0))
    kind = DuplicateKeyError if code == DUPLICATE_KEY else WriteError
    return kind(str(error.get("errmsg", "")), code, dict(error))


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():  # its caller was cancelled meanwhile
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
