"""``python -m services.intake``: the HTTP API and the helpdesk topic consumer in one process.

Listens on ``INTAKE_HTTP_HOST``:``INTAKE_HTTP_PORT`` (default 127.0.0.1:8080), and serves
``/healthz`` and ``/metrics`` on ``OPS_HTTP_HOST``:``OPS_HTTP_PORT`` (127.0.0.1:9100). With
``--export-openapi FILE`` it writes the OpenAPI document instead (no broker or store
needed), which is how ``docs/openapi.json`` is regenerated.

Like the other services (:func:`services.runtime.service.run_service`), impossible settings,
a Kafka that cannot be reached or refuses the credentials or the TLS handshake, missing
topics and a missing or unsafe key file stop the start with one line on stderr naming the
cause, and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from services.intake.bootstrap import SERVICE_NAME, IntakeService
from services.intake.http import create_app
from services.intake.openapi import write_openapi
from services.intake.settings import IntakeSettings
from services.runtime.keys import KeyFileError
from services.runtime.ops import OpsServer
from services.runtime.redaction import RedactingFilter, install_log_redaction
from services.runtime.service import OPERATOR_ERRORS, refused
from services.runtime.telemetry import configure_logging

if TYPE_CHECKING:
    import uvicorn

# run_service's refusals (one line, exit status 2), and intake's sealing key.
REFUSALS: tuple[type[Exception], ...] = (*OPERATOR_ERRORS, KeyFileError)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.intake", description=__doc__)
    parser.add_argument("--export-openapi", metavar="FILE",
                        help="write the OpenAPI document to FILE ('-' for stdout) and exit")
    args = parser.parse_args(argv)
    if args.export_openapi:
        write_openapi(None if args.export_openapi == "-" else Path(args.export_openapi))
        return 0

    import uvicorn

    handler = configure_logging(SERVICE_NAME)
    try:
        settings = IntakeSettings()
        service = IntakeService(settings)  # the Kafka TLS context is built here
    except REFUSALS as exc:
        return refused(SERVICE_NAME, exc)
    # Logs are redacted with intake's own (small, cheap to recompile) redactor, which learns
    # every secret intake handles; see bootstrap.REDACTOR_SECRETS for why not the default.
    for existing in [f for f in handler.filters if isinstance(f, RedactingFilter)]:
        handler.removeFilter(existing)
    install_log_redaction(redactor=service.runtime.redactor)
    app = create_app(service)
    # log_config=None: uvicorn's records go through our JSON, redacting root handler.
    # access_log off: request lines would carry client-chosen paths for every probe.
    server = uvicorn.Server(uvicorn.Config(
        app, host=settings.intake_http_host, port=settings.intake_http_port,
        log_config=None, access_log=False, log_level=logging.INFO, loop="asyncio"))
    try:
        asyncio.run(_serve(service, server))
    except REFUSALS as exc:
        return refused(SERVICE_NAME, exc)
    except KeyboardInterrupt:  # uvicorn re-raises the SIGINT it shut down for
        pass
    return 0 if server.started else 3  # 3: uvicorn's "startup failed"


async def _serve(service: IntakeService, server: uvicorn.Server) -> None:
    """Start the service (key, indexes, topics, consumer), then serve HTTP until stopped.

    Started before uvicorn rather than by the app's lifespan: uvicorn reports a failing
    lifespan as a logged traceback and exit status 3. The lifespan still stops the service
    at shutdown, before uvicorn re-raises the signal it stopped for.
    """
    try:
        await service.start()
    except BaseException:
        with contextlib.suppress(Exception):  # the cause is the start's error, not this
            await service.stop()
        raise
    ops: OpsServer | None = None
    try:
        settings = service.settings
        if settings.ops_http_port is not None:
            ops = OpsServer(service.runtime, settings.ops_http_host, settings.ops_http_port,
                            health=service.health)
            await ops.start()
        await server.serve()
    finally:
        if ops is not None:
            await ops.stop()
        if service.running:  # uvicorn stopped before its lifespan ran
            await service.stop()


if __name__ == "__main__":
    sys.exit(main())
