"""The provider stand-in: the one mocked boundary of the lab, an HTTP server speaking the
executor's provider protocol (``services/executor/rescue/provider.py``) for lab servers,
with failure injection. Tests run it as a thread (:class:`ProviderStandIn`); the demo as a
process of its own (:class:`ProviderProcess`, ``python -m devstack.demo.rescue_lab``)."""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from devstack.demo.rescue_lab.common import READY, REPO
from devstack.demo.rescue_lab.server import LabServer
from devstack.demo.targets import free_port, new_password

# --- the provider stand-in -------------------------------------------------------------------


@dataclass
class Action:
    id: str
    server_id: str
    kind: str  # "boot_rescue" or "boot_disk"
    status: str = "running"
    progress: int = 0
    message: str = "queued"
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    credentials: dict[str, Any] | None = None
    credentials_issued: bool = False

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "server_id": self.server_id, "kind": self.kind,
                "status": self.status, "progress": self.progress, "message": self.message,
                "started_at": _iso(self.started_at),
                "finished_at": _iso(self.finished_at) if self.finished_at else None}


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


class ProviderStandIn:
    """The rescue provider API (see ``services/executor/rescue/provider.py``) for
    :class:`LabServer`\\ s, on 127.0.0.1. Failure injection per server id in ``faults``:
    ``"fail_rescue"`` (the rescue boot fails), ``"hang_rescue"`` (it never finishes),
    ``"fail_disk"`` (the boot back to disk fails), ``"unavailable"`` (HTTP 503)."""

    def __init__(self, *, token: str | None = None, port: int = 0,
                 log: Callable[[str], None] | None = None) -> None:
        self.token = token or secrets.token_urlsafe(24)
        self._log = log
        self.servers: dict[str, LabServer | None] = {}
        self.actions: dict[str, Action] = {}
        self.by_request: dict[str, str] = {}
        self.faults: dict[str, str] = {}
        self.calls: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                        daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def add(self, server: LabServer) -> None:
        self.servers[server.service_id] = server

    def add_virtual(self, service_id: str, fault: str) -> None:
        """A server id the provider knows but with no machine behind it: for failure tests,
        where the provider fails before any machine would be touched."""
        self.servers[service_id] = None
        self.faults[service_id] = fault

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _start(self, server_id: str, kind: str, request_id: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            existing = self.by_request.get(request_id)
            if existing is not None:  # the same request again: the same action
                return 200, {"action": self.actions[existing].public()}
            action = Action(id=f"act-{uuid.uuid4().hex[:10]}", server_id=server_id, kind=kind)
            self.actions[action.id] = action
            self.by_request[request_id] = action.id
        threading.Thread(target=self._work, args=(action,), daemon=True).start()
        return 202, {"action": action.public()}

    def _work(self, action: Action) -> None:
        server = self.servers.get(action.server_id)
        fault = self.faults.get(action.server_id)
        try:
            action.progress, action.message = 10, "powering off"
            if action.kind == "boot_rescue":
                if fault == "hang_rescue":
                    action.message = "waiting for the network boot"
                    return  # never finishes
                if fault == "fail_rescue":
                    time.sleep(0.2)
                    raise RuntimeError("PXE boot failed: no DHCP offer on the rescue VLAN")
                action.progress, action.message = 40, "network boot of the rescue system"
                if server is None:
                    raise RuntimeError("no machine behind this server id")
                password = new_password()
                server.note_rescue_credentials(action.id, "root", password)
                host_key = server.boot_rescue(password)
                action.credentials = {"address": server.address, "port": 22,
                                      "username": "root", "password": password,
                                      "host_key": host_key}
            else:
                if fault == "fail_disk":
                    raise RuntimeError("power cycle failed: BMC did not answer")
                action.progress, action.message = 50, "booting from disk"
                if server is not None:
                    server.boot_disk()
            action.progress, action.message, action.status = 100, "done", "succeeded"
        except Exception as exc:  # noqa: BLE001 - reported through the API like a provider does
            action.status, action.message = "failed", str(exc)[:500]
        finally:
            if action.status != "running":
                action.finished_at = time.time()
                if self._log is not None:
                    took = action.finished_at - action.started_at
                    self._log(f"{action.id} {action.kind} {action.server_id}: {action.status} "
                              f"after {took:.1f}s ({action.message})")

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _route(self, method: str) -> None:
                provider.calls.append((method, self.path))
                if self.headers.get("Authorization") != f"Bearer {provider.token}":
                    self._send(401, {"error": "unauthorized", "message": "bad token"})
                    return
                parts = [p for p in self.path.split("/") if p]
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}") if length else {}
                if len(parts) == 5 and parts[:2] == ["v1", "servers"] and parts[3] == "actions":
                    server_id = parts[2]
                    if provider.faults.get(server_id) == "unavailable":
                        self._send(503, {"error": "unavailable", "message": "maintenance"})
                        return
                    if server_id not in provider.servers:
                        self._send(404, {"error": "unknown_server", "message": server_id})
                        return
                    kind = {"boot-rescue": "boot_rescue", "boot-disk": "boot_disk"}.get(parts[4])
                    request_id = str(body.get("request_id") or "")
                    if method != "POST" or kind is None or not request_id:
                        self._send(400, {"error": "bad_request", "message": self.path})
                        return
                    self._send(*provider._start(server_id, kind, request_id))
                    return
                if len(parts) >= 3 and parts[:2] == ["v1", "actions"]:
                    action = provider.actions.get(parts[2])
                    if action is None:
                        self._send(404, {"error": "unknown_action", "message": parts[2]})
                        return
                    if len(parts) == 3 and method == "GET":
                        self._send(200, {"action": action.public()})
                        return
                    if len(parts) == 4 and parts[3] == "rescue-credentials" and method == "POST":
                        with provider._lock:
                            if action.credentials is None:
                                self._send(409, {"error": "not_ready",
                                                 "message": action.status})
                            elif action.credentials_issued:
                                self._send(409, {"error": "already_issued",
                                                 "message": "one-time credentials"})
                            else:
                                action.credentials_issued = True
                                self._send(200, action.credentials)
                        return
                self._send(404, {"error": "not_found", "message": self.path})

            def do_GET(self) -> None:
                self._route("GET")

            def do_POST(self) -> None:
                self._route("POST")

        return Handler


