"""The provider adapter: what it accepts from the API, and how failures are classified."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from services.executor.rescue.provider import (
    HttpRescueProvider,
    ProviderError,
    parse_access,
    parse_action,
)

ACTION = {"id": "act-1", "server_id": "SRV-1", "kind": "boot_rescue", "status": "running",
          "progress": 40, "message": "network boot"}
ACCESS = {"address": "203.0.113.10", "port": 22, "username": "root",
          "password": "one-time-pw-123",
          "host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHDc+tKFJafhnOd3hvVVw+0NBP2eDGDUq "
                      "rescue"}


def test_actions_are_validated() -> None:
    action = parse_action(ACTION)
    assert (action.id, action.kind, action.status, action.progress) == (
        "act-1", "boot_rescue", "running", 40)
    assert not action.finished
    assert parse_action({**ACTION, "progress": 250, "status": "succeeded"}).progress == 100
    for bad in ({**ACTION, "id": "../x"}, {**ACTION, "kind": "reinstall"},
                {**ACTION, "status": "maybe"}, "nope"):
        with pytest.raises(ProviderError) as caught:
            parse_action(bad)
        assert caught.value.kind == "invalid"


def test_rescue_access_needs_an_address_a_password_and_the_host_key() -> None:
    access = parse_access(ACCESS)
    assert access.host_key.count(" ") == 1  # comment dropped
    assert "one-time" not in repr(access)  # the password is not in reprs or logs
    for field, value in (("host_key", None), ("host_key", "not a key"), ("address", "host"),
                         ("port", 70000), ("username", "root;id"), ("password", "short")):
        with pytest.raises(ProviderError, match=r"rescue system|host key"):
            parse_access({**ACCESS, field: value})


class Api:
    """A scripted provider: ``routes[(method, path)] = (status, body)``."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], tuple[int, Any]] = {}
        self.seen: list[tuple[str, str, str | None, Any]] = []
        self.delay = 0.0
        self.location: str | None = None  # sent as Location with every answer when set
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                api.seen.append((method, self.path, self.headers.get("Authorization"), body))
                time.sleep(api.delay)
                status, answer = api.routes.get((method, self.path), (404, {"error": "x"}))
                data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
                with contextlib.suppress(OSError):  # the client may have given up
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(data)))
                    if api.location:
                        self.send_header("Location", api.location)
                    self.end_headers()
                    self.wfile.write(data)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def api() -> Iterator[Api]:
    scripted = Api()
    yield scripted
    scripted.server.shutdown()
    scripted.server.server_close()


async def test_the_http_adapter_speaks_the_api(api: Api) -> None:
    api.routes[("POST", "/v1/servers/SRV-1/actions/boot-rescue")] = (202, {"action": ACTION})
    api.routes[("GET", "/v1/actions/act-1")] = (200, {"action": {**ACTION,
                                                                 "status": "succeeded"}})
    api.routes[("POST", "/v1/actions/act-1/rescue-credentials")] = (200, ACCESS)
    provider = HttpRescueProvider(api.url, token="tok-123", timeout_s=2)
    started = await provider.boot_rescue("SRV-1", request_id="HD-1:1:rescue")
    assert started.status == "running"
    assert (await provider.action("act-1")).finished
    assert (await provider.rescue_credentials("act-1")).password == "one-time-pw-123"
    method, path, auth, body = api.seen[0]
    assert (method, path, auth, body) == ("POST", "/v1/servers/SRV-1/actions/boot-rescue",
                                          "Bearer tok-123", {"request_id": "HD-1:1:rescue"})


