"""Scope classification from the ticket's words, in English and Italian."""

from __future__ import annotations

import pytest

from schemas import CATEGORIES, PAID_ONLY_CATEGORIES, Category, scope_of
from services.intake.classification import KEYWORDS, classify, normalise, score

# (category, English description, Italian description): each clearly one category.
DESCRIPTIONS: list[tuple[Category, str, str]] = [
    ("root_password_reset",
     "I forgot the root password and cannot log in anymore.",
     "Ho dimenticato la password di root e non riesco più ad accedere."),
    ("network_recovery",
     "After changing iptables rules the server is unreachable, no ping.",
     "Dopo aver cambiato le regole del firewall il server non è raggiungibile."),
    ("remote_access_restoration",
     "The sshd service does not start, connection refused on port 22.",
     "Il servizio SSH non parte: connessione rifiutata, accesso remoto impossibile."),
    ("boot_repair",
     "After the kernel update the server does not boot, stuck at grub rescue.",
     "Dopo l'aggiornamento il server non si avvia, errore di avvio GRUB."),
    ("filesystem_repair",
     "The root file system went read-only; fsck reports a bad superblock.",
     "Il filesystem è in sola lettura, errore del filesystem all'avvio di fsck."),
    ("service_restart",
     "nginx crashed and failed to start, please restart the service.",
     "Il servizio nginx è bloccato: servizio fermo, potete riavviare il servizio?"),
    ("diagnostics",
     "Please diagnose why the machine rebooted by itself last night.",
     "Vorrei una diagnosi: il server si riavvia da solo di notte."),
    ("software_installation",
     "Please install the htop package (apt install htop).",
     "Potete installare il pacchetto htop? Serve l'installazione."),
    ("application_troubleshooting",
     "My WordPress plugin throws a PHP error after the update.",
     "Il mio sito WordPress dà un errore PHP dopo l'aggiornamento del plugin."),
    ("data_recovery",
     "I accidentally deleted files in /var/www, please recover my data.",
     "Ho cancellato per errore dei file, serve il recupero dati."),
    ("performance_tuning",
     "The site is very slow, please optimize MySQL and speed up the server.",
     "Il server è lentissimo, potete ottimizzare le prestazioni?"),
    ("malware_removal",
     "The server was hacked: there is a crypto miner and a backdoor.",
     "Il server è stato hackerato, c'è un processo sospetto, forse un virus."),
]


def test_the_table_covers_every_category_in_both_languages() -> None:
    assert {c for c, _, _ in DESCRIPTIONS} == set(CATEGORIES) == set(KEYWORDS)


@pytest.mark.parametrize(("category", "text"),
                         [(c, en) for c, en, _ in DESCRIPTIONS], ids=lambda v: str(v)[:30])
def test_english_description_is_classified_with_high_confidence(category: Category,
                                                                 text: str) -> None:
    result = classify(text)
    assert (result.category, result.source, result.confidence) == (
        category, "classified", "high")
    assert result.evidence[category], "the matched keywords are given as evidence"


@pytest.mark.parametrize(("category", "text"),
                         [(c, it) for c, _, it in DESCRIPTIONS], ids=lambda v: str(v)[:30])
def test_italian_description_is_classified_with_high_confidence(category: Category,
                                                                text: str) -> None:
    result = classify(text)
    assert (result.category, result.source, result.confidence) == (
        category, "classified", "high")


@pytest.mark.parametrize("category", PAID_ONLY_CATEGORIES)
def test_paid_only_categories_are_recognised_as_not_included(category: Category) -> None:
    text = next(en for c, en, _ in DESCRIPTIONS if c == category)
    assert scope_of(classify(text).category) == "not_included"


def test_nothing_recognisable_goes_to_diagnostics_for_an_engineer() -> None:
    result = classify("Something is strange with my machine, can you have a look please?")
    assert (result.category, result.confidence) == ("diagnostics", "low")
    assert result.evidence == {}


