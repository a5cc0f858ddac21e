"""One server as the provider records it (ARCHITECTURE §6): a pure value.

Auth's decision (:mod:`services.auth.verdict`) reads these; where they come from — the
MongoDB inventory, an import file — is :mod:`services.auth.inventory`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    IPvAnyAddress,
    field_validator,
)

from schemas.common import AccountId, Label, ServiceId, ServiceName, SshPublicKey

__all__ = ["FIELDS", "REQUIRED_FIELDS", "ServerRecord", "name_key"]


def _words(value: object) -> object:
    # CSV cells hold lists as space-separated words (ARCHITECTURE §6); JSON may give either.
    if isinstance(value, str):
        return tuple(value.split())
    return tuple(value) if isinstance(value, list) else value


def name_key(service_name: str) -> str:
    """How service names are compared: customers type ``Web-01`` for ``web-01``."""
    return " ".join(service_name.casefold().split())


class ServerRecord(BaseModel):
    """One server in the provider's records.

    Lax validation (not the contracts' strict mode) on purpose: rows arrive as CSV text, so
    ``"22"`` must become 22 and ``"yes"``/``"true"``/``"1"`` a boolean. ``ips[0]`` is the
    primary address, the one a verdict names when the customer gave no address.
    ``authorized_contacts`` are account ids, besides the owner's, allowed to request work on
    this server (the helpdesk's sub-accounts / contacts with technical permission).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    service_id: ServiceId
    service_name: ServiceName
    ips: Annotated[
        tuple[IPvAnyAddress, ...], Field(min_length=1, max_length=64), BeforeValidator(_words)
    ]
    account_id: AccountId
    authorized_contacts: Annotated[
        tuple[AccountId, ...], Field(max_length=100), BeforeValidator(_words)
    ] = ()
    type: Literal["dedicated", "vps"]
    os_family: Literal["linux", "windows"]
    ipkvm: bool
    rescue: bool
    ssh_port: int = Field(default=22, ge=1, le=65535)
    ssh_host_key: SshPublicKey | None = None
    datacenter: Label

    @field_validator("ips")
    @classmethod
    def _distinct_ips(cls, value: tuple[Any, ...]) -> tuple[Any, ...]:
        if len(set(value)) != len(value):
            raise ValueError("lists the same address twice")
        return value

    def may_act(self, account_id: str) -> bool:
        """Whether ``account_id`` owns this server or is one of its authorized contacts."""
        return account_id == self.account_id or account_id in self.authorized_contacts

    def to_document(self) -> dict[str, Any]:
        doc = self.model_dump(mode="json")
        doc["_id"] = self.service_id
        return doc

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> ServerRecord:
        return cls.model_validate({k: v for k, v in doc.items() if k in FIELDS})


FIELDS: Final[tuple[str, ...]] = tuple(ServerRecord.model_fields)
REQUIRED_FIELDS: Final[frozenset[str]] = frozenset(
    name for name, info in ServerRecord.model_fields.items() if info.is_required()
)
