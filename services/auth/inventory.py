"""The ownership inventory: which servers exist, who owns them, who else may ask for work.

- :class:`ServerRecord` is one server as the provider records it (ARCHITECTURE §6), from
  :mod:`services.auth.server_record`.
- :class:`ServerInventory` is what auth needs from any source of those records; the
  MongoDB implementation (:class:`MongoServerInventory`) is filled by
  ``intervene servers import``; a billing system (WHMCS, ...) plugs in behind the same
  Protocol.
- :func:`parse_inventory` validates an import file (CSV with a header row, or a JSON list of
  objects with the same keys) row by row and reports every problem with its line number.

Import is all-or-nothing: :func:`parse_inventory` returns either records or errors, and the
CLI writes nothing when there is any error, so a half-applied file never leaves the
inventory in a state nobody reviewed; the operator fixes the file and runs it again.
Upserts are keyed by ``service_id`` and skip unchanged rows, so re-importing a file is a
no-op. Servers missing from a file are left alone (a file is a batch of changes, not the
whole inventory); decommissioning is the billing system's business.

Auth reads the inventory through :class:`CachedServerInventory`: lookups are kept in
process, and an import that changed anything writes a new *inventory version* (one small
document, ``auth_servers_version``) after its records. Each auth process reads that version
at most every ``check_interval_s`` (``AUTH_INVENTORY_CHECK_S``, default 2 s) and drops its
whole cache when it changed, so an import takes effect in every auth process within that
interval of finishing, and a burst of tickets costs no inventory round trip at all.
"""

from __future__ import annotations

import asyncio
import bisect
import csv
import io
import json
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal, Protocol

from pydantic import (
    ValidationError,
)
from pymongo import ReplaceOne, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase

from schemas.common import field_errors
from schemas.request import ServerRef
from services.auth.server_record import FIELDS, REQUIRED_FIELDS, ServerRecord, name_key

__all__ = [
    "COLLECTION",
    "FIELDS",
    "REQUIRED_FIELDS",
    "CachedServerInventory",
    "InventoryError",
    "MongoServerInventory",
    "ParsedInventory",
    "RowError",
    "ServerInventory",
    "ServerRecord",
    "UpsertSummary",
    "name_key",
    "parse_inventory",
    "parse_inventory_csv",
    "parse_inventory_json",
]

COLLECTION: Final = "auth_servers"


# --- the Protocol and its MongoDB implementation -----------------------------------------


class ServerInventory(Protocol):
    """Where auth looks servers up. Returns every record the identifier matches, so that
    the decision (not the adapter) says what zero or several matches mean."""

    async def find(self, ref: ServerRef) -> Sequence[ServerRecord]: ...


@dataclass(frozen=True, kw_only=True)
class UpsertSummary:
    created: int
    updated: int
    unchanged: int


