"""Long first-run steps say what they do, where their log is and how long they have run."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest

from services.runtime.announce import announced


def test_a_long_step_names_itself_and_its_log_then_reports_elapsed_time() -> None:
    out = io.StringIO()
    with announced("kafka: fetching jars", log=Path("/var/log/x.log"), expect="about 1 min",
                   every=0.05, out=out):
        # The step lasts until two progress lines came (bounded: a loaded machine schedules
        # the ticker late, which must not fail the test, only slow it).
        deadline = time.monotonic() + 10
        while out.getvalue().count("s elapsed") < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    lines = out.getvalue().splitlines()
    assert lines[0] == ("kafka: fetching jars (first run only, usually about 1 min); "
                        "log: /var/log/x.log")
    ticks = [line for line in lines if "s elapsed" in line]
    assert len(ticks) >= 2
    assert lines[-1].startswith("  kafka: fetching jars: done in ")


def test_a_failing_step_is_not_reported_done() -> None:
    out = io.StringIO()
    with pytest.raises(RuntimeError), announced("ferretdb: build", log=None, expect="2 min",
                                                every=10, out=out):
        raise RuntimeError("go build failed")
    assert "done" not in out.getvalue()
    assert "log:" not in out.getvalue()
