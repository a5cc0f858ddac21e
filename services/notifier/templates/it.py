"""Messaggi in italiano per il cliente: pubblicati così come sono sul ticket dell'helpdesk."""

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
    "root_password_reset": "reset della password di root/amministratore",
    "network_recovery": "ripristino della configurazione firewall o di rete",
    "remote_access_restoration": "ripristino dell'accesso SSH/RDP",
    "boot_repair": "riparazione del boot loader",
    "filesystem_repair": "controllo e riparazione del filesystem",
    "service_restart": "riavvio o riconfigurazione di un servizio critico",
    "diagnostics": "diagnostica del sistema operativo",
    "software_installation": "installazione o configurazione di software",
    "application_troubleshooting": "risoluzione di problemi applicativi",
    "data_recovery": "recupero dati",
    "performance_tuning": "ottimizzazione delle prestazioni",
    "malware_removal": "rimozione malware e gestione incidenti",
}
METHODS: Final = {
    "ssh": "SSH",
    "windows_openssh": "OpenSSH/PowerShell su Windows",
    "rescue": "il sistema di rescue",
    "ipkvm": "la console IP-KVM",
    "vnc": "la console VNC",
    "datacenter": "un intervento in loco nel data center",
}
OUTCOMES: Final = {
    "resolved": "Risolto",
    "partially_resolved": "Risolto in parte",
    "unresolved": "Non risolto",
    "refused": "Non eseguito",
}
RESULTS: Final = {
    "ok": "eseguito",
    "changed": "modificato",
    "no_change_needed": "nessuna modifica necessaria",
    "failed": "non riuscito",
    "rolled_back": "annullato (ripristinato)",
    "skipped": "saltato",
    "planned": "pianificato (non eseguito)",
}
TIMELINES: Final = {
    "standard": "da 15 a 60 minuti",
    "complex": "da 1 a 4 ore",
    "datacenter": "più lunga del solito, perché serve un intervento nel data center",
}
REASONS: Final = {
    "account_not_vouched": "Non abbiamo potuto verificare da quale account proviene la "
    "richiesta. Apra di nuovo il ticket dall'area clienti dopo aver effettuato l'accesso.",
    "not_owner": "Il server non è registrato sul suo account e il suo account non è un "
    "contatto autorizzato. Apra il ticket dall'account proprietario del server.",
    "server_unknown": "Non abbiamo trovato un server corrispondente all'identificativo "
    "indicato. Verifichi l'indirizzo IP, l'ID o il nome del servizio.",
    "server_ambiguous": "L'identificativo corrisponde a più di un suo server. Indichi "
    "l'indirizzo IP o l'ID del servizio.",
    "authorization_missing": "Manca l'autorizzazione scritta all'intervento.",
    "authorization_not_explicit": "L'autorizzazione scritta deve accettare la responsabilità "
    "dei backup, la possibile interruzione del servizio e la clausola sulla perdita di dati.",
    "authorization_not_bound": "L'autorizzazione scritta non corrisponde a questa richiesta "
    "(ad esempio è troppo vecchia). La firmi di nuovo per questo ticket.",
    "wrong_department": "Gli interventi sul sistema operativo sono gestiti dal reparto "
    "Problemi Tecnici. Apra il ticket in quel reparto.",
    "channel_not_allowed": "Gli interventi non possono essere richiesti tramite live chat, "
    "che serve solo per consulenza. Apra un ticket dall'area clienti o via email.",
    "credentials_missing": "Per l'intervento ci servono un nome utente e una password o una "
    "chiave privata del server.",
    "scope_not_included": "La richiesta non rientra nel servizio di intervento incluso.",
    "revision_stale": "Abbiamo già ricevuto un aggiornamento più recente di questo ticket; "
    "questa versione precedente non è stata elaborata.",
}
COMPONENTS: Final = {
    "disk": "un disco", "memory": "la memoria (RAM)", "raid": "l'array RAID",
    "cpu": "il processore", "psu": "l'alimentatore", "other": "un componente hardware",
}
SEVERITIES: Final = {"warning": "segni di guasto imminente", "critical": "un guasto"}

AFTER_CARE: Final = (
    "Verifichi di poter accedere al server e che i suoi servizi funzionino come previsto.",
    "Cambi le password che ci ha comunicato per questo intervento.",
    "Controlli i log e la configurazione del server per eventuali anomalie.",
    "Se il problema persiste o si ripresenta, risponda su questo stesso ticket.",
)

SIGNATURE = "— Supporto Tecnico"


def _join(*parts: str) -> str:
    return "\n\n".join(p for p in parts if p) + "\n\n" + SIGNATURE


