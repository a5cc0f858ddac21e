"""Customer message templates: one renderer, one gettext catalogue per language.

:func:`render` is pure: an allow-listed context in (see :mod:`.context`), the text the
helpdesk posts verbatim out. The texts are written once, in English, in :mod:`.messages`;
each other language is a ``locale/<language>.po`` catalogue (:mod:`.catalogues`).
"""

from __future__ import annotations

from services.notifier.templates.catalogues import languages, translations
from services.notifier.templates.context import UpdateContext, kind_of
from services.notifier.templates.messages import Messages


def render(context: UpdateContext, language: str) -> str:
    """The message for ``context`` in ``language``."""
    return Messages(translations(language)).render(context)


__all__ = ["UpdateContext", "kind_of", "languages", "render"]
