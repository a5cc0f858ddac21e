"""Export the JSON Schema of every message to ``schemas/json/<EventType>.json``.

    python -m schemas.export            # (re)write the committed schemas
    python -m schemas.export --check    # exit 1 listing files that differ

Validation-mode schemas: they describe what a consumer accepts, which is what a producer
in another language needs to know. Each is a JSON Schema 2020-12 document (``$schema``) with
its own ``$id`` (:data:`SCHEMA_ID_BASE` + file name), so validators (Ajv in strict mode, in
tests/contract/test_document_linters.py) know the dialect and can tell them apart. The folder
holds only generated files, so files for models that no longer exist are removed on write
and reported by ``--check``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from schemas.registry import ROUTES

SCHEMA_DIR = Path(__file__).resolve().parent / "json"
FIX_COMMAND = "python -m schemas.export"
DIALECT = "https://json-schema.org/draft/2020-12/schema"
# A URN, not a URL: the schemas are published with the repository, at no web address; an id
# only has to be a stable, absolute URI for validators to tell the documents apart.
SCHEMA_ID_BASE = "urn:os-intervention:schemas:json:"


def schema_documents() -> dict[str, str]:
    """File name -> file text for every routed message, generated in memory."""
    docs: dict[str, str] = {}
    for route in ROUTES:
        name = f"{route.event_type}.json"
        schema = {"$schema": DIALECT, "$id": SCHEMA_ID_BASE + name,
                  **route.model.model_json_schema(mode="validation")}
        docs[name] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return docs


def differences(directory: Path = SCHEMA_DIR) -> list[str]:
    """Names of files in ``directory`` that are missing, stale, or differ from the models."""
    expected = schema_documents()
    present = {p.name for p in directory.glob("*.json")} if directory.is_dir() else set()
    differ = [
        name
        for name, text in expected.items()
        if name not in present or (directory / name).read_text(encoding="utf-8") != text
    ]
    return sorted(differ + [name for name in present if name not in expected])


def write(directory: Path = SCHEMA_DIR) -> list[str]:
    """Write every schema and delete stale ones; returns the names that changed."""
    changed = differences(directory)
    directory.mkdir(parents=True, exist_ok=True)
    expected = schema_documents()
    for name in changed:
        path = directory / name
        if name in expected:
            path.write_text(expected[name], encoding="utf-8")
        else:
            path.unlink()
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m schemas.export", description=__doc__)
    parser.add_argument("--check", action="store_true", help="only report differences")
    parser.add_argument("--dir", type=Path, default=SCHEMA_DIR, help="schema folder")
    args = parser.parse_args(argv)
    if args.check:
        differ = differences(args.dir)
        if differ:
            print(f"JSON Schemas out of date in {args.dir}:", *differ, sep="\n  ")
            print(f"run: {FIX_COMMAND}")
            return 1
        print(f"JSON Schemas up to date ({len(schema_documents())} files)")
        return 0
    changed = write(args.dir)
    print(f"wrote {len(changed)} changed schema file(s) to {args.dir}", *changed, sep="\n  ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
