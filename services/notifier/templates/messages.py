"""The customer messages, written once: English source texts in gettext's convention.

Every text a customer reads is a gettext message here — paragraphs with ``str.format``
fields (``{ticket_id}``), and term tables (categories, access methods, outcomes, ...) under
a message context naming the table. English is the source language; a translation is one
catalogue file per language (``locale/<language>.po``, see :mod:`services.notifier.
templates.catalogues`), so a reviewer reads a message the way the customer will and a new
language costs one file, not a copy of this logic.

Pure: an allow-listed context in (:mod:`.context`), the text the helpdesk posts verbatim out.
"""

from __future__ import annotations

from collections.abc import Mapping
from gettext import NullTranslations
from typing import Final

from services.notifier.templates.context import (
    Acknowledgement,
    Clarification,
    Completion,
    EngineerStep,
    Extension,
    HardwareNotice,
    Queued,
    Rejection,
    ScopeNotIncluded,
    Started,
    UpdateContext,
)


def N_(text: str) -> str:  # gettext's name: "translated where it is used"
    """Mark ``text`` for the catalogues without translating it here."""
    return text


CATEGORIES: Final = {
    "root_password_reset": N_("root/administrator password reset"),
    "network_recovery": N_("firewall or network configuration recovery"),
    "remote_access_restoration": N_("SSH/RDP access restoration"),
    "boot_repair": N_("boot loader repair"),
    "filesystem_repair": N_("filesystem check and repair"),
    "service_restart": N_("critical service restart or reconfiguration"),
    "diagnostics": N_("operating system diagnostics"),
    "software_installation": N_("software installation or configuration"),
    "application_troubleshooting": N_("application-level troubleshooting"),
    "data_recovery": N_("data recovery"),
    "performance_tuning": N_("performance tuning"),
    "malware_removal": N_("malware removal and incident response"),
}
METHODS: Final = {
    "ssh": N_("SSH"),
    "windows_openssh": N_("OpenSSH/PowerShell on Windows"),
    "rescue": N_("the rescue system"),
    "ipkvm": N_("the IP-KVM console"),
    "vnc": N_("the VNC console"),
    "datacenter": N_("on-site work in the data centre"),
}
OUTCOMES: Final = {
    "resolved": N_("Resolved"),
    "partially_resolved": N_("Partially resolved"),
    "unresolved": N_("Not resolved"),
    "refused": N_("Not performed"),
}
RESULTS: Final = {
    "ok": N_("done"),
    "changed": N_("changed"),
    "no_change_needed": N_("no change needed"),
    "failed": N_("failed"),
    "rolled_back": N_("rolled back"),
    "skipped": N_("skipped"),
    "planned": N_("planned (not executed)"),
}
TIMELINES: Final = {
    "standard": N_("15 to 60 minutes"),
    "complex": N_("1 to 4 hours"),
    "datacenter": N_("longer than usual, as it needs work in the data centre"),
}
REASONS: Final = {
    "account_not_vouched": N_("We could not confirm which account this request comes from. "
                              "Please open the ticket again from the client area while "
                              "logged in."),
    "not_owner": N_("The server is not registered to your account, and your account is not "
                    "an authorized contact for it. Please open the ticket from the account "
                    "that owns the server."),
    "server_unknown": N_("We could not find a server matching the identifier you gave. "
                         "Please check the IP address, service ID or service name."),
    "server_ambiguous": N_("The identifier matches more than one of your servers. Please "
                           "give the server's IP address or service ID."),
    "authorization_missing": N_("The written authorization for the intervention is "
                                "missing."),
    "authorization_not_explicit": N_("The written authorization must accept backup "
                                     "responsibility, possible service interruption and the "
                                     "data-loss disclaimer."),
    "authorization_not_bound": N_("The written authorization does not match this request "
                                  "(for example, it is too old). Please sign it again for "
                                  "this ticket."),
    "wrong_department": N_("OS interventions are handled by the Technical Issues department. "
                           "Please open the ticket there."),
    "channel_not_allowed": N_("OS interventions cannot be requested through live chat, "
                              "which is for consultation only. Please open a ticket from "
                              "the client area or by email."),
    "credentials_missing": N_("We need a username and a password or private key for the "
                              "server to perform the intervention."),
    "scope_not_included": N_("The request is outside the included OS intervention service."),
    "revision_stale": N_("A newer update of this ticket has already been received; this "
                         "earlier version was not processed."),
}
COMPONENTS: Final = {
    "disk": N_("a disk"), "memory": N_("the memory (RAM)"), "raid": N_("the RAID array"),
    "cpu": N_("the processor"), "psu": N_("the power supply"),
    "other": N_("a hardware component"),
}
SEVERITIES: Final = {"warning": N_("early signs of failure"), "critical": N_("a failure")}
AFTER_CARE: Final = (
    N_("Check that you can access your server and that your services work as expected."),
    N_("Change the passwords you shared with us for this intervention."),
    N_("Review the server's logs and configuration for anything unexpected."),
    N_("If the problem persists or comes back, reply on this same ticket."),
)
# The message context of each table in the catalogues: one English word may translate
# differently in two tables.
TERMS: Final[Mapping[str, Mapping[str, str]]] = {
    "category": CATEGORIES, "method": METHODS, "outcome": OUTCOMES, "result": RESULTS,
    "timeline": TIMELINES, "reason": REASONS, "component": COMPONENTS,
    "severity": SEVERITIES,
}