class MongoServerInventory:
    """Servers by service id (``_id``), plus lookup documents for addresses and names.

    Every lookup is by ``_id``: FerretDB 1.24 (the local and test store) creates secondary
    indexes but decodes every document for any other filter (measured at 10,000 documents:
    ~0.7 s for ``{"ips": ip}``, ~20 ms for an ``_id``, which it filters inside SQLite). The keys
    collection maps ``ip:<address>`` and ``name:<service name key>`` to the service ids
    carrying them. It may hold extra ids (a crash between writes, see :meth:`upsert`) but
    never lacks one, and :meth:`find` keeps only records that really match.
    """

    def __init__(self, db: AsyncDatabase[dict[str, Any]], *, collection: str = COLLECTION) -> None:
        self._coll = db[collection]
        self._keys = db[f"{collection}_keys"]
        self._version = db[f"{collection}_version"]

    async def ensure_indexes(self) -> None:
        """Nothing to create: every query is by ``_id``. Kept so callers need not know."""

    async def find(self, ref: ServerRef) -> Sequence[ServerRecord]:
        if ref.service_id is not None:
            doc = await self._coll.find_one({"_id": ref.service_id})
            return () if doc is None else (ServerRecord.from_document(doc),)
        key = _lookup_key(ref)
        entry = await self._keys.find_one({"_id": key})
        # Bounded: one identifier matching more than this is an inventory fault anyway.
        ids = sorted(entry["service_ids"])[:50] if entry else []
        docs = await asyncio.gather(*(self._coll.find_one({"_id": i}) for i in ids))
        records = (ServerRecord.from_document(d) for d in docs if d is not None)
        return tuple(r for r in records if key in _keys_of(r))

    async def version(self) -> str | None:
        """The inventory's version: a new value after every import that changed a record."""
        doc = await self._version.find_one({"_id": "inventory"})
        return None if doc is None else str(doc.get("version"))

    async def upsert(self, records: Sequence[ServerRecord], *, batch: int = 500) -> UpsertSummary:
        """Create or replace by service id; rows equal to what is stored are not written.

        Without transactions the order makes a crash harmless: lookup keys are added before
        the record is written and removed only after, so a lookup never misses a server;
        re-running the import finishes the job. The version is written last, once
        everything else is (a crash before it: the re-run writes it).
        """
        created = updated = unchanged = 0
        for start in range(0, len(records), batch):
            chunk = records[start : start + batch]
            ids = [r.service_id for r in chunk]
            stored = {doc["_id"]: doc async for doc in self._coll.find({"_id": {"$in": ids}})}
            add: list[UpdateOne] = []
            replace: list[ReplaceOne[dict[str, Any]]] = []
            remove: list[UpdateOne] = []
            for record in chunk:
                doc = record.to_document()
                before = stored.get(record.service_id)
                if before is not None and _same(before, doc):
                    unchanged += 1
                    continue
                if before is None:
                    created += 1
                    old_keys: set[str] = set()
                else:
                    updated += 1
                    old_keys = _keys_of(ServerRecord.from_document(before))
                new_keys = _keys_of(record)
                add.extend(
                    UpdateOne(
                        {"_id": k}, {"$addToSet": {"service_ids": record.service_id}}, upsert=True
                    )
                    for k in sorted(new_keys)
                )
                replace.append(
                    ReplaceOne(
                        {"_id": record.service_id},
                        {**doc, "updated_at": datetime.now(UTC)},
                        upsert=True,
                    )
                )
                remove.extend(
                    UpdateOne({"_id": k}, {"$pull": {"service_ids": record.service_id}})
                    for k in sorted(old_keys - new_keys)
                )
            if add:
                await self._keys.bulk_write(add, ordered=False)
            if replace:
                await self._coll.bulk_write(replace, ordered=False)
            if remove:
                await self._keys.bulk_write(remove, ordered=False)
        if created or updated:
            await self._version.update_one(
                {"_id": "inventory"},
                {"$set": {"version": uuid.uuid4().hex, "at": datetime.now(UTC)}}, upsert=True)
        return UpsertSummary(created=created, updated=updated, unchanged=unchanged)


