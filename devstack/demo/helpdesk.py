"""The helpdesk's two doors into the system, as the demo, tests and benchmark use them.

- :func:`post_ticket`: ``POST /v1/tickets`` on intake's HTTP API with plaintext credentials
  (intake seals them at once);
- :func:`publish_sealed`: the request sealed to the executor's public key first, then
  published on ``helpdesk.ticket-requests`` keyed by its ticket id — exactly what a
  helpdesk integration does with ``intervene seal`` / ``intervene submit --via kafka``.

Both sign as a registered integration (:class:`~services.intake.signing.Signer`), as every
caller of intake must.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from services.intake.signing import Signer
from services.runtime.crypto import PublicSealingKey


@dataclass(frozen=True, kw_only=True)
class HttpAnswer:
    status: int
    body: dict[str, Any]


def _post(url: str, document: dict[str, Any], timeout: float, signer: Signer) -> HttpAnswer:
    payload = json.dumps(document).encode()
    request = urllib.request.Request(  # noqa: S310 - the URL is our own intake on loopback
        f"{url}/v1/tickets", data=payload, method="POST",
        headers={"Content-Type": "application/json",
                 **signer.headers("POST", "/v1/tickets", payload)})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        body = json.loads(raw)
    except ValueError:
        body = {"raw": raw[:500].decode(errors="replace")}
    return HttpAnswer(status=status, body=body if isinstance(body, dict) else {"body": body})


async def post_ticket(url: str, document: dict[str, Any], *, signer: Signer,
                      timeout: float = 30.0) -> HttpAnswer:
    # The standard library client in a thread: no HTTP client dependency for the CLI.
    return await asyncio.to_thread(_post, url, document, timeout, signer)


async def publish_sealed(document: dict[str, Any], *, recipient: PublicSealingKey,
                         bootstrap: str, prefix: str, signer: Signer) -> str:
    """Seal the request's credentials and publish it on the helpdesk topic; the topic."""
    from services.cli.commands_intake import publish_request
    from services.intake.sealing import seal_request

    sealed = seal_request(document, recipient=recipient)
    return await publish_request(sealed, bootstrap=bootstrap, prefix=prefix, signer=signer)
