"""Scope classification: which of the twelve categories a ticket describes.

Transparent on purpose: a table of English and Italian keywords per category, each with a
weight (3 = names the problem outright, 2 = strong hint, 1 = weak hint). A ticket's score
for a category is the sum of the weights of the distinct keywords found in its description
and error messages (accent-folded, lower-case, punctuation as spaces, whole words only).
The matched keywords are returned as evidence, so an engineer can see why.

Decision (``STRONG`` = 3, ``MARGIN`` = 2, ``OVERRIDE`` = 5):

- no category on the form: the best-scoring category; confidence ``high`` when its score is
  at least ``STRONG`` and beats the runner-up by ``MARGIN``, else ``low``. Nothing matched:
  ``diagnostics`` (an engineer looks first) with ``low`` confidence;
- a category on the form is the customer's explicit choice and is kept (``high``) unless the
  text *contradicts* it: the form's category matches no keyword while another category
  scores at least ``OVERRIDE`` (two strong keywords, e.g. "accidentally deleted" and
  "recover my data"). ``diagnostics`` on the form is contradicted only by a paid-only
  category: diagnosing any included symptom is exactly what it asks for;
- a contradicted form category is replaced by the text's when the text is clear (the
  ``STRONG``/``MARGIN`` rule), keeping the customer's choice in ``form_category``; when the
  text is ambiguous the form's choice is kept but marked ``low`` for an engineer.

Paid-only categories are classified like the others; their scope is ``not_included``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from schemas.scope import CATEGORIES, PAID_ONLY_CATEGORIES, Category
from services.intake.validation import fold

STRONG: Final = 3
MARGIN: Final = 2
OVERRIDE: Final = 5

Confidence = Literal["high", "low"]
Source = Literal["form", "classified"]

# category -> {keyword: weight}; English first, then Italian. Keywords are written as a
# customer would type them and normalised like the text, so "all'avvio" matches "all avvio".
KEYWORDS: Final[Mapping[Category, Mapping[str, int]]] = {
    "root_password_reset": {
        "root password": 3, "forgot password": 3, "forgot my password": 3,
        "forgotten password": 3, "lost password": 3, "lost the password": 3,
        "reset password": 3, "reset the password": 3, "password reset": 3,
        "administrator password": 3, "admin password": 2, "wrong password": 2,
        "password expired": 2, "password not accepted": 2, "authentication failure": 1,
        "access denied": 1, "permission denied": 1, "locked account": 2,
        "password dimenticata": 3, "dimenticato la password": 3, "password persa": 3,
        "reset della password": 3, "reimpostare la password": 3,
        "recuperare la password": 2, "password di root": 3, "password root": 3,
        "password di amministratore": 3, "password errata": 2, "password scaduta": 2,
        "accesso negato": 1,
    },
    "network_recovery": {
        "firewall": 2, "iptables": 3, "nftables": 3, "ufw": 3, "firewalld": 3,
        "unreachable": 2, "not reachable": 2, "no network": 3, "network down": 3,
        "network configuration": 3, "network interface": 2, "netplan": 3,
        "default gateway": 2, "lost connectivity": 3, "no connectivity": 3,
        "locked myself out": 2, "blocked myself": 2, "does not answer ping": 3,
        "no ping": 2, "ping": 1,
        "non raggiungibile": 2, "irraggiungibile": 2, "non risponde al ping": 3,
        "rete non funziona": 3, "configurazione di rete": 3, "scheda di rete": 2,
        "nessuna connettivita": 3, "bloccato fuori": 2, "regole del firewall": 3,
    },
    "remote_access_restoration": {
        "ssh": 1, "sshd": 3, "ssh service": 3, "ssh server": 3, "openssh": 2,
        "sshd config": 3, "port 22": 2, "connection refused": 2,
        "cannot connect via ssh": 3, "can t connect via ssh": 3, "ssh not working": 3,
        "ssh is down": 3, "rdp": 3, "remote desktop": 3, "host key": 2,
        "connection timed out": 1,
        "desktop remoto": 3, "connessione rifiutata": 2, "non riesco a connettermi": 2,
        "connessione ssh": 3, "accesso ssh": 3, "accesso remoto": 3, "servizio ssh": 3,
    },
    "boot_repair": {
        "grub": 3, "boot loader": 3, "bootloader": 3, "won t boot": 3,
        "does not boot": 3, "doesn t boot": 3, "not booting": 3, "boot failure": 3,
        "kernel panic": 3, "initramfs": 3, "grub rescue": 3, "no bootable device": 3,
        "bootmgr": 3, "windows boot manager": 3, "bcd": 2, "emergency mode": 2,
        "stuck at boot": 3, "boot": 1,
        "non si avvia": 3, "non parte piu": 2, "errore di avvio": 3,
        "bloccato all avvio": 3, "avvio": 1,
    },
    "filesystem_repair": {
        "fsck": 3, "filesystem": 2, "file system": 2, "read only file system": 3,
        "read only": 2, "corruption": 2, "corrupted": 1, "superblock": 3, "inode": 2,
        "xfs repair": 3, "chkdsk": 3, "ext4": 2, "bad blocks": 2, "cannot mount": 3,
        "structure needs cleaning": 3, "no space left": 2, "disk full": 2, "mount": 1,
        "filesystem corrotto": 3, "file system corrotto": 3, "sola lettura": 3,
        "disco pieno": 2, "spazio esaurito": 2, "errore del filesystem": 3,
        "partizione corrotta": 3, "montare": 1,
    },
    "service_restart": {
        "restart the service": 3, "restart service": 3, "service crashed": 3,
        "service down": 3, "service stopped": 3, "failed to start": 3,
        "inactive dead": 3, "not running": 2, "restart": 2, "systemctl": 2,
        "502 bad gateway": 2, "crashed": 1, "nginx": 1, "apache": 1, "mysql": 1,
        "mariadb": 1, "postgresql": 1, "php fpm": 1, "daemon": 1,
        "riavviare il servizio": 3, "riavvio del servizio": 3, "servizio bloccato": 3,
        "servizio fermo": 3, "servizio non parte": 3, "servizio non funziona": 2,
        "riavviare": 2,
    },
    "diagnostics": {
        "diagnose": 3, "diagnostics": 3, "diagnosis": 3, "investigate": 2,
        "check the server": 2, "find out why": 2, "what is wrong": 2,
        "unexpected reboot": 2, "rebooted by itself": 2, "logs": 1,
        "diagnosi": 3, "diagnostica": 3, "controllare il server": 2, "capire perche": 2,
        "riavvii improvvisi": 2, "si riavvia da solo": 2, "verificare": 1,
    },
    "software_installation": {
        "please install": 3, "install package": 3, "install the package": 3,
        "apt install": 3, "apt get install": 3, "yum install": 3, "dnf install": 3,
        "install": 2, "installation": 2, "package": 1, "configure": 1, "set up": 1,
        "installare": 3, "installazione": 3, "installa": 2, "pacchetto": 2,
        "pacchetti": 2, "configurare": 1,
    },
    "application_troubleshooting": {
        "wordpress": 3, "joomla": 3, "magento": 3, "drupal": 3, "prestashop": 3,
        "laravel": 3, "application error": 3, "php error": 3, "my code": 3,
        "plugin": 2, "cms": 2, "website error": 2, "500 internal server error": 2,
        "database query": 2, "mailbox": 2, "my website": 1,
        "errore dell applicazione": 3, "errore php": 3, "il mio sito": 1,
        "sito web": 1, "applicazione": 1,
    },
    "data_recovery": {
        "recover data": 3, "recover my data": 3, "data recovery": 3, "recover files": 3,
        "recover my files": 3, "deleted files": 3, "lost data": 3, "lost files": 3,
        "restore deleted": 3, "accidentally deleted": 3, "undelete": 3,
        "recover my database": 3, "restore from backup": 2,
        "recupero dati": 3, "recuperare i dati": 3, "recuperare i file": 3,
        "file cancellati": 3, "file eliminati": 3, "dati persi": 3, "ho cancellato": 3,
        "cancellato per errore": 3,
    },
    "performance_tuning": {
        "optimize": 3, "optimise": 3, "tuning": 3, "speed up": 3, "performance": 2,
        "very slow": 2, "high cpu": 2, "high load": 2, "high memory usage": 2,
        "slow website": 2, "slow": 1, "lag": 1,
        "prestazioni": 3, "ottimizzare": 3, "ottimizzazione": 3, "velocizzare": 3,
        "lento": 2, "lentissimo": 2, "carico elevato": 2, "cpu al 100": 2,
    },
    "malware_removal": {
        "malware": 3, "virus": 3, "hacked": 3, "compromised": 3, "infected": 3,
        "ransomware": 3, "trojan": 3, "rootkit": 3, "crypto miner": 3, "cryptominer": 3,
        "backdoor": 3, "intrusion": 3, "breach": 2, "phishing": 2,
        "suspicious process": 2,
        "hackerato": 3, "bucato": 2, "compromesso": 3, "infetto": 3, "intrusione": 3,
        "attacco": 2, "processo sospetto": 2,
    },
}

_PUNCTUATION = re.compile(r"[^\w]+")


def normalise(text: str) -> str:
    """Accent-folded, lower-case words separated by single spaces, padded with spaces so a
    keyword is found as ``" keyword "`` (whole words, no regex per keyword)."""
    words = _PUNCTUATION.sub(" ", fold(text).replace("_", " ")).split()
    return f" {' '.join(words)} "


_TABLE: Final[tuple[tuple[Category, tuple[tuple[str, str, int], ...]], ...]] = tuple(
    (
        category,
        tuple((keyword, normalise(keyword), weight) for keyword, weight in table.items()),
    )
    for category, table in KEYWORDS.items()
)
if {c for c, _ in _TABLE} != set(CATEGORIES):
    raise RuntimeError("classification keywords must cover exactly the twelve categories")


@dataclass(frozen=True, kw_only=True)
class Classification:
    category: Category
    source: Source
    confidence: Confidence
    form_category: Category | None = None
    """The customer's choice when the text overrode it."""
    evidence: Mapping[Category, tuple[str, ...]] = field(default_factory=dict)
    """Matched keywords by category, best first: why this category."""


