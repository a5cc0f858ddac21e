"""The translation catalogues: gettext ``.po`` files, compiled when first used.

``locale/<language>.po`` holds one language's translations of the English source texts
in :mod:`services.notifier.templates.messages` (translators edit it with any gettext tool:
Poedit, Weblate, ``pybabel update``). It is compiled in memory with Babel the first time the
language is rendered, so there is no build step and no compiled ``.mo`` to keep in step.
English, the source language, needs no catalogue.
"""

from __future__ import annotations

import io
from functools import cache
from gettext import GNUTranslations, NullTranslations
from pathlib import Path

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

LOCALE_DIR = Path(__file__).with_name("locale")
SOURCE_LANGUAGE = "en"


def languages() -> tuple[str, ...]:
    """English plus every language with a catalogue."""
    return (SOURCE_LANGUAGE, *sorted(p.stem for p in LOCALE_DIR.glob("*.po")))


@cache
def translations(language: str) -> NullTranslations:
    if language == SOURCE_LANGUAGE:
        return NullTranslations()
    path = LOCALE_DIR / f"{language}.po"
    if not path.is_file():
        raise LookupError(f"no customer-message catalogue for language {language!r} "
                          f"(expected {path})")
    with path.open("rb") as po:
        catalog = read_po(po, locale=language)
    compiled = io.BytesIO()
    write_mo(compiled, catalog)
    compiled.seek(0)
    return GNUTranslations(compiled)
