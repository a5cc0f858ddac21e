"""The exported OpenAPI document (``docs/openapi.json``) and how it is produced.

A test regenerates it and compares, so the committed document cannot drift from the code:
after changing the API run ``python -m services.intake --export-openapi docs/openapi.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from services.intake.bootstrap import IntakeService
from services.intake.http import create_app
from services.intake.settings import IntakeSettings

DOCUMENT = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


def openapi_document() -> dict[str, Any]:
    """The API's OpenAPI document; builds the app without starting it (no I/O)."""
    # Fixed settings, so the document does not depend on the exporting machine's env.
    settings = IntakeSettings.model_construct(**{
        name: info.default for name, info in IntakeSettings.model_fields.items()
    })
    document = create_app(IntakeService(settings)).openapi()
    # Where the API listens by default; redocly's recommended rules want a server named.
    return {**document, "servers": [{
        "url": f"http://{settings.intake_http_host}:{settings.intake_http_port}",
        "description": "intake on the local stack (INTAKE_HTTP_HOST:INTAKE_HTTP_PORT); in "
                       "production the TLS endpoint in front of it",
    }]}


def render() -> str:
    return json.dumps(openapi_document(), indent=2, ensure_ascii=False) + "\n"


def write_openapi(path: Path | None = DOCUMENT) -> None:
    """Write the document to ``path`` (stdout when None)."""
    text = render()
    if path is None:
        sys.stdout.write(text)
    else:
        path.write_text(text, encoding="utf-8")