def render(context: UpdateContext) -> str:
    match context:
        case Acknowledgement():
            return _acknowledgement(context)
        case Rejection():
            return _rejection(context)
        case Clarification():
            field = f" (riguardo a: {context.field})" if context.field else ""
            return _join(
                f"Gentile cliente,\n\nper proseguire con il ticket {context.ticket_id} ci "
                f"serve un'ulteriore informazione{field}:",
                context.question,
                "Risponda su questo stesso ticket: riprenderemo appena riceviamo la risposta.",
            )
        case ScopeNotIncluded():
            return _join(
                f"Gentile cliente,\n\ngrazie per il ticket {context.ticket_id}. La sua "
                f"richiesta ({CATEGORIES[context.category]}) non rientra nel servizio di "
                "intervento sul sistema operativo incluso, quindi non abbiamo eseguito "
                "alcuna operazione sul server.",
                "È disponibile come servizio a pagamento. Per richiederlo, risponda a questo "
                "ticket chiedendo un preventivo: un tecnico la ricontatterà con ambito, prezzo "
                "e tempi prima di iniziare qualsiasi lavoro.",
            )
        case Started():
            how = "in modo automatico" if context.automated else "da un tecnico del supporto"
            dry = ("\n\nSi tratta di una prova (dry run): verificheremo soltanto cosa "
                   "andrebbe fatto, senza modificare nulla.") if context.dry_run else ""
            return _join(
                f"Gentile cliente,\n\nil lavoro sul ticket {context.ticket_id} è iniziato, "
                f"{how}, tramite {METHODS[context.method]}.{dry}",
                f"Durata prevista: {TIMELINES[context.timeline]}. Al termine pubblicheremo "
                "su questo ticket il riepilogo di tutte le operazioni.",
            )
        case Extension():
            return _extension(context)
        case Completion():
            return _completion(context)
        case HardwareNotice():
            device = f" ({context.device})" if context.device else ""
            return _join(
                f"Gentile cliente,\n\ndurante il lavoro sul ticket {context.ticket_id} abbiamo "
                f"rilevato {SEVERITIES.get(context.severity, context.severity)} riguardante "
                f"{COMPONENTS.get(context.component, context.component)}{device} del server.",
                "Abbiamo inoltrato la segnalazione al nostro team hardware, che seguirà la "
                "procedura per i guasti e la contatterà su questo ticket per l'eventuale "
                "sostituzione e il fermo necessario. Le consigliamo di verificare che i "
                "backup siano aggiornati.",
            )
        case EngineerStep():
            return _join(
                f"Gentile cliente,\n\nun tecnico del supporto sta ora lavorando sul ticket "
                f"{context.ticket_id} tramite {METHODS[context.method]}.",
                "Aggiorneremo il ticket appena questo passaggio sarà completato.",
            )
    raise TypeError(f"no Italian template for {type(context).__name__}")


def _acknowledgement(context: Acknowledgement) -> str:
    opening = (f"abbiamo ricevuto la sua richiesta sul ticket {context.ticket_id}"
               if context.revision == 1 else
               f"abbiamo ricevuto il suo aggiornamento sul ticket {context.ticket_id}")
    return _join(
        f"Gentile cliente,\n\ngrazie: {opening} ({CATEGORIES[context.category]}).",
        f"Un tecnico del supporto o la nostra procedura automatica la prenderà in carico "
        f"entro {context.initial_response_minutes} minuti. Gli interventi standard richiedono "
        "da 15 a 60 minuti e quelli complessi da 1 a 4 ore; se il suo richiede più tempo, ad "
        "esempio per un intervento nel data center, glielo comunicheremo qui.",
        "Ogni operazione sul server viene registrata e pubblicheremo un riepilogo su questo "
        "ticket.",
    )


def _rejection(context: Rejection) -> str:
    lines = [f"Gentile cliente,\n\nnon è stato possibile avviare l'intervento per il ticket "
             f"{context.ticket_id}:"]
    if context.problems:
        lines.append("\n".join(f"- {p.field}: {p.message}" for p in context.problems))
    reasons = [REASONS.get(r, r) for r in context.reasons]
    if reasons:
        lines.append("\n".join(f"- {r}" for r in reasons))
    lines.append("La preghiamo di correggere e di rispondere su questo stesso ticket: lo "
                 "elaboreremo di nuovo subito.")
    return _join(*lines)


def _extension(context: Extension) -> str:
    if context.overdue:
        body = ("L'intervento sta richiedendo più tempo del previsto. Un tecnico del supporto "
                "se ne sta occupando e aggiorneremo il ticket appena ci saranno novità.")
    else:
        timeline = TIMELINES[context.timeline or "complex"]
        body = (f"L'intervento richiede più tempo di uno standard: la durata prevista è ora "
                f"{timeline}. La terremo informata su questo ticket.")
    return _join(f"Gentile cliente,\n\nun aggiornamento sul ticket {context.ticket_id}.", body)


def _completion(context: Completion) -> str:
    parts = [f"Gentile cliente,\n\nl'intervento sul ticket {context.ticket_id} è concluso. "
             f"Esito: {OUTCOMES[context.outcome]}."]
    if context.dry_run:
        parts.append("Si è trattato di una prova (dry run): sul server non è stato modificato "
                     "nulla.")
    if context.reason:
        parts.append(f"Motivo: {context.reason}")
    if context.actions:
        parts.append("Cosa abbiamo fatto, in ordine:\n" + "\n".join(
            f"{i}. {a.step}: {a.command} — {RESULTS.get(a.result, a.result)}"
            for i, a in enumerate(context.actions, 1)))
    else:
        parts.append("Non è stata eseguita alcuna operazione sul server.")
    if context.backups:
        parts.append("Backup eseguiti prima delle modifiche:\n" + "\n".join(
            f"- {b.location}: {b.description}" for b in context.backups))
    if context.new_credentials_issued:
        parts.append("Sono state generate nuove credenziali. Per la sua sicurezza non sono "
                     "riportate qui: le trova nella sua area clienti.")
    if context.recommendations:
        parts.append("I nostri consigli:\n" + "\n".join(
            f"- {r}" for r in context.recommendations))
    parts.append("La invitiamo ora a:\n" + "\n".join(f"- {a}" for a in AFTER_CARE))
    return _join(*parts)