# --- the provider stand-in as its own process (the demo) -------------------------------------


@dataclass(frozen=True)
class ProviderApi:
    """Where the executor finds the provider's rescue API."""

    url: str
    token: str = field(repr=False)

    def executor_env(self) -> dict[str, str]:
        return {"EXECUTOR_RESCUE_API_URL": self.url, "EXECUTOR_RESCUE_API_TOKEN": self.token}


@dataclass
class ProviderProcess:
    """:class:`ProviderStandIn` in a process of its own session, serving ``servers`` (and
    powering them on from their disks first, as a provider's machines are running). Stopped
    by SIGTERM to its process group; the servers are left as they are (:meth:`LabServer.close`
    removes them)."""

    process: subprocess.Popen[bytes]
    api: ProviderApi
    log_path: Path

    @classmethod
    def start(cls, servers: Sequence[LabServer], *, log_path: Path,
              power_on: bool = True) -> ProviderProcess:
        port = free_port()
        api = ProviderApi(url=f"http://127.0.0.1:{port}", token=secrets.token_urlsafe(24))
        # The token goes through stdin: never on a command line `ps` shows.
        config = {"port": port, "token": api.token, "power_on": power_on,
                  "servers": [s.record() for s in servers]}
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "devstack.demo.rescue_lab"], cwd=REPO,
                stdin=subprocess.PIPE, stdout=log, stderr=log, start_new_session=True)
        assert process.stdin is not None
        process.stdin.write(json.dumps(config).encode())
        process.stdin.close()
        return cls(process=process, api=api, log_path=log_path)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the provider stand-in exited ({self.process.returncode}): "
                                   f"{self.log()[-2000:]}")
            if READY in self.log():
                return
            time.sleep(0.05)
        raise RuntimeError(f"the provider stand-in did not start: {self.log()[-2000:]}")


def serve(config: dict[str, Any]) -> None:
    """The body of ``python -m devstack.demo.rescue_lab``: serve until SIGTERM or SIGINT."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    def log(line: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)

    provider = ProviderStandIn(token=str(config["token"]), port=int(config["port"]), log=log)
    try:
        for record in config["servers"]:
            server = LabServer.from_record(record)
            provider.add(server)
            if config.get("power_on"):
                server.boot_disk()
                log(f"{server.service_id}: powered on from its disk ({server.address})")
        log(f"{READY} on {provider.url} for {', '.join(provider.servers)}")
        while not stop.wait(0.5):
            pass
    finally:
        provider.close()
        log("provider stand-in: stopped")
