"""The executor service with a no-op diagnostics runbook, for ``bench_pipeline.py``.

Run as ``python bench/noop_executor.py`` with the executor's usual environment. Everything
is the real executor — signed-verdict check, claim, SSH probe and access decision, the
engine, the journal, the outbox, the audit, InterventionStarted/-Completed — except that the
diagnostics runbook has one step that runs nothing, so the benchmark measures the pipeline
and not the ~15 commands of real diagnostics (``bench_executor.py`` measures those).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.executor.runbooks import RUNBOOKS
from services.executor.runbooks.diagnostics import DiagnosticsParams
from services.executor.runbooks.model import Platform, Runbook, Step


def _steps(params: DiagnosticsParams, platform: Platform) -> tuple[Step[DiagnosticsParams], ...]:
    return (Step(name="noop", title="Nothing to do (benchmark)"),)


NOOP = Runbook(name="diagnostics", category="diagnostics", title="No-op (benchmark)",
               platforms=frozenset({"linux", "windows"}), params=DiagnosticsParams,
               build=_steps, needs_root=False)


def main() -> None:
    catalogue: dict[str, Runbook[Any]] = RUNBOOKS  # type: ignore[assignment]
    catalogue["diagnostics"] = NOOP  # the intervention module looks runbooks up by name
    from services.executor.__main__ import main as run_executor

    run_executor()


if __name__ == "__main__":
    main()
