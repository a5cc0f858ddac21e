"""Store round trips, counted where they happen: a PyMongo command listener.

Every command a service's ``AsyncMongoClient`` sends to the store is one round trip on
the wire — to FerretDB, one trip through its (serialising) SQLite backend. Counting them
per operation and collection is how the cost of one ticket is measured (issue 17's
"store round trips per ticket"), and how a regression that adds a write to a hot path
shows on the dashboard before it shows as latency.

The counter ``intervention.store.round_trips`` carries the OpenTelemetry database
attributes ``db.operation.name`` (``insert``, ``find``, ``update``...) and
``db.collection.name``; collection names are bounded (no ticket ids in them), so the
series stay few. Connection handshakes and heartbeats (``hello``) are not commands a
handler sent and are left out.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from typing import Any

from opentelemetry.metrics import MeterProvider
from pymongo import monitoring

__all__ = ["DURATION_METRIC", "ROUND_TRIPS_METRIC", "RUNTIME_COLLECTIONS", "StoreRoundTrips",
           "own_round_trips"]

ROUND_TRIPS_METRIC = "intervention.store.round_trips"
# OpenTelemetry's database client convention: how long each command took, on the wire and
# in the store. Where a round trip's cost is, not only how many there are: on FerretDB an
# update scans its whole collection, a find by ``_id`` alone does not.
DURATION_METRIC = "db.client.operation.duration"
# What the shared runtime writes for every service (idempotency marks, audit chains), by
# collection-name prefix; "-" is database-wide housekeeping (the hourly partition drop).
RUNTIME_COLLECTIONS = ("processed_events", "audit")

# Sent by the driver itself (connection set-up, monitoring), never by our code.
_DRIVER_COMMANDS = frozenset({"hello", "ismaster", "isMaster", "saslStart", "saslContinue",
                              "endSessions", "killCursors", "buildInfo", "getnonce"})


# Time-partitioned collections (processed_events_20261206, and the executor's hourly
# executor_claims_queued_2026120618) count under one name: a label value per day (or hour)
# would grow the series without bound.
_PARTITION = re.compile(r"_\d{8}(?:\d{2})?$")


def _collection(command_name: str, command: Any) -> str:
    value = command.get(command_name) if hasattr(command, "get") else None
    if isinstance(value, str) and value:
        return _PARTITION.sub("_{day}", value)
    return "-"  # database-wide commands (ping, listCollections, dropDatabase)


class StoreRoundTrips(monitoring.CommandListener):
    """Counts each command sent, by operation and collection (an OTel counter, plus an
    in-process tally :attr:`totals` that benchmarks and tests read directly)."""

    def __init__(self, meter_provider: MeterProvider | None = None) -> None:
        self.totals: Counter[tuple[str, str]] = Counter()
        self.seconds: defaultdict[tuple[str, str], float] = defaultdict(float)
        self._started: dict[tuple[int, Any], tuple[str, str]] = {}
        self._counter = None
        self._duration = None
        if meter_provider is not None:
            meter = meter_provider.get_meter("intervention.store")
            self._counter = meter.create_counter(
                ROUND_TRIPS_METRIC, unit="{round_trip}",
                description="Commands sent to the store (one round trip each), by "
                            "operation and collection.")
            self._duration = meter.create_histogram(
                DURATION_METRIC, unit="s",
                description="How long each store command took, by operation and collection.")

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        name = event.command_name
        if name in _DRIVER_COMMANDS:
            return
        collection = _collection(name, event.command)
        self.totals[(name, collection)] += 1
        self._started[(event.request_id, event.connection_id)] = (name, collection)
        if self._counter is not None:
            self._counter.add(1, {"db.operation.name": name, "db.collection.name": collection})

    def _finished(self, event: monitoring.CommandSucceededEvent | monitoring.CommandFailedEvent
                  ) -> None:
        key = self._started.pop((event.request_id, event.connection_id), None)
        if key is None:
            return
        seconds = event.duration_micros / 1e6
        self.seconds[key] += seconds
        if self._duration is not None:
            self._duration.record(seconds, {"db.operation.name": key[0],
                                            "db.collection.name": key[1]})

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        self._finished(event)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self._finished(event)

    def total(self) -> int:
        return sum(self.totals.values())


def own_round_trips(totals: Counter[tuple[str, str]]) -> Counter[tuple[str, str]]:
    """``totals`` without the shared runtime's: what a service's own code cost."""
    return Counter({key: n for key, n in totals.items()
                    if key[1] != "-" and not key[1].startswith(RUNTIME_COLLECTIONS)})
