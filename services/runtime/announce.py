"""Progress for the long first-run steps of the local stack and the demo.

A newcomer's first ``intervene up`` fetches the Kafka broker from Maven Central (about a
minute) and builds FerretDB with Go (about two); the demo's first run builds a disk image.
Silence there looks like a hang, so each such step says what it does, where its log is, how
long it has run every ten seconds, and when it is done.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def announced(what: str, *, log: Path | None, expect: str, every: float = 10.0,
              out: IO[str] | None = None) -> Iterator[None]:
    """Say on stderr (or ``out``) what a long first-run step does, then how long it has run
    every ``every`` seconds, then that it finished. ``expect`` is its usual duration, ``log``
    where its output goes (None: it has none of its own). Nothing more is said on failure:
    the caller's error names the log."""
    stream = out or sys.stderr
    where = f"; log: {log}" if log is not None else ""
    stream.write(f"{what} (first run only, usually {expect}){where}\n")
    stream.flush()
    began = time.monotonic()
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(every):
            stream.write(f"  ... {what}: {time.monotonic() - began:.0f} s elapsed\n")
            stream.flush()

    ticker = threading.Thread(target=tick, name="progress", daemon=True)
    ticker.start()
    try:
        yield
    finally:
        stop.set()
        ticker.join()
    stream.write(f"  {what}: done in {time.monotonic() - began:.0f} s\n")
    stream.flush()
