"""English customer messages: posted verbatim on the helpdesk ticket."""

from __future__ import annotations

from typing import Final

from services.notifier.templates.context import (
    Acknowledgement,
    Clarification,
    Completion,
    EngineerStep,
    Extension,
    HardwareNotice,
    Rejection,
    ScopeNotIncluded,
    Started,
    UpdateContext,
)

CATEGORIES: Final = {
    "root_password_reset": "root/administrator password reset",
    "network_recovery": "firewall or network configuration recovery",
    "remote_access_restoration": "SSH/RDP access restoration",
    "boot_repair": "boot loader repair",
    "filesystem_repair": "filesystem check and repair",
    "service_restart": "critical service restart or reconfiguration",
    "diagnostics": "operating system diagnostics",
    "software_installation": "software installation or configuration",
    "application_troubleshooting": "application-level troubleshooting",
    "data_recovery": "data recovery",
    "performance_tuning": "performance tuning",
    "malware_removal": "malware removal and incident response",
}
METHODS: Final = {
    "ssh": "SSH",
    "windows_openssh": "OpenSSH/PowerShell on Windows",
    "rescue": "the rescue system",
    "ipkvm": "the IP-KVM console",
    "vnc": "the VNC console",
    "datacenter": "on-site work in the data centre",
}
OUTCOMES: Final = {
    "resolved": "Resolved",
    "partially_resolved": "Partially resolved",
    "unresolved": "Not resolved",
    "refused": "Not performed",
}
RESULTS: Final = {
    "ok": "done",
    "changed": "changed",
    "no_change_needed": "no change needed",
    "failed": "failed",
    "rolled_back": "rolled back",
    "skipped": "skipped",
    "planned": "planned (not executed)",
}
TIMELINES: Final = {
    "standard": "15 to 60 minutes",
    "complex": "1 to 4 hours",
    "datacenter": "longer than usual, as it needs work in the data centre",
}
REASONS: Final = {
    "account_not_vouched": "We could not confirm which account this request comes from. "
    "Please open the ticket again from the client area while logged in.",
    "not_owner": "The server is not registered to your account, and your account is not an "
    "authorized contact for it. Please open the ticket from the account that owns the server.",
    "server_unknown": "We could not find a server matching the identifier you gave. Please "
    "check the IP address, service ID or service name.",
    "server_ambiguous": "The identifier matches more than one of your servers. Please give "
    "the server's IP address or service ID.",
    "authorization_missing": "The written authorization for the intervention is missing.",
    "authorization_not_explicit": "The written authorization must accept backup "
    "responsibility, possible service interruption and the data-loss disclaimer.",
    "authorization_not_bound": "The written authorization does not match this request (for "
    "example, it is too old). Please sign it again for this ticket.",
    "wrong_department": "OS interventions are handled by the Technical Issues department. "
    "Please open the ticket there.",
    "channel_not_allowed": "OS interventions cannot be requested through live chat, which is "
    "for consultation only. Please open a ticket from the client area or by email.",
    "credentials_missing": "We need a username and a password or private key for the "
    "server to perform the intervention.",
    "scope_not_included": "The request is outside the included OS intervention service.",
    "revision_stale": "A newer update of this ticket has already been received; this "
    "earlier version was not processed.",
}
COMPONENTS: Final = {
    "disk": "a disk", "memory": "the memory (RAM)", "raid": "the RAID array",
    "cpu": "the processor", "psu": "the power supply", "other": "a hardware component",
}
SEVERITIES: Final = {"warning": "early signs of failure", "critical": "a failure"}

AFTER_CARE: Final = (
    "Check that you can access your server and that your services work as expected.",
    "Change the passwords you shared with us for this intervention.",
    "Review the server's logs and configuration for anything unexpected.",
    "If the problem persists or comes back, reply on this same ticket.",
)

SIGNATURE = "— Technical Support"


def _join(*parts: str) -> str:
    return "\n\n".join(p for p in parts if p) + "\n\n" + SIGNATURE


