"""The outcome of a ticket revision and the procedure's after-care advice: pure functions.

Outcomes are best effort and say what happened, not what was hoped for: ``resolved`` when
every step did what it was meant to (or found nothing to do), ``partially_resolved`` when
something changed but not everything succeeded (or a hardware fault was found),
``unresolved`` when nothing useful changed, ``refused`` when the executor would not act.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from schemas.events import AccessMethod, Outcome
from services.executor import hardware
from services.executor.hardware import Escalation
from services.executor.rescue.runbooks import INCIDENTAL_STEPS
from services.executor.runbooks.diagnostics import evidence, findings
from services.executor.runbooks.model import BackupNote, StepResult
from services.executor.runbooks.results import ActionRecord, RunResult, StepOutcome

VERIFY_ACCESS = "Check that you can log in and that your services work as expected."
REVIEW = ("Review the action summary on this ticket, and your system logs and configuration, "
          "for anything unexpected.")
CHANGE_SHARED = ("Change the password of the account you shared with us for this ticket now "
                 "that the work is done.")
NEW_CREDENTIALS = ("Your new password is waiting in your account area (never on the ticket): "
                   "log in with it and then change it to one only you know.")
HARDWARE = ("A hardware fault was found and handed to our data-centre team under the "
            "hardware-failure procedure. Back up your data now.")
DRY_RUN = "This was a dry run: nothing was changed. The planned changes are listed above."


@dataclass(frozen=True, kw_only=True)
class Verdict:
    outcome: Outcome
    reason: str | None


def decide_outcome(run: RunResult, escalations: Sequence[Escalation], *,
                   dry_run: bool, incidental: Collection[str] = ()) -> Verdict:
    """``incidental`` names steps whose changes fix nothing by themselves (a reboot into the
    rescue system, a mount, a backup): they do not make a failed run "partially resolved"."""
    results = [s.result for s in run.steps]
    changed = sum(1 for s in run.steps if s.result == "changed" and s.name not in incidental)
    failures = [s for s in run.steps if s.result in ("failed", "rolled_back")]
    planned = results.count("planned")
    critical = [e for e in escalations if e.severity == "critical"]
    if dry_run and planned:
        return Verdict(outcome="unresolved",
                       reason=f"Dry run: {planned} change(s) planned, none made.")
    if failures:
        first = failures[0]
        why = f"step '{first.action.step}' {first.result.replace('_', ' ')}: {first.reason}"
        if changed:
            return Verdict(outcome="partially_resolved", reason=why)
        return Verdict(outcome="unresolved", reason=why)
    if critical:
        parts = ", ".join(f"{e.component} {e.device}" if e.device else e.component
                          for e in critical)
        return Verdict(outcome="partially_resolved",
                       reason=f"Hardware fault found and escalated: {parts}.")
    return Verdict(outcome="resolved", reason=None)


def recommendations(*, credentials_shared: bool, new_credentials: bool, hardware: bool,
                    dry_run: bool, findings: Iterable[str] = ()) -> tuple[str, ...]:
    """The procedure's after-care list: verify access, change passwords, review logs and
    configuration — plus what this run found."""
    advice = [VERIFY_ACCESS]
    if dry_run:
        advice.append(DRY_RUN)
    if new_credentials:
        advice.append(NEW_CREDENTIALS)
    if credentials_shared:
        advice.append(CHANGE_SHARED)
    if hardware:
        advice.append(HARDWARE)
    advice.extend(findings)
    advice.append(REVIEW)
    return tuple(dict.fromkeys(a[:2000] for a in advice))[:50]


def backups_advice(backups: Sequence[BackupNote]) -> list[str]:
    """Where the copies of what changed are, so the customer can review or restore them."""
    if not backups:
        return []
    places = sorted({b.location.split(" (", 1)[0].rsplit("/", 1)[0] for b in backups})
    return [f"Copies of everything changed were kept on your server ({', '.join(places)}); "
            "the action summary lists each. Review them, and delete them once you are "
            "satisfied."]


def default_advice() -> tuple[str, ...]:
    """After-care for a revision closed without running anything on the server."""
    return recommendations(credentials_shared=True, new_credentials=False, hardware=False,
                           dry_run=False)


def finish_run(run: RunResult, *, dry_run: bool, rescue: bool,
               ) -> tuple[list[Escalation], Verdict, tuple[str, ...]]:
    """A finished runbook run: the hardware faults its facts show, the outcome, the advice.
    Rescue runs do not count getting in and out of the rescue system as a repair."""
    found = hardware.escalations(evidence(run.facts))
    verdict = decide_outcome(run, found, dry_run=dry_run,
                             incidental=INCIDENTAL_STEPS if rescue else ())
    advice = recommendations(
        credentials_shared=True, new_credentials=run.new_credentials_issued,
        hardware=bool(found), dry_run=dry_run,
        findings=[*findings(run.facts), *backups_advice(run.backups)])
    return found, verdict, advice


@dataclass(frozen=True, kw_only=True)
class Completion:
    outcome: Outcome
    reason: str | None
    access_method: AccessMethod | None
    run: RunResult
    advice: tuple[str, ...]


def manual_completion(record: Mapping[str, Any], *,
                      status: Literal["done", "failed", "timed_out"],
                      report: Mapping[str, Any], before: RunResult, elapsed_ms: int,
                      deadline: str = "?") -> Completion:
    """The completion of a revision an engineer worked on: the automation's steps before
    the hand-over, then the engineer's step as reported (or not, by the deadline)."""
    method = record.get("method")
    title = str(record.get("title") or record.get("step") or "manual step")
    changed = any(s.result == "changed" for s in before.steps)
    result: StepResult
    outcome: Outcome
    reason: str | None
    if status == "timed_out":
        result, outcome = "failed", "partially_resolved" if changed else "unresolved"
        command = f"no engineer reported by the deadline {deadline}"
        reason = (f"No engineer reported on manual step {record.get('step_id')} ({title}) "
                  f"by its deadline {deadline}; the ticket is back with the support team, "
                  "who follow up with you.")
    elif status == "done":
        result, outcome, reason = "changed", "resolved", None
        command = engineer_line(report, str(method))
    else:
        result, outcome = "failed", "partially_resolved" if changed else "unresolved"
        command = engineer_line(report, str(method))
        reason = (f"The engineer reported manual step {record.get('step_id')} ({title}) as "
                  "failed" + (f": {report.get('notes')}" if report.get("notes") else "."))
    manual = StepOutcome(index=-1, name="manual", result=result, reason=reason, facts={},
                         action=ActionRecord(step=f"{title} (engineer, {method})",
                                             command=command, exit_status=None,
                                             duration_ms=elapsed_ms, result=result))
    run = RunResult(steps=(*before.steps, manual), facts=before.facts)
    advice = recommendations(credentials_shared=True,
                             new_credentials=run.new_credentials_issued, hardware=False,
                             dry_run=False,
                             findings=[*findings(run.facts), *backups_advice(run.backups)])
    return Completion(outcome=outcome, reason=reason, access_method=method, run=run,
                      advice=advice)


def one_line(text: str) -> str:
    return " ".join(text.split()) or "-"


def engineer_line(report: Mapping[str, Any], method: str) -> str:
    who = report.get("display_name") or report.get("engineer_id") or "an engineer"
    notes = one_line(str(report.get("notes") or "")) if report.get("notes") else ""
    line = f"reported {report.get('status')} by {who} via {report.get('channel')} ({method})"
    return f"{line}: {notes}" if notes else line
