"""Customer messages come from one renderer and gettext catalogues: the English and Italian
texts are byte for byte what the per-language modules wrote before, every message has its
translation, and a new language is one catalogue file."""

from __future__ import annotations

import json
import re
import shutil
from gettext import NullTranslations
from pathlib import Path

import pytest
from babel.messages.pofile import read_po
from message_cases import message_cases

from services.notifier.templates import catalogues, languages, render
from services.notifier.templates.messages import Messages

GOLDEN = Path(__file__).resolve().parents[2] / "fixtures" / "notifier" / "customer_messages.json"
CASES = message_cases()


def test_the_catalogues_are_english_and_italian() -> None:
    assert languages() == ("en", "it")


@pytest.mark.parametrize("language", ["en", "it"])
def test_every_message_kind_renders_byte_for_byte_as_before(language: str) -> None:
    golden = json.loads(GOLDEN.read_text())
    assert set(golden) == set(CASES)
    for name, context in CASES.items():
        assert render(context, language) == golden[name][language], name


class _Recording(NullTranslations):
    def __init__(self) -> None:
        super().__init__()
        self.asked: set[tuple[str | None, str]] = set()

    def gettext(self, message: str) -> str:
        self.asked.add((None, message))
        return message

    def pgettext(self, context: str, message: str) -> str:
        self.asked.add((context, message))
        return message


def test_the_italian_catalogue_translates_every_message_and_keeps_its_fields() -> None:
    recording = _Recording()
    for context in CASES.values():
        Messages(recording).render(context)
    with (catalogues.LOCALE_DIR / "it.po").open("rb") as po:
        catalog = read_po(po, locale="it")
    entries = {(m.context, m.id): m.string for m in catalog if m.id}
    assert recording.asked <= set(entries), sorted(recording.asked - set(entries))
    for (_, source), translated in entries.items():
        assert translated, f"untranslated: {source!r}"
        assert sorted(re.findall(r"{\w+}", str(source))) == \
            sorted(re.findall(r"{\w+}", str(translated))), source


def test_a_new_language_is_one_catalogue_file(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copy(catalogues.LOCALE_DIR / "it.po", tmp_path / "it.po")
    text = (catalogues.LOCALE_DIR / "it.po").read_text()
    (tmp_path / "xx.po").write_text(text.replace('msgstr "— Supporto Tecnico"',
                                                 'msgstr "— Support XX"'))
    monkeypatch.setattr(catalogues, "LOCALE_DIR", tmp_path)
    catalogues.translations.cache_clear()
    try:
        assert languages() == ("en", "it", "xx")
        message = render(CASES["extension-overdue"], "xx")
        assert message.endswith("— Support XX")
        assert message.startswith("Gentile cliente,")
        with pytest.raises(LookupError, match="'yy'"):
            render(CASES["extension-overdue"], "yy")
    finally:
        catalogues.translations.cache_clear()
