"""Reaching the customer's server: open the credentials, connect, probe — audited.

The customer's credentials are opened only into the run's memory (and taught to the
process redactor first); every connection attempt leaves an audit record of the host key
offered and accepted, or why the connection failed or was refused. The record goes with the
run's next flush (:mod:`services.executor.outbox`): the access decision and its
announcement come next, before anything runs on the server.
"""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry import trace

from schemas.events import AuthorizationVerified
from services.executor.access import Probe, ServerFacts, first_use_allowed
from services.executor.claims import Claim
from services.executor.outbox import ClaimRecords
from services.executor.ssh import (
    Credential,
    HostKeyMismatch,
    SshConnector,
    SshError,
    SshSession,
    SshTarget,
)
from services.runtime.crypto import PrivateSealingKey, open_text
from services.runtime.telemetry import client_span


def open_credentials(verdict: AuthorizationVerified,
                     sealing_keys: Mapping[str, PrivateSealingKey]) -> Credential:
    """The customer's credentials; raises CryptoError when they cannot be opened."""
    sealed = verdict.ticket.credentials
    # open_text teaches the plaintext to the process redactor before returning it.
    secret = open_text(sealed.sealed, sealing_keys)
    if sealed.kind == "password":
        return Credential(username=sealed.username, password=secret)
    return Credential(username=sealed.username, private_key=secret)


class ServerAccess:
    def __init__(self, *, connector: SshConnector, records: ClaimRecords,
                 tracer: trace.Tracer) -> None:
        self._connector = connector
        self._records = records
        self._tracer = tracer

    async def probe(self, claim: Claim, verdict: AuthorizationVerified,
                    credential: Credential) -> tuple[Probe, SshSession | None]:
        try:
            session = await self.connect(claim, verdict, credential)
        except HostKeyMismatch as exc:
            return Probe(outcome="host_key_mismatch", detail=str(exc)), None
        except SshError as exc:
            return Probe(outcome=exc.outcome, detail=str(exc)), None
        return Probe(outcome="ok", privileged=session.privileged), session

    async def connect(self, claim: Claim, verdict: AuthorizationVerified,
                      credential: Credential) -> SshSession:
        server = verdict.server
        # A rescue-capable server's key is never trusted on first use (access.first_use_allowed).
        target = SshTarget(host=str(server.ip), port=server.ssh_port,
                           service_id=server.service_id, inventory_key=server.ssh_host_key,
                           trust_first_use=first_use_allowed(ServerFacts(
                               type=server.type, os_family=server.os_family,
                               ipkvm=server.ipkvm, rescue=server.rescue),
                               server.ssh_host_key))
        where = {"host": target.host, "port": target.port, "service_id": target.service_id}
        audit = self._records.audit_later
        with client_span(self._tracer, "ssh connect", host=target.host, port=target.port):
            try:
                session = await self._connector.open(target, credential,
                                                      platform=server.os_family,
                                                      ticket_id=claim.ticket_id)
            except HostKeyMismatch as exc:
                audit(claim, f"hostkey-mismatch:{claim.id}:{claim.attempt}",
                      "host_key_mismatch",
                      {**where, "expected": exc.expected, "offered": exc.offered,
                       "pinned_by": exc.source, "refused": True})
                raise
            except SshError as exc:
                audit(claim, f"ssh-failed:{claim.id}:{claim.attempt}", "ssh_connect_failed",
                      {**where, "outcome": exc.outcome, "detail": str(exc)})
                raise
        key = session.host_key
        audit(claim, f"hostkey:{claim.id}:{claim.attempt}", "host_key", {
            **where, "fingerprint": key.fingerprint, "source": key.source,
            "trusted_on_first_use": key.newly_pinned, "user": credential.username,
            "privilege": session.privilege})
        return session
