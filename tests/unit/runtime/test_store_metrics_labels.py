"""The round-trip counter's collection label: partitions count under one name."""

from __future__ import annotations

from services.runtime.store_metrics import _collection


def test_daily_and_hourly_partitions_count_under_one_label_per_base() -> None:
    assert _collection("insert", {"insert": "processed_events_20261206"}) == (
        "processed_events_{day}")
    # The executor's claim queue is partitioned by hour: still one label, not one an hour.
    assert _collection("insert", {"insert": "executor_claims_queued_2026120618"}) == (
        "executor_claims_queued_{day}")
    assert _collection("update", {"update": "executor_claims"}) == "executor_claims"
    assert _collection("ping", {"ping": 1}) == "-"
