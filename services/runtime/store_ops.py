"""Two store patterns the services share, shaped by what FerretDB 1.24 does cheaply.

- :func:`insert_new`: an unordered bulk insert that treats a duplicate ``_id`` as "already
  there" (a repeat after a redelivery or a crash) - the insert is the test-and-set, and
  the only atomic one FerretDB has.
- :func:`drop_partitions`: bookkeeping kept in one collection per period
  (``<base>_<period>``) expires by dropping whole collections, never by a delete that
  scans history (FerretDB has no TTL index, and every delete scans its collection).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any, TypeVar

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError

__all__ = ["DUPLICATE_KEY", "day_suffix", "drop_partitions", "hour_suffix", "insert_new",
           "partitions"]

DUPLICATE_KEY = 11000

P = TypeVar("P")


async def insert_new(coll: AsyncCollection[Any], docs: Sequence[Mapping[str, Any]]
                     ) -> set[str]:
    """Insert ``docs`` in one round trip, skipping those whose ``_id`` is already there;
    the ``_id`` of each skipped one. Any other failure propagates."""
    try:
        await coll.insert_many([dict(d) for d in docs], ordered=False)
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        if any(e.get("code") != DUPLICATE_KEY for e in errors):
            raise
        return {str(docs[int(e["index"])]["_id"]) for e in errors}
    return set()


def _suffix(suffix: str, digits: int, fmt: str) -> datetime | None:
    if len(suffix) != digits or not suffix.isdigit():
        return None
    try:
        return datetime.strptime(suffix, fmt).replace(tzinfo=UTC)
    except ValueError:
        return None


def day_suffix(suffix: str) -> date | None:
    """The day a partition's suffix (``YYYYMMDD``, UTC) names, None for any other
    collection (the ``period_of`` of :func:`partitions` for day partitions)."""
    moment = _suffix(suffix, 8, "%Y%m%d")
    return moment.date() if moment is not None else None


def hour_suffix(suffix: str) -> datetime | None:
    """The hour a partition's suffix (``YYYYMMDDHH``, UTC) names, None for any other."""
    return _suffix(suffix, 10, "%Y%m%d%H")


async def partitions(db: AsyncDatabase[Any], base: str,
                     period_of: Callable[[str], P | None]) -> list[tuple[P, str]]:
    """The ``<base>_<suffix>`` collections whose suffix ``period_of`` reads (it returns
    None for anything else), as (period, name), oldest first."""
    found: list[tuple[P, str]] = []
    for name in await db.list_collection_names():
        if name.startswith(f"{base}_"):
            period = period_of(name.removeprefix(f"{base}_"))
            if period is not None:
                found.append((period, name))
    return sorted(found, key=lambda item: item[0])  # type: ignore[arg-type, return-value]


async def drop_partitions(db: AsyncDatabase[Any], base: str,
                          period_of: Callable[[str], P | None], older_than: P) -> int:
    """Drop every partition of ``base`` whose period is before ``older_than``; how many."""
    dropped = 0
    for period, name in await partitions(db, base, period_of):
        if period < older_than:  # type: ignore[operator]
            await db.drop_collection(name)
            dropped += 1
    return dropped
