"""Customer message templates, English and Italian (the procedure's languages).

:func:`render` is pure: an allow-listed context in (see :mod:`.context`), the text the
helpdesk posts verbatim out. Each language is one module with one function per update kind,
so a reviewer reads a message the way the customer will.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from schemas.request import Language
from services.notifier.templates import en, it
from services.notifier.templates.context import UpdateContext, kind_of

CATALOGUES: Final[dict[Language, Callable[[UpdateContext], str]]] = {
    "en": en.render,
    "it": it.render,
}


def render(context: UpdateContext, language: Language) -> str:
    """The message for ``context`` in ``language``."""
    return CATALOGUES[language](context)


__all__ = ["CATALOGUES", "UpdateContext", "kind_of", "render"]
