"""Canonical JSON bytes: the one encoding auth signs and the executor verifies.

Two processes must derive byte-identical input to Ed25519 from the same event, whatever
order fields were parsed or constructed in. The rule: the model's JSON-mode dump (UUIDs,
datetimes and IP addresses already as strings, datetimes in UTC), object keys sorted, no
insignificant whitespace, UTF-8 without ``\\u`` escapes, NaN/Infinity refused.
"""

from __future__ import annotations

import json

from pydantic import BaseModel


def canonical_json(value: BaseModel | object) -> bytes:
    """Canonical UTF-8 JSON of a model (via ``model_dump(mode="json")``) or of a value
    that is already JSON-compatible (dicts, lists, str, int, float, bool, None)."""
    data = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
    return json.dumps(
        data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")
