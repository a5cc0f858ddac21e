"""Each service's operations endpoint: ``GET /healthz`` and ``GET /metrics``.

Health means the real dependencies answer — the broker a metadata request, the store a
``ping`` — not merely that the process is up; an unhealthy answer names the dependency,
since when it is down and the last error (``Dependencies``); ``intervene status`` and the
compose health checks read it. Metrics are the service's OpenTelemetry instruments in
Prometheus format. Served by uvicorn inside the service's own event loop, on
``OPS_HTTP_HOST:OPS_HTTP_PORT``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import uvicorn
from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from faststream.kafka import KafkaBroker
from prometheus_client import generate_latest
from pymongo.asynchronous.database import AsyncDatabase

from services.runtime.dependencies import Dependencies, Status
from services.runtime.telemetry import Telemetry

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Operated(Protocol):
    """What the endpoint looks at: a :class:`~services.runtime.service.ServiceRuntime`
    (a Protocol, so this module does not import the runtime that serves it)."""

    @property
    def service_name(self) -> str: ...

    @property
    def broker(self) -> KafkaBroker: ...

    @property
    def db(self) -> AsyncDatabase[Any]: ...

    @property
    def telemetry(self) -> Telemetry: ...

    @property
    def dependencies(self) -> Dependencies: ...

    store_ping: asyncio.Future[object] | None
    """The health probe's store ping still in flight (never cancelled: :func:`health`)."""


async def health(runtime: Operated, *, timeout: float = 3.0) -> dict[str, bool]:
    """Probe each dependency now (and record the answer in ``runtime.dependencies``)."""
    async def broker_ok() -> bool:
        try:
            return bool(await asyncio.wait_for(runtime.broker.ping(timeout=timeout), timeout))
        except (TimeoutError, OSError, RuntimeError):
            return False

    async def store_ok() -> bool:
        # Never cancel the ping: cancelling a pymongo operation that waits in server
        # selection (the store is down) can leave the client's topology lock released
        # twice ("Lock is not acquired"), after which every operation of the process hangs
        # for good (seen in the chaos runs: the executor never recovered from a 40 s store
        # outage). So the probe waits for at most ``timeout`` and leaves a slow ping running;
        # the next probe waits on the same one instead of starting another.
        previous = runtime.store_ping
        if previous is None or previous.done():
            task: asyncio.Future[object] = asyncio.ensure_future(runtime.db.command("ping"))
            runtime.store_ping = task
        else:
            task = previous
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            return False
        return task.exception() is None

    kafka, mongodb = await asyncio.gather(broker_ok(), store_ok())
    checks = {"kafka": kafka, "mongodb": mongodb}
    for name, ok in checks.items():
        if ok:
            runtime.dependencies.recovered(name)
        else:
            runtime.dependencies.failed(name, "did not answer a health probe within "
                                              f"{timeout:g}s")
    return checks


async def health_report(runtime: Operated, extra: Mapping[str, Status] | None = None
                        ) -> tuple[bool, dict[str, Any]]:
    """``/healthz``'s body: ``checks`` (a bool per dependency, as always) and
    ``dependencies``: for each, ``ok``, ``since`` (when it last changed) and the last
    ``error`` - so an unhealthy answer says which dependency, since when and why.
    ``extra`` adds a service's own parts (intake's outbox relay)."""
    checks = await health(runtime)
    details = {name: runtime.dependencies.status(name) for name in checks}
    details.update(extra or {})
    ok = all(status.ok for status in details.values())
    return ok, {"service": runtime.service_name, "ok": ok, "status": "ok" if ok else "degraded",
                "checks": {name: status.ok for name, status in details.items()},
                "dependencies": {name: status.as_json() for name, status in details.items()}}


HealthCheck = Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]
"""A service's own ``/healthz`` report (intake adds its sealing key and outbox relay)."""


def ops_app(runtime: Operated, health: HealthCheck | None = None) -> FastAPI:
    app = FastAPI(title=f"{runtime.service_name} operations", docs_url=None, redoc_url=None,
                  openapi_url=None)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        ok, body = await (health() if health is not None else health_report(runtime))
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        registry = runtime.telemetry.registry
        body = generate_latest(registry) if registry is not None else b""
        return Response(body, media_type=PROMETHEUS_CONTENT_TYPE)

    return app


class OpsServer:
    """uvicorn serving :func:`ops_app` as a task of the running event loop."""

    def __init__(self, runtime: Operated, host: str, port: int,
                 health: HealthCheck | None = None) -> None:
        config = uvicorn.Config(ops_app(runtime, health), host=host, port=port,
                                log_level="warning",
                                lifespan="off", access_log=False)
        self._server = uvicorn.Server(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises the bind error, naming the port
                raise RuntimeError("ops server stopped before it started")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