class CachedServerInventory:
    """:class:`MongoServerInventory` lookups kept in process, dropped when the inventory's
    version changes (module doc); safe for concurrent lookups in one event loop."""

    def __init__(self, source: MongoServerInventory, *, check_interval_s: float = 2.0,
                 max_entries: int = 50_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._source = source
        self._interval = check_interval_s
        self._max = max_entries
        self._clock = clock
        self._entries: dict[str, tuple[ServerRecord, ...]] = {}
        self._version: str | None = None
        self._checked_at: float | None = None
        self._generation = 0
        self._checking = asyncio.Lock()

    async def find(self, ref: ServerRef) -> Sequence[ServerRecord]:
        await self._follow_version()
        key = f"id:{ref.service_id}" if ref.service_id is not None else _lookup_key(ref)
        found = self._entries.get(key)
        if found is not None:
            return found
        generation = self._generation
        records = tuple(await self._source.find(ref))
        # A lookup that started before the cache was dropped may have read the old
        # inventory: it answers its own ticket but is not kept.
        if generation == self._generation:
            if len(self._entries) >= self._max:
                self._entries.clear()
            self._entries[key] = records
        return records

    def invalidate(self) -> None:
        self._entries.clear()
        self._generation += 1

    async def _follow_version(self) -> None:
        if self._due():
            async with self._checking:
                if self._due():  # another lookup may have checked while this one waited
                    version = await self._source.version()
                    self._checked_at = self._clock()
                    if version != self._version:
                        self._version = version
                        self.invalidate()

    def _due(self) -> bool:
        return self._checked_at is None or self._clock() - self._checked_at >= self._interval


def _lookup_key(ref: ServerRef) -> str:
    # str() of an address is its canonical form (lower case, compressed IPv6), as stored.
    return f"ip:{ref.ip}" if ref.ip is not None else f"name:{name_key(ref.value)}"


def _keys_of(record: ServerRecord) -> set[str]:
    return {*(f"ip:{ip}" for ip in record.ips), f"name:{name_key(record.service_name)}"}


def _same(stored: Mapping[str, Any], doc: Mapping[str, Any]) -> bool:
    return all(stored.get(k) == v for k, v in doc.items())


# --- import files --------------------------------------------------------------------------


class InventoryError(ValueError):
    """An import file that cannot be read at all (not its rows: those are RowErrors)."""


@dataclass(frozen=True, kw_only=True)
class RowError:
    """One problem in an import file. ``line`` is 1-based; ``field`` is ``$`` for the row
    (or the file) as a whole."""

    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.field}: {self.message}"


@dataclass(frozen=True, kw_only=True)
class ParsedInventory:
    records: tuple[ServerRecord, ...]
    errors: tuple[RowError, ...]

    @property
    def ok(self) -> bool:
        return not self.errors


def parse_inventory(path: Path, *, fmt: Literal["csv", "json"] | None = None) -> ParsedInventory:
    """Read and validate an import file; the format comes from ``fmt`` or the suffix."""
    kind = fmt or ("json" if path.suffix.lower() == ".json" else "csv")
    try:
        # utf-8-sig: spreadsheets like to start CSV exports with a byte-order mark.
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InventoryError(f"{path} is not UTF-8 (byte {exc.start})") from None
    except OSError as exc:
        raise InventoryError(f"{path} cannot be read: {exc.strerror or exc}") from None
    return parse_inventory_json(text) if kind == "json" else parse_inventory_csv(text)


def parse_inventory_csv(text: str) -> ParsedInventory:
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[tuple[int, Mapping[str, object]]] = []
    errors: list[RowError] = []
    header: list[str] | None = None
    previous_end = 0  # reader.line_num is the line a record *ends* on (quoted newlines)
    try:
        for cells in reader:
            line = previous_end + 1
            previous_end = reader.line_num
            if not any(c.strip() for c in cells):
                continue  # blank lines, e.g. at the end of the file
            if header is None:
                header = [c.strip() for c in cells]
                errors.extend(_header_errors(header, line))
                if errors:
                    return ParsedInventory(records=(), errors=tuple(errors))
                continue
            if len(cells) != len(header):
                errors.append(
                    RowError(
                        line=line,
                        field="$",
                        message=f"has {len(cells)} cells where the header has {len(header)}",
                    )
                )
                continue
            rows.append((line, dict(zip(header, cells, strict=True))))
    except csv.Error as exc:
        errors.append(RowError(line=reader.line_num, field="$", message=f"not valid CSV: {exc}"))
    if header is None:
        errors.append(RowError(line=1, field="$", message="no header row"))
    return _validate_rows(rows, errors)