def render(context: UpdateContext) -> str:
    match context:
        case Acknowledgement():
            return _acknowledgement(context)
        case Rejection():
            return _rejection(context)
        case Clarification():
            field = f" (about: {context.field})" if context.field else ""
            return _join(
                f"Hello,\n\nTo continue with ticket {context.ticket_id} we need one more "
                f"piece of information{field}:",
                context.question,
                "Please reply on this same ticket: we will continue as soon as you answer.",
            )
        case ScopeNotIncluded():
            return _join(
                f"Hello,\n\nThank you for ticket {context.ticket_id}. Your request "
                f"({CATEGORIES[context.category]}) is not part of the included OS "
                "intervention service, so we have not performed any action on your server.",
                "It is available as a paid service. To request it, reply on this ticket "
                "asking for a quote: a support engineer will follow up with the scope, price "
                "and timing before any work starts.",
            )
        case Started():
            how = "automatically" if context.automated else "by a support engineer"
            dry = ("\n\nThis is a dry run: we will only check what would be done, without "
                   "changing anything.") if context.dry_run else ""
            return _join(
                f"Hello,\n\nWork on ticket {context.ticket_id} has started, {how}, through "
                f"{METHODS[context.method]}.{dry}",
                f"Expected duration: {TIMELINES[context.timeline]}. We will post a summary of "
                "every action on this ticket when it is done.",
            )
        case Extension():
            return _extension(context)
        case Completion():
            return _completion(context)
        case HardwareNotice():
            device = f" ({context.device})" if context.device else ""
            return _join(
                f"Hello,\n\nWhile working on ticket {context.ticket_id} we found "
                f"{SEVERITIES.get(context.severity, context.severity)} of "
                f"{COMPONENTS.get(context.component, context.component)}{device} of your server.",
                "We have passed this to our hardware team, who will follow the hardware "
                "failure procedure and contact you on this ticket about any replacement and "
                "the downtime it needs. We recommend making sure your backups are current.",
            )
        case EngineerStep():
            return _join(
                f"Hello,\n\nA support engineer is now working on ticket {context.ticket_id} "
                f"through {METHODS[context.method]}.",
                "We will update this ticket as soon as this step is done.",
            )
    raise TypeError(f"no English template for {type(context).__name__}")


def _acknowledgement(context: Acknowledgement) -> str:
    opening = (f"we received your request on ticket {context.ticket_id}"
               if context.revision == 1 else
               f"we received your update on ticket {context.ticket_id}")
    return _join(
        f"Hello,\n\nThank you: {opening} ({CATEGORIES[context.category]}).",
        f"A support engineer or our automated procedure will take it up within "
        f"{context.initial_response_minutes} minutes. Standard interventions take 15 to 60 "
        "minutes and complex ones 1 to 4 hours; if yours needs longer, for example work in "
        "the data centre, we will tell you here.",
        "Every action on your server is logged, and we will post a summary on this ticket.",
    )


def _rejection(context: Rejection) -> str:
    lines = [f"Hello,\n\nWe could not start an intervention for ticket {context.ticket_id}:"]
    if context.problems:
        lines.append("\n".join(f"- {p.field}: {p.message}" for p in context.problems))
    reasons = [REASONS.get(r, r) for r in context.reasons]
    if reasons:
        lines.append("\n".join(f"- {r}" for r in reasons))
    lines.append("Please correct this and reply on this same ticket; we will process it "
                 "again right away.")
    return _join(*lines)


def _extension(context: Extension) -> str:
    if context.overdue:
        body = ("Your intervention is taking longer than the expected timeline. A support "
                "engineer is on it, and we will update this ticket as soon as there is news.")
    else:
        timeline = TIMELINES[context.timeline or "complex"]
        body = (f"Your intervention needs more time than a standard one: the expected "
                f"duration is now {timeline}. We will keep you informed on this ticket.")
    return _join(f"Hello,\n\nAn update on ticket {context.ticket_id}.", body)


def _completion(context: Completion) -> str:
    parts = [f"Hello,\n\nThe intervention on ticket {context.ticket_id} is complete. "
             f"Outcome: {OUTCOMES[context.outcome]}."]
    if context.dry_run:
        parts.append("This was a dry run: nothing was changed on your server.")
    if context.reason:
        parts.append(f"Why: {context.reason}")
    if context.actions:
        parts.append("What we did, in order:\n" + "\n".join(
            f"{i}. {a.step}: {a.command} — {RESULTS.get(a.result, a.result)}"
            for i, a in enumerate(context.actions, 1)))
    else:
        parts.append("No action was performed on your server.")
    if context.backups:
        parts.append("Backups made before changes:\n" + "\n".join(
            f"- {b.location}: {b.description}" for b in context.backups))
    if context.new_credentials_issued:
        parts.append("New credentials were issued. For your security they are not written "
                     "here: you will find them in your client area.")
    if context.recommendations:
        parts.append("Our recommendations:\n" + "\n".join(
            f"- {r}" for r in context.recommendations))
    parts.append("Please now:\n" + "\n".join(f"- {a}" for a in AFTER_CARE))
    return _join(*parts)
