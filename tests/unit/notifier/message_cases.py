"""Every customer message kind, with every branch its text has: the contexts whose English
and Italian renderings are pinned in tests/fixtures/notifier/customer_messages.json."""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import product
from typing import get_args

from schemas.events import AccessMethod, AuthorizationRejectionReason, Outcome
from schemas.scope import Category
from services.notifier.templates.context import (
    Acknowledgement,
    ActionLine,
    BackupLine,
    Clarification,
    Completion,
    EngineerStep,
    Extension,
    FieldProblem,
    HardwareNotice,
    Queued,
    Rejection,
    ScopeNotIncluded,
    Started,
    UpdateContext,
)

T = "HD-42"
RESULTS = ("ok", "changed", "no_change_needed", "failed", "rolled_back", "skipped", "planned",
           "something_new")
TIMELINES = ("standard", "complex", "datacenter")


def message_cases() -> dict[str, UpdateContext]:
    cases: dict[str, UpdateContext] = {}
    for category in get_args(Category):
        for revision in (1, 2):
            cases[f"ack-{category}-r{revision}"] = Acknowledgement(
                ticket_id=T, revision=revision, category=category, initial_response_minutes=10)
        cases[f"scope-{category}"] = ScopeNotIncluded(ticket_id=T, category=category)
    problems = (FieldProblem(field="server.ip", message="not an IP address"),
                FieldProblem(field="credentials", message="missing"))
    reasons: tuple[AuthorizationRejectionReason, ...] = get_args(AuthorizationRejectionReason)
    cases["reject-problems"] = Rejection(ticket_id=T, problems=problems)
    cases["reject-reasons"] = Rejection(ticket_id=T, reasons=reasons)
    cases["reject-both"] = Rejection(ticket_id=T, problems=problems[:1], reasons=reasons[:1])
    cases["reject-none"] = Rejection(ticket_id=T)
    cases["clarify"] = Clarification(ticket_id=T, question="Which server?")
    cases["clarify-field"] = Clarification(ticket_id=T, question="Which user?",
                                           field="credentials")
    methods: tuple[AccessMethod, ...] = get_args(AccessMethod)
    for method, automated, timeline, dry in product(methods, (True, False), TIMELINES,
                                                   (False, True)):
        cases[f"started-{method}-{automated}-{timeline}-{dry}"] = Started(
            ticket_id=T, method=method, automated=automated, timeline=timeline, dry_run=dry)
    cases["extension-overdue"] = Extension(ticket_id=T, overdue=True)
    cases["extension-none"] = Extension(ticket_id=T)
    for timeline in TIMELINES:
        cases[f"extension-{timeline}"] = Extension(ticket_id=T, timeline=timeline)
    actions = tuple(ActionLine(step=f"Step {r}", command=f"systemctl status {r}", result=r)
                    for r in RESULTS)
    backups = (BackupLine(location="/root/os-intervention/HD-42-r1/etc/shadow",
                          description="the password file before the change"),)
    outcomes: tuple[Outcome, ...] = get_args(Outcome)
    for outcome in outcomes:
        cases[f"completion-{outcome}-bare"] = Completion(ticket_id=T, outcome=outcome)
        cases[f"completion-{outcome}-full"] = Completion(
            ticket_id=T, outcome=outcome, actions=actions, backups=backups,
            new_credentials_issued=True, recommendations=("Back up often.", "Update."),
            reason="step 'Restart' failed: exit 1", dry_run=False)
    cases["completion-dry-run"] = Completion(ticket_id=T, outcome="unresolved",
                                             actions=actions[-2:-1], dry_run=True,
                                             reason="Dry run: 1 change(s) planned, none made.")
    components = ("disk", "memory", "raid", "cpu", "psu", "other", "gpu")
    for component, severity, device in product(components, ("warning", "critical", "odd"),
                                               (None, "/dev/sda")):
        cases[f"hardware-{component}-{severity}-{device}"] = HardwareNotice(
            ticket_id=T, component=component, device=device, severity=severity)
    for method in methods:
        cases[f"engineer-{method}"] = EngineerStep(ticket_id=T, method=method)
    for position, minutes in ((1, 1), (12, 25)):
        cases[f"queued-{position}"] = Queued(
            ticket_id=T, position=position, minutes=minutes,
            expected_start=datetime(2026, 12, 6, 9, minutes, tzinfo=UTC))
    return cases