@pytest.mark.parametrize(("status", "body", "kind"), [
    (503, {"error": "unavailable", "message": "maintenance"}, "unavailable"),
    (429, {"error": "rate_limited"}, "unavailable"),
    (404, {"error": "unknown_server", "message": "SRV-1"}, "rejected"),
    (409, {"error": "already_issued"}, "rejected"),
    (200, b"<html>gateway</html>", "invalid"),
    (200, [1, 2], "invalid"),
])
async def test_failures_are_classified(api: Api, status: int, body: Any, kind: str) -> None:
    api.routes[("POST", "/v1/servers/SRV-1/actions/boot-disk")] = (status, body)
    provider = HttpRescueProvider(api.url, token="t", timeout_s=2)
    with pytest.raises(ProviderError) as caught:
        await provider.boot_disk("SRV-1", request_id="r")
    assert caught.value.kind == kind
    assert "boot-disk" in str(caught.value)


async def test_a_slow_or_absent_api_is_unavailable_not_a_hang(api: Api) -> None:
    api.delay = 1.0
    provider = HttpRescueProvider(api.url, token="t", timeout_s=0.2)
    began = time.monotonic()
    with pytest.raises(ProviderError) as caught:
        await provider.action("act-1")
    assert caught.value.kind == "unavailable"
    assert time.monotonic() - began < 1.0
    closed = HttpRescueProvider("http://127.0.0.1:9", token="t", timeout_s=1)
    with pytest.raises(ProviderError) as caught:
        await closed.action("act-1")
    assert caught.value.kind == "unavailable"


def test_only_http_urls_are_accepted() -> None:
    with pytest.raises(ValueError, match="http"):
        HttpRescueProvider("file:///etc/passwd", token="t")


@pytest.mark.parametrize("url", ["http://rescue.example.net/api", "http://203.0.113.9:8080",
                                 "ftp://rescue.example.net", "rescue.example.net", "https://"])
def test_the_provider_url_must_be_https(url: str) -> None:
    # The API carries the bearer token and one-time root passwords.
    with pytest.raises(ValueError, match="https://"):
        HttpRescueProvider(url, token="t0ken-value")


@pytest.mark.parametrize("url", ["https://rescue.example.net/api", "http://127.0.0.1:8089",
                                 "http://[::1]:8089", "http://localhost:8089"])
def test_https_and_loopback_provider_urls_are_accepted(url: str) -> None:
    HttpRescueProvider(url, token="t0ken-value")


def test_a_plain_http_provider_url_stops_the_executor_naming_the_variable() -> None:
    from services.executor.settings import ExecutorSettings
    from services.runtime.settings import SettingsError

    with pytest.raises(SettingsError, match="EXECUTOR_RESCUE_API_URL"):
        ExecutorSettings(executor_rescue_api_url="http://rescue.example.net")
    with pytest.raises(SettingsError, match="EXECUTOR_RESCUE_MANAGEMENT_SOURCES"):
        ExecutorSettings(executor_rescue_management_sources="192.0.2.0/28,nope")
    settings = ExecutorSettings(executor_rescue_management_sources="192.0.2.0/28, 192.0.2.9")
    assert settings.rescue_management_sources == ("192.0.2.0/28", "192.0.2.9")


async def test_a_redirect_is_not_followed_with_the_token(api: Api) -> None:
    # Following it would send the bearer token elsewhere, possibly over plain HTTP.
    api.location = f"{api.url}/v1/actions/elsewhere"
    api.routes[("GET", "/v1/actions/act-1")] = (302, {})
    api.routes[("GET", "/v1/actions/elsewhere")] = (200, {"action": ACTION})
    provider = HttpRescueProvider(api.url, token="tok-123", timeout_s=2)
    with pytest.raises(ProviderError) as caught:
        await provider.action("act-1")
    assert caught.value.kind == "rejected"
    assert [path for _, path, _, _ in api.seen] == ["/v1/actions/act-1"]


def test_values_with_a_trailing_newline_are_refused() -> None:
    # re.match with "$" accepts "x\n"; every check is a fullmatch.
    from services.executor.rescue.runbooks.common import valid_device

    with pytest.raises(ProviderError):
        parse_action({**ACTION, "id": "act-1\n"})
    with pytest.raises(ProviderError):
        parse_access({**ACCESS, "username": "root\n"})
    assert not valid_device("/dev/sda1\n")
    assert valid_device("/dev/sda1")