def score(texts: Iterable[str]) -> dict[Category, tuple[int, tuple[str, ...]]]:
    """Each category's score and the keywords that produced it (only categories > 0)."""
    haystack = " ".join(normalise(t) for t in texts)
    out: dict[Category, tuple[int, tuple[str, ...]]] = {}
    for category, keywords in _TABLE:
        matched = [(kw, w) for kw, padded, w in keywords if padded in haystack]
        if matched:
            out[category] = (sum(w for _, w in matched), tuple(kw for kw, _ in matched))
    return out


def _clear(ranked: list[tuple[Category, int]]) -> bool:
    best = ranked[0][1]
    runner_up = ranked[1][1] if len(ranked) > 1 else 0
    return best >= STRONG and best - runner_up >= MARGIN


def classify(
    description: str, error_messages: Iterable[str] = (), form_category: Category | None = None
) -> Classification:
    """The ticket's category, where it came from and how sure intake is (module doc)."""
    scores = score([description, *error_messages])
    # Highest score first; ties in catalogue order, so the result never depends on dict order.
    ranked = sorted(
        ((c, s) for c, (s, _) in scores.items()), key=lambda cs: (-cs[1], CATEGORIES.index(cs[0]))
    )
    evidence = {c: scores[c][1] for c, _ in ranked}
    if form_category is not None:
        contradicted = (
            bool(ranked)
            and ranked[0][1] >= OVERRIDE
            and form_category not in scores
            and (form_category != "diagnostics" or ranked[0][0] in PAID_ONLY_CATEGORIES)
        )
        if not contradicted:
            return Classification(
                category=form_category, source="form", confidence="high", evidence=evidence
            )
        if not _clear(ranked):
            return Classification(
                category=form_category, source="form", confidence="low", evidence=evidence
            )
        return Classification(
            category=ranked[0][0], source="classified", confidence="high",
            form_category=form_category, evidence=evidence,
        )
    if not ranked:
        return Classification(category="diagnostics", source="classified", confidence="low")
    return Classification(
        category=ranked[0][0],
        source="classified",
        confidence="high" if _clear(ranked) else "low",
        evidence=evidence,
    )
