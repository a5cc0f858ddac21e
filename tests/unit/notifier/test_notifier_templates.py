"""Customer messages: every update kind renders in English and Italian, and none carries a
secret or a field not meant for the customer."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import get_args

import pytest
from notifier_factories import (
    PASSWORD,
    acknowledged,
    auth_rejected,
    clarification,
    completed,
    hardware,
    manual_step,
    queued,
    rejected,
    started,
    step_completed,
    submitted,
)

from schemas.events import Event, TicketUpdateKind
from services.notifier.sla import fact_of
from services.notifier.templates import chat, render
from services.notifier.templates.context import Extension, UpdateContext
from services.notifier.updates import (
    contexts_for,
    customer_updates,
    overdue_update,
    queued_update,
)

LANGUAGES = ("en", "it")


def render_en(context: UpdateContext) -> str:
    return render(context, "en")


def render_it(context: UpdateContext) -> str:
    return render(context, "it")


def canary() -> str:
    return f"CANARY{uuid.uuid4().hex[:10]}"


# (event built with a marker in every free-text field, whether that text is for the customer)
Case = tuple[str, Callable[[str], Event], bool]
CASES: list[Case] = [
    # The customer's own description, errors, parameters, username, authorization text and
    # signer stay out of every update: they could hold a pasted password.
    ("TicketSubmitted", lambda m: submitted(text=m), False),
    ("TicketSubmitted paid-only", lambda m: submitted(text=m, category="data_recovery"), False),
    ("TicketRejected", lambda m: rejected(text=m), True),  # field errors are for the customer
    ("AuthorizationRejected", lambda m: auth_rejected(submitted(), text=m), False),  # details
    ("ClarificationRequested", lambda m: clarification(submitted(), text=m), True),
    ("InterventionStarted", lambda m: started(submitted(), text=m), False),  # reason, runbook
    ("ManualStepRequested", lambda m: manual_step(submitted(), text=m), False),
    ("InterventionCompleted", lambda m: completed(submitted(), text=m, outcome="unresolved"),
     True),  # actions, backups, recommendations and reason are the customer's summary
    ("HardwareEscalated", lambda m: hardware(submitted(), text=m), False),  # evidence
    ("EngineerAcknowledged", lambda m: acknowledged(submitted(), uuid.uuid4(), text=m), False),
    ("ManualStepCompleted", lambda m: step_completed(
        submitted(), manual_step(submitted()), text=m), False),  # engineer's notes
]


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize(("name", "build", "for_customer"), CASES, ids=[c[0] for c in CASES])
def test_updates_carry_only_what_is_meant_for_the_customer(
    name: str, build: Callable[[str], Event], for_customer: bool, language: str
) -> None:
    marker = canary()
    event = build(marker)
    if hasattr(event, "language"):
        event = event.model_copy(update={"language": language})
    updates = customer_updates(event, language=language, extended_to="datacenter")  # type: ignore[arg-type]
    text = "\n".join(u.message for u in updates)
    assert PASSWORD not in text
    for secret in _sealed_values(event):
        assert secret not in text
    if for_customer:
        assert marker in text
    else:
        assert marker not in text
    assert all(u.language == language for u in updates)


def _sealed_values(event: Event) -> list[str]:
    credentials = getattr(event, "credentials", None)
    if credentials is None:
        return []
    return [credentials.sealed.ciphertext, credentials.username]


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_update_kind_renders_in_both_languages(language: str) -> None:
    ticket = submitted(language=language)
    events: list[Event] = [
        ticket, submitted(category="malware_removal", language=language),
        rejected(language=language), auth_rejected(ticket), clarification(ticket),
        started(ticket, timeline="complex"), manual_step(ticket, method="datacenter"),
        completed(ticket), hardware(ticket),
    ]
    rendered: dict[str, str] = {}
    for event in events:
        for update in customer_updates(event, language=language, extended_to="complex"):  # type: ignore[arg-type]
            rendered[update.kind] = update.message
    overdue = overdue_update(ticket.ticket_id, language)  # type: ignore[arg-type]
    assert overdue.kind == "extension"
    waiting = fact_of(queued(ticket))
    assert waiting is not None
    notice = queued_update(ticket.ticket_id, language, waiting, waiting.at)  # type: ignore[arg-type]
    rendered[notice.kind] = notice.message
    assert set(rendered) == set(get_args(TicketUpdateKind))
    for kind, message in rendered.items():
        assert ticket.ticket_id in message or kind in ("rejection", "scope_not_included"), kind
        assert "{" not in message, (kind, message)
        assert "None" not in message, (kind, message)
        assert message.endswith("Technical Support" if language == "en" else "Supporto Tecnico")


def test_italian_and_english_say_the_same_things() -> None:
    ticket = submitted()
    for event in (ticket, completed(ticket), clarification(ticket), hardware(ticket)):
        for context in contexts_for(event):
            english, italian = render_en(context), render_it(context)
            assert english != italian
            assert ticket.ticket_id in english
            assert ticket.ticket_id in italian
    assert render_en(Extension(ticket_id="HD-1", overdue=True)) != render_en(
        Extension(ticket_id="HD-1", timeline="complex"))


def test_completion_summary_lists_actions_in_order_with_after_care_and_no_credentials() -> None:
    ticket = submitted()
    message = customer_updates(completed(ticket, text="x"), language="en")[0].message
    assert "1. step x: command x — changed" in message
    assert "/root/backup-x: backup x" in message
    assert "client area" in message  # where the new credentials wait
    assert "Change the passwords" in message
    assert "reply on this same ticket" in message


def test_paid_only_scope_is_explained_once_not_again_as_a_refusal() -> None:
    paid = submitted(category="data_recovery")
    assert [u.kind for u in customer_updates(paid)] == ["scope_not_included"]
    assert customer_updates(auth_rejected(paid, reasons=("scope_not_included",))) == []
    both = customer_updates(auth_rejected(paid, reasons=("scope_not_included", "not_owner")))
    assert [u.kind for u in both] == ["rejection"]


def test_internal_events_tell_the_customer_nothing() -> None:
    ticket = submitted()
    assert customer_updates(acknowledged(ticket, ticket.event_id)) == []
    assert customer_updates(step_completed(ticket, manual_step(ticket))) == []


def test_engineer_chat_texts_never_carry_credentials_or_the_customers_free_text() -> None:
    marker = canary()
    ticket = submitted(text=marker, confidence="low")
    text = chat.new_ticket(ticket)
    assert ticket.ticket_id in text
    assert marker not in text.replace(f"web-{marker}", "")  # the server name is shown
    assert PASSWORD not in text
    assert ticket.credentials.sealed.ciphertext not in text
    assert "Classification needs a check" in text
    step_text = chat.manual_step(manual_step(ticket, text=marker))
    assert f"instruction {marker}" in step_text  # engineers need the instructions
    assert PASSWORD not in step_text