class Messages:
    """The customer messages in one language (``translations``: its compiled catalogue;
    ``NullTranslations`` for the English source)."""

    def __init__(self, translations: NullTranslations) -> None:
        self._t = translations

    def text(self, message: str, **fields: object) -> str:
        return self._t.gettext(message).format(**fields)

    def term(self, table: str, key: str) -> str:
        """A table's entry, or ``key`` itself for a value the table does not know yet."""
        source = TERMS[table].get(key)
        return key if source is None else self._t.pgettext(table, source)

    def _join(self, *parts: str) -> str:
        return "\n\n".join(p for p in parts if p) + "\n\n" + self.text("— Technical Support")

    def render(self, context: UpdateContext) -> str:
        t, term = self.text, self.term
        match context:
            case Acknowledgement():
                return self._acknowledgement(context)
            case Rejection():
                return self._rejection(context)
            case Clarification():
                field = t(" (about: {field})", field=context.field) if context.field else ""
                return self._join(
                    t("Hello,\n\nTo continue with ticket {ticket_id} we need one more piece "
                      "of information{field}:", ticket_id=context.ticket_id, field=field),
                    context.question,
                    t("Please reply on this same ticket: we will continue as soon as you "
                      "answer."),
                )
            case ScopeNotIncluded():
                return self._join(
                    t("Hello,\n\nThank you for ticket {ticket_id}. Your request ({category}) "
                      "is not part of the included OS intervention service, so we have not "
                      "performed any action on your server.", ticket_id=context.ticket_id,
                      category=term("category", context.category)),
                    t("It is available as a paid service. To request it, reply on this ticket "
                      "asking for a quote: a support engineer will follow up with the scope, "
                      "price and timing before any work starts."),
                )
            case Started():
                how = t("automatically") if context.automated else t("by a support engineer")
                dry = t("\n\nThis is a dry run: we will only check what would be done, without "
                        "changing anything.") if context.dry_run else ""
                return self._join(
                    t("Hello,\n\nWork on ticket {ticket_id} has started, {how}, through "
                      "{method}.{dry}", ticket_id=context.ticket_id, how=how,
                      method=term("method", context.method), dry=dry),
                    t("Expected duration: {timeline}. We will post a summary of every action "
                      "on this ticket when it is done.",
                      timeline=term("timeline", context.timeline)),
                )
            case Queued():
                return self._join(
                    t("Hello,\n\nWe have received and verified your request on ticket "
                      "{ticket_id}. All our automated workers are busy right now, so your "
                      "intervention is queued: it is number {position} in line.",
                      ticket_id=context.ticket_id, position=context.position),
                    t("It is expected to start in about {minutes} minutes (around {time} "
                      "UTC). This is an estimate; we will post here when the work starts, "
                      "and a summary of every action when it is done.",
                      minutes=context.minutes,
                      time=context.expected_start.strftime("%H:%M")),
                )
            case Extension():
                return self._extension(context)
            case Completion():
                return self._completion(context)
            case HardwareNotice():
                device = f" ({context.device})" if context.device else ""
                return self._join(
                    t("Hello,\n\nWhile working on ticket {ticket_id} we found {severity} of "
                      "{component}{device} of your server.", ticket_id=context.ticket_id,
                      severity=term("severity", context.severity),
                      component=term("component", context.component), device=device),
                    t("We have passed this to our hardware team, who will follow the hardware "
                      "failure procedure and contact you on this ticket about any replacement "
                      "and the downtime it needs. We recommend making sure your backups are "
                      "current."),
                )
            case EngineerStep():
                return self._join(
                    t("Hello,\n\nA support engineer is now working on ticket {ticket_id} "
                      "through {method}.", ticket_id=context.ticket_id,
                      method=term("method", context.method)),
                    t("We will update this ticket as soon as this step is done."),
                )
        raise TypeError(f"no template for {type(context).__name__}")

    def _acknowledgement(self, context: Acknowledgement) -> str:
        t = self.text
        opening = (t("we received your request on ticket {ticket_id}",
                     ticket_id=context.ticket_id) if context.revision == 1 else
                   t("we received your update on ticket {ticket_id}",
                     ticket_id=context.ticket_id))
        return self._join(
            t("Hello,\n\nThank you: {opening} ({category}).", opening=opening,
              category=self.term("category", context.category)),
            t("A support engineer or our automated procedure will take it up within "
              "{minutes} minutes. Standard interventions take 15 to 60 minutes and complex "
              "ones 1 to 4 hours; if yours needs longer, for example work in the data centre, "
              "we will tell you here.", minutes=context.initial_response_minutes),
            t("Every action on your server is logged, and we will post a summary on this "
              "ticket."),
        )

    def _rejection(self, context: Rejection) -> str:
        t = self.text
        lines = [t("Hello,\n\nWe could not start an intervention for ticket {ticket_id}:",
                   ticket_id=context.ticket_id)]
        if context.problems:
            lines.append("\n".join(f"- {p.field}: {p.message}" for p in context.problems))
        if context.reasons:
            lines.append("\n".join(f"- {self.term('reason', r)}" for r in context.reasons))
        lines.append(t("Please correct this and reply on this same ticket; we will process it "
                       "again right away."))
        return self._join(*lines)

    def _extension(self, context: Extension) -> str:
        t = self.text
        if context.overdue:
            body = t("Your intervention is taking longer than the expected timeline. A support "
                     "engineer is on it, and we will update this ticket as soon as there is "
                     "news.")
        else:
            body = t("Your intervention needs more time than a standard one: the expected "
                     "duration is now {timeline}. We will keep you informed on this ticket.",
                     timeline=self.term("timeline", context.timeline or "complex"))
        return self._join(t("Hello,\n\nAn update on ticket {ticket_id}.",
                            ticket_id=context.ticket_id), body)

    def _completion(self, context: Completion) -> str:
        t, term = self.text, self.term
        parts = [t("Hello,\n\nThe intervention on ticket {ticket_id} is complete. Outcome: "
                   "{outcome}.", ticket_id=context.ticket_id,
                   outcome=term("outcome", context.outcome))]
        if context.dry_run:
            parts.append(t("This was a dry run: nothing was changed on your server."))
        if context.reason:
            parts.append(t("Why: {reason}", reason=context.reason))
        if context.actions:
            parts.append(t("What we did, in order:") + "\n" + "\n".join(
                f"{i}. {a.step}: {a.command} — {term('result', a.result)}"
                for i, a in enumerate(context.actions, 1)))
        else:
            parts.append(t("No action was performed on your server."))
        if context.backups:
            parts.append(t("Backups made before changes:") + "\n" + "\n".join(
                f"- {b.location}: {b.description}" for b in context.backups))
        if context.new_credentials_issued:
            parts.append(t("New credentials were issued. For your security they are not "
                           "written here: you will find them in your client area."))
        if context.recommendations:
            parts.append(t("Our recommendations:") + "\n" + "\n".join(
                f"- {r}" for r in context.recommendations))
        parts.append(t("Please now:") + "\n" + "\n".join(
            f"- {self._t.pgettext('after-care', a)}" for a in AFTER_CARE))
        return self._join(*parts)
