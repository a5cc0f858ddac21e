"""The hosting provider's rescue-mode API, behind a Protocol the executor depends on.

The provider (not the customer's OS) can power-cycle a server into a network-booted rescue
system and back to its own disk. The executor needs four things from it, and nothing else:

- ``boot_rescue(server_id, request_id)`` and ``boot_disk(server_id, request_id)`` start an
  asynchronous :class:`ProviderAction`; the same ``request_id`` again returns the same
  action, so an executor resumed after a crash never power-cycles a server twice;
- ``action(action_id)`` reports its progress (``running`` with a percentage and message,
  then ``succeeded`` or ``failed`` with the provider's reason);
- ``rescue_credentials(action_id)`` gives the rescue system's address, port, user,
  one-time password and SSH host key once the rescue boot succeeded. Providers may issue
  them only once: the executor keeps them sealed to its own key in the claim.

The HTTP API (:class:`HttpRescueProvider`), JSON over HTTPS with a bearer token::

    POST /v1/servers/{server_id}/actions/boot-rescue  {"request_id": "..."} -> 200|202 {"action": A}
    POST /v1/servers/{server_id}/actions/boot-disk    {"request_id": "..."} -> 200|202 {"action": A}
    GET  /v1/actions/{action_id}                                            -> 200 {"action": A}
    POST /v1/actions/{action_id}/rescue-credentials                         -> 200 C
         | 409 {"error": "not_ready"|"already_issued", ...}

    A = {"id", "server_id", "kind": "boot_rescue"|"boot_disk",
         "status": "running"|"succeeded"|"failed", "progress": 0-100, "message",
         "started_at", "finished_at"}
    C = {"address", "port", "username", "password", "host_key": "<type> <base64>"}
    errors: {"error": "<code>", "message": "<text>"} with a 4xx/5xx status

Every failure is a :class:`ProviderError` whose ``kind`` says what a caller can do:
``unavailable`` (network, timeouts, 5xx: try again later), ``rejected`` (4xx: this request
will never work), ``invalid`` (an answer that does not follow the API).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol
from urllib.parse import quote

ActionKind = Literal["boot_rescue", "boot_disk"]
ActionStatus = Literal["running", "succeeded", "failed"]
ProviderErrorKind = Literal["unavailable", "rejected", "invalid"]

_ACTION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_USERNAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_HOST_KEY = re.compile(r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/=]+$")
MAX_BODY = 64 * 1024


class ProviderError(Exception):
    def __init__(self, kind: ProviderErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind: ProviderErrorKind = kind


@dataclass(frozen=True, kw_only=True)
class ProviderAction:
    id: str
    kind: ActionKind
    status: ActionStatus
    progress: int
    message: str

    @property
    def finished(self) -> bool:
        return self.status != "running"


@dataclass(frozen=True, kw_only=True)
class RescueAccess:
    address: str
    port: int
    username: str
    password: str = field(repr=False)
    host_key: str


class RescueProvider(Protocol):
    async def boot_rescue(self, server_id: str, *, request_id: str) -> ProviderAction: ...

    async def boot_disk(self, server_id: str, *, request_id: str) -> ProviderAction: ...

    async def action(self, action_id: str) -> ProviderAction: ...

    async def rescue_credentials(self, action_id: str) -> RescueAccess: ...


def parse_action(data: Any) -> ProviderAction:
    """An ``A`` object of the API, validated: ids and states come from outside."""
    if not isinstance(data, dict):
        raise ProviderError("invalid", "the provider's action is not an object")
    action_id, kind, status = data.get("id"), data.get("kind"), data.get("status")
    progress, message = data.get("progress", 0), data.get("message") or ""
    if not isinstance(action_id, str) or not _ACTION_ID.fullmatch(action_id):
        raise ProviderError("invalid", "the provider's action has no valid id")
    if kind not in ("boot_rescue", "boot_disk"):
        raise ProviderError("invalid", f"unknown action kind {str(kind)[:40]!r}")
    if status not in ("running", "succeeded", "failed"):
        raise ProviderError("invalid", f"unknown action status {str(status)[:40]!r}")
    if not isinstance(progress, int) or isinstance(progress, bool):
        progress = 0
    return ProviderAction(id=action_id, kind=kind, status=status,
                          progress=max(0, min(100, progress)),
                          message=" ".join(str(message).split())[:500])


def parse_access(data: Any) -> RescueAccess:
    if not isinstance(data, dict):
        raise ProviderError("invalid", "the rescue credentials are not an object")
    address, port, username = data.get("address"), data.get("port", 22), data.get("username")
    password, host_key = data.get("password"), data.get("host_key")
    try:
        ipaddress.ip_address(str(address))
    except ValueError:
        raise ProviderError("invalid", "the rescue system's address is not an IP address"
                            ) from None
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise ProviderError("invalid", "the rescue system's SSH port is not valid")
    if not isinstance(username, str) or not _USERNAME.fullmatch(username):
        raise ProviderError("invalid", "the rescue system's user name is not valid")
    if not isinstance(password, str) or not 8 <= len(password) <= 256:
        raise ProviderError("invalid", "the rescue system's password is missing or not valid")
    # Without the host key the executor would send the password to whoever answers.
    if not isinstance(host_key, str) or not _HOST_KEY.fullmatch(" ".join(host_key.split()[:2])):
        raise ProviderError("invalid", "the provider did not give the rescue system's SSH "
                                       "host key, so it cannot be authenticated")
    return RescueAccess(address=str(address), port=port, username=username, password=password,
                        host_key=" ".join(host_key.split()[:2]))


def check_provider_url(url: str) -> str:
    """``url`` if the provider API may be called there, else a ``ValueError`` saying why.

    The API carries the bearer token and the rescue system's one-time root password, so it
    is HTTPS only; plain ``http://`` is allowed to a loopback address alone (the lab's
    stand-in on 127.0.0.1), where nothing crosses a network.
    """
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme == "https" and parsed.hostname:
        return url
    if parsed.scheme == "http" and parsed.hostname:
        host = parsed.hostname
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if loopback:
            return url
        raise ValueError("the rescue provider URL must be https:// (plain http:// only to a "
                         "loopback address)")
    raise ValueError("the rescue provider URL must be an https:// URL")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an error: following one would send the bearer token to another place,
    possibly over plain HTTP."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str,
                         headers: Any, newurl: str) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


class HttpRescueProvider:
    """The provider API over HTTP(S). Blocking ``urllib`` calls run in a thread, each
    bounded by ``timeout_s``; no call is retried here (the caller's poll loop is the retry)."""

    def __init__(self, base_url: str, *, token: str, timeout_s: float = 15.0) -> None:
        check_provider_url(base_url)
        self._base = base_url.rstrip("/")
        self._token = token
        self._timeout = timeout_s

    async def boot_rescue(self, server_id: str, *, request_id: str) -> ProviderAction:
        return await self._start(server_id, "boot-rescue", request_id)

    async def boot_disk(self, server_id: str, *, request_id: str) -> ProviderAction:
        return await self._start(server_id, "boot-disk", request_id)

    async def action(self, action_id: str) -> ProviderAction:
        body = await self._call("GET", f"/v1/actions/{quote(action_id, safe='')}")
        return parse_action(body.get("action"))

    async def rescue_credentials(self, action_id: str) -> RescueAccess:
        return parse_access(await self._call(
            "POST", f"/v1/actions/{quote(action_id, safe='')}/rescue-credentials", {}))

    async def _start(self, server_id: str, what: str, request_id: str) -> ProviderAction:
        body = await self._call("POST", f"/v1/servers/{quote(server_id, safe='')}/actions/{what}",
                                {"request_id": request_id})
        return parse_action(body.get("action"))

    async def _call(self, method: str, path: str,
                    payload: dict[str, Any] | None = None) -> dict[str, Any]:
        return await asyncio.to_thread(self._call_sync, method, path, payload)

    def _call_sync(self, method: str, path: str,
                   payload: dict[str, Any] | None) -> dict[str, Any]:
        data = json.dumps(payload).encode() if payload is not None else None
        request = urllib.request.Request(  # noqa: S310 - scheme checked in __init__
            self._base + path, data=data, method=method,
            headers={"Authorization": f"Bearer {self._token}", "Accept": "application/json",
                     **({"Content-Type": "application/json"} if data is not None else {})})
        try:
            with _OPENER.open(request, timeout=self._timeout) as response:
                raw = response.read(MAX_BODY + 1)
        except urllib.error.HTTPError as exc:
            detail = _error_text(exc.read(MAX_BODY))
            kind: ProviderErrorKind = "unavailable" if exc.code >= 500 or exc.code == 429 \
                else "rejected"
            raise ProviderError(kind, f"{method} {path}: HTTP {exc.code} {detail}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ProviderError("unavailable", f"{method} {path}: {type(exc).__name__} "
                                               f"{str(reason)[:200]}") from None
        if len(raw) > MAX_BODY:
            raise ProviderError("invalid", f"{method} {path}: answer larger than {MAX_BODY} bytes")
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            raise ProviderError("invalid", f"{method} {path}: the answer is not JSON") from None
        if not isinstance(body, dict):
            raise ProviderError("invalid", f"{method} {path}: the answer is not an object")
        return body


def _error_text(raw: bytes) -> str:
    try:
        body = json.loads(raw)
    except ValueError:
        return ""
    if not isinstance(body, dict):
        return ""
    code, message = body.get("error"), body.get("message")
    return " ".join(f"{code or ''}: {message or ''}".split())[:300]
