"""Customer vault keys against the real FerretDB: only an operator's signed registration counts,
and only for tickets verified after it; the CLI registers, signs and audits."""

from __future__ import annotations

import asyncio
import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pymongo.asynchronous.database import AsyncDatabase

from services.cli.main import main
from services.executor.vault import (
    DepositTarget,
    MongoCredentialVault,
    VaultIssuer,
    VaultKeyRefused,
)
from services.runtime.audit import verify_chain
from services.runtime.crypto import PrivateSealingKey, SigningKey
from services.runtime.keys import (
    OPERATOR_SIGNING_PUBLIC_FILE,
    init_keys,
    load_verify_keys,
)

pytestmark = pytest.mark.integration

Db = AsyncDatabase[dict[str, Any]]
OPERATOR = SigningKey.generate(key_id_prefix="operator")
NOW = datetime.now(UTC)


def vault(db: Db) -> MongoCredentialVault:
    return MongoCredentialVault(db, {OPERATOR.key_id: OPERATOR.verify_key})


def account() -> str:
    return f"ACC-{PrivateSealingKey.generate().key_id[-8:]}"


async def test_a_registered_key_counts_for_tickets_verified_after_it(mongo_db: Db) -> None:
    acc, customer = account(), PrivateSealingKey.generate(key_id_prefix="cust")
    store = vault(mongo_db)
    await store.register_key(acc, customer.public, operator_key=OPERATOR, operator="ops-anna",
                             at=NOW - timedelta(hours=1))
    key = await store.key_for(acc, verified_at=NOW)
    assert key == customer.public
    with pytest.raises(VaultKeyRefused, match="registered after this ticket was verified"):
        await store.key_for(acc, verified_at=NOW - timedelta(hours=2))


async def test_a_replaced_key_counts_only_for_tickets_verified_after_the_replacement(
        mongo_db: Db) -> None:
    acc = account()
    old, new = (PrivateSealingKey.generate(key_id_prefix="cust") for _ in range(2))
    store = vault(mongo_db)
    await store.register_key(acc, old.public, operator_key=OPERATOR, operator="ops-anna",
                             at=NOW - timedelta(hours=2))
    await store.register_key(acc, new.public, operator_key=OPERATOR, operator="ops-anna",
                             at=NOW)
    assert await store.key_for(acc, verified_at=NOW - timedelta(hours=1)) == old.public
    assert await store.key_for(acc, verified_at=NOW + timedelta(seconds=1)) == new.public


async def test_a_key_written_into_the_store_is_refused_and_the_refusal_is_told(
        mongo_db: Db) -> None:
    acc = account()
    insider = PrivateSealingKey.generate(key_id_prefix="cust")
    await mongo_db[MongoCredentialVault.KEYS].insert_one({
        "_id": acc, "account_id": acc, "key_id": insider.key_id,
        "public_key": base64.b64encode(insider.public.public_key).decode(),
        "registered_at": (NOW - timedelta(days=1)).isoformat()})
    told: list[str] = []

    async def on_refused(reason: str) -> None:
        told.append(reason)

    issuer = VaultIssuer(vault=vault(mongo_db), claim_id="HD-V:1", attempt=1,
                         target=DepositTarget(account_id=acc, ticket_id="HD-V", revision=1,
                                              service_id="SRV-V", verified_at=NOW),
                         on_refused=on_refused)
    reason = await issuer.unavailable()
    assert reason is not None
    assert "not signed by an operator" in reason
    assert "nothing was changed" in reason
    assert len(told) == 1
    assert "not signed by an operator" in told[0]
    with pytest.raises(VaultKeyRefused):
        await issuer.deposit(step_key="s", account="root", secret="n3w-Secret")
    assert await mongo_db[MongoCredentialVault.DEPOSITS].count_documents(
        {"account_id": acc}) == 0


async def test_a_key_signed_by_a_stranger_or_moved_to_another_account_is_refused(
        mongo_db: Db) -> None:
    acc, other = account(), account()
    customer = PrivateSealingKey.generate(key_id_prefix="cust")
    stranger = SigningKey.generate(key_id_prefix="operator")
    await vault(mongo_db).register_key(acc, customer.public, operator_key=stranger,
                                       operator="mallory", at=NOW - timedelta(days=1))
    with pytest.raises(VaultKeyRefused, match="unknown key"):
        await vault(mongo_db).key_for(acc, verified_at=NOW)
    # A genuine registration copied onto another account's document.
    await vault(mongo_db).register_key(acc, customer.public, operator_key=OPERATOR,
                                       operator="ops-anna", at=NOW - timedelta(days=1))
    doc = await mongo_db[MongoCredentialVault.KEYS].find_one({"_id": acc})
    assert doc is not None
    await mongo_db[MongoCredentialVault.KEYS].insert_one({**doc, "_id": other})
    with pytest.raises(VaultKeyRefused, match="registered for"):
        await vault(mongo_db).key_for(other, verified_at=NOW)


async def test_the_cli_registers_a_key_signed_by_the_operator_and_audits_it(
        mongo_db: Db, real_parts: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    keys = init_keys(tmp_path / "keys")
    acc = account()
    assert main(["executor", "vault-key", "init", str(tmp_path / "cust")]) == 0
    for name, value in {"MONGODB_URI": real_parts.mongodb_uri,
                        "MONGODB_DATABASE": mongo_db.name,
                        "INTERVENTION_KEYS_DIR": str(keys.directory)}.items():
        monkeypatch.setenv(name, value)
    before = datetime.now(UTC) - timedelta(milliseconds=1)
    status = await asyncio.to_thread(main, ["executor", "vault-key", "register", acc,
                                            str(tmp_path / "cust" / "customer-vault.pub"),
                                            "--operator", "ops-anna"])
    assert status == 0, capsys.readouterr()
    assert "registered by ops-anna" in capsys.readouterr().out
    trusted = load_verify_keys(keys.directory / OPERATOR_SIGNING_PUBLIC_FILE)
    store = MongoCredentialVault(mongo_db, trusted)
    assert await store.key_for(acc, verified_at=datetime.now(UTC)) is not None
    with pytest.raises(VaultKeyRefused):
        await store.key_for(acc, verified_at=before)
    chain = f"executor-admin-{datetime.now(UTC):%Y%m%d}"
    record = await mongo_db["audit"].find_one({"ticket_id": chain,
                                               "kind": "vault_key_registered",
                                               "data.account_id": acc})
    assert record is not None
    assert record["data"]["operator"] == "ops-anna"
    assert record["actor"] == "executor:operator"
    assert record.get("signature")  # signed with the executor's audit key
    assert (await verify_chain(mongo_db, chain)).ok
