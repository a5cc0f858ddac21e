"""``python -m services.intake``: the HTTP API and the helpdesk topic consumer in one process.

Listens on ``INTAKE_HTTP_HOST``:``INTAKE_HTTP_PORT`` (default 127.0.0.1:8080). With
``--export-openapi FILE`` it writes the OpenAPI document instead (no broker or store
needed), which is how ``docs/openapi.json`` is regenerated.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from services.intake.bootstrap import SERVICE_NAME, IntakeService
from services.intake.http import create_app
from services.intake.openapi import write_openapi
from services.intake.settings import IntakeSettings
from services.runtime.redaction import RedactingFilter, install_log_redaction
from services.runtime.settings import SettingsError
from services.runtime.telemetry import configure_logging


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.intake", description=__doc__)
    parser.add_argument("--export-openapi", metavar="FILE",
                        help="write the OpenAPI document to FILE ('-' for stdout) and exit")
    args = parser.parse_args(argv)
    if args.export_openapi:
        write_openapi(None if args.export_openapi == "-" else Path(args.export_openapi))
        return 0

    import uvicorn

    try:
        settings = IntakeSettings()
    except SettingsError as exc:  # impossible settings: an operator's fix, not a traceback
        print(f"{SERVICE_NAME}: {exc}", file=sys.stderr)
        return 2
    service = IntakeService(settings)
    # Logs are redacted with intake's own (small, cheap to recompile) redactor, which learns
    # every secret intake handles; see bootstrap.REDACTOR_SECRETS for why not the default.
    handler = configure_logging(SERVICE_NAME)
    for existing in [f for f in handler.filters if isinstance(f, RedactingFilter)]:
        handler.removeFilter(existing)
    install_log_redaction(redactor=service.runtime.redactor)
    app = create_app(service)
    # log_config=None: uvicorn's records go through our JSON, redacting root handler.
    # access_log off: request lines would carry client-chosen paths for every probe.
    uvicorn.run(app, host=settings.intake_http_host, port=settings.intake_http_port,
                log_config=None, access_log=False, log_level=logging.INFO)
    return 0


if __name__ == "__main__":
    sys.exit(main())