def test_weak_hints_only_give_low_confidence() -> None:
    result = classify("The website is slow sometimes.")
    assert (result.category, result.confidence) == ("performance_tuning", "low")


def test_two_strong_candidates_are_ambiguous_and_low_confidence() -> None:
    result = classify("Problems with grub and fsck.")
    assert result.confidence == "low"
    assert {"boot_repair", "filesystem_repair"} <= set(result.evidence)


def test_form_category_supported_by_the_text_is_kept() -> None:
    result = classify("nginx failed to start, please restart the service.",
                      form_category="service_restart")
    assert (result.category, result.source, result.confidence, result.form_category) == (
        "service_restart", "form", "high", None)


def test_form_category_the_text_does_not_contradict_is_kept() -> None:
    # The §4.1 example: SSH times out (weak hints), customer asked for diagnostics.
    result = classify("Server answers ping but SSH times out since this morning.",
                      ["ssh: connect to host 203.0.113.10 port 22: Connection timed out"],
                      form_category="diagnostics")
    assert (result.category, result.source, result.confidence) == (
        "diagnostics", "form", "high")


def test_form_category_contradicted_by_the_text_is_overridden_and_kept_for_reference() -> None:
    result = classify("I accidentally deleted files, please recover my data.",
                      form_category="diagnostics")
    assert (result.category, result.source, result.form_category) == (
        "data_recovery", "classified", "diagnostics")
    assert result.confidence == "high"


def test_diagnostics_on_the_form_covers_any_included_symptom() -> None:
    result = classify("I forgot the root password, please reset the password.",
                      form_category="diagnostics")
    assert (result.category, result.source, result.confidence) == (
        "diagnostics", "form", "high")


def test_diagnostics_on_the_form_is_overridden_by_a_paid_only_request() -> None:
    result = classify("The server was hacked, there is malware and a backdoor.",
                      form_category="diagnostics")
    assert (result.category, result.form_category) == ("malware_removal", "diagnostics")
    assert scope_of(result.category) == "not_included"


def test_one_strong_keyword_does_not_override_the_form() -> None:
    result = classify("nginx crashed this morning.", form_category="software_installation")
    assert (result.category, result.confidence) == ("software_installation", "high")


def test_contradiction_by_ambiguous_text_keeps_the_form_but_asks_an_engineer() -> None:
    result = classify("grub does not boot, and fsck says superblock corrupted",
                      form_category="software_installation")
    assert (result.category, result.source, result.confidence) == (
        "software_installation", "form", "low")


def test_italian_contradiction_overrides_the_form() -> None:
    result = classify("Il server è stato hackerato, c'è un virus.",
                      form_category="service_restart")
    assert (result.category, result.form_category) == ("malware_removal", "service_restart")


def test_error_messages_count_as_evidence() -> None:
    result = classify("It stopped working this morning.",
                      ["mount: /data: structure needs cleaning", "fsck.ext4: Bad magic number"])
    assert result.category == "filesystem_repair"


@pytest.mark.parametrize(("text", "keyword"), [
    ("L'AVVIO è BLOCCATO all'avvio!", "bloccato all avvio"),
    ("Can't connect via SSH", "can t connect via ssh"),
    ("sshd_config was edited", "sshd config"),
    ("Connessione: nessuna connettività", "nessuna connettivita"),
])
def test_text_is_matched_accent_case_and_punctuation_blind(text: str, keyword: str) -> None:
    assert f" {keyword} " in normalise(text)


def test_keywords_match_whole_words_only() -> None:
    # "boot" must not fire inside "reboot", nor "lag" inside "flag".
    assert score(["we set a flag before the reboot"]) == {}


def test_hostile_text_is_just_data() -> None:
    text = "'; DROP TABLE tickets; -- $(reboot) `rm -rf /` \u202e\x00 {{7*7}} " * 100
    result = classify(text)
    assert result.category in CATEGORIES