def _header_errors(header: list[str], line: int) -> Iterator[RowError]:
    unknown = [c for c in header if c not in FIELDS]
    if unknown:
        yield RowError(
            line=line,
            field="$",
            message=f"unknown column(s) {', '.join(map(repr, unknown))}; "
            f"columns are {', '.join(FIELDS)}",
        )
    doubled = sorted({c for c in header if header.count(c) > 1})
    if doubled:
        yield RowError(line=line, field="$", message=f"repeated column(s) {', '.join(doubled)}")
    missing = sorted(REQUIRED_FIELDS - set(header))
    if missing:
        yield RowError(
            line=line, field="$", message=f"missing required column(s) {', '.join(missing)}"
        )


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def parse_inventory_json(text: str) -> ParsedInventory:
    try:
        document = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        error = RowError(line=exc.lineno, field="$", message=f"not valid JSON: {exc.msg}")
        return ParsedInventory(records=(), errors=(error,))
    except ValueError as exc:
        return ParsedInventory(records=(), errors=(RowError(line=1, field="$", message=str(exc)),))
    if not isinstance(document, list):
        error = RowError(line=1, field="$", message="must be a JSON list of server objects")
        return ParsedInventory(records=(), errors=(error,))
    rows: list[tuple[int, Mapping[str, object]]] = []
    errors: list[RowError] = []
    for line, item in _json_items(text):
        if not isinstance(item, dict):
            errors.append(RowError(line=line, field="$", message="must be a JSON object"))
        else:
            rows.append((line, item))
    return _validate_rows(rows, errors)


def _json_items(text: str) -> Iterator[tuple[int, object]]:
    """Each element of a top-level JSON list (already known to be valid) with the line it
    starts on: ``json.loads`` keeps no positions, so the list is walked with
    ``raw_decode``."""
    newlines = [i for i, ch in enumerate(text) if ch == "\n"]
    decoder = json.JSONDecoder()
    ws = " \t\r\n"

    def skip(i: int) -> int:
        while i < len(text) and text[i] in ws:
            i += 1
        return i

    i = skip(text.index("[") + 1)
    while i < len(text) and text[i] != "]":
        item, end = decoder.raw_decode(text, i)
        yield bisect.bisect_left(newlines, i) + 1, item
        i = skip(end)
        if i < len(text) and text[i] == ",":
            i = skip(i + 1)


def _validate_rows(
    rows: list[tuple[int, Mapping[str, object]]], errors: list[RowError]
) -> ParsedInventory:
    records: list[ServerRecord] = []
    first_line_of_id: dict[str, int] = {}
    owner_of_ip: dict[str, tuple[str, int]] = {}
    for line, row in rows:
        # An empty cell (or JSON null/"") means "not given": defaults apply to optional
        # fields and required ones are reported as missing, not as malformed text.
        given = {k: v for k, v in row.items() if v is not None and v != ""}
        try:
            record = ServerRecord.model_validate(given)
        except ValidationError as exc:
            found = field_errors(exc)
            # A list whose items were all invalid is also "too short"; the item errors say it.
            itemised = {e.field.split("[", 1)[0] for e in found if "[" in e.field}
            errors.extend(
                RowError(line=line, field=e.field, message=e.message)
                for e in found
                if not (e.code == "too_short" and e.field in itemised)
            )
            continue
        if record.service_id in first_line_of_id:
            errors.append(
                RowError(
                    line=line,
                    field="service_id",
                    message=f"{record.service_id} is already on line "
                    f"{first_line_of_id[record.service_id]}",
                )
            )
            continue
        first_line_of_id[record.service_id] = line
        clash = False
        for ip in map(str, record.ips):
            if ip in owner_of_ip and owner_of_ip[ip][0] != record.service_id:
                other, other_line = owner_of_ip[ip]
                errors.append(
                    RowError(
                        line=line,
                        field="ips",
                        message=f"{ip} is already the address of {other} on line {other_line}",
                    )
                )
                clash = True
            owner_of_ip.setdefault(ip, (record.service_id, line))
        if not clash:
            records.append(record)
    errors.sort(key=lambda e: e.line)
    return ParsedInventory(records=tuple(records), errors=tuple(errors))
