"""The dev key set on disk: created owner-only, never silently replaced, loaded strictly."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.runtime import redaction
from services.runtime.crypto import open_text, seal_text, sign, verify
from services.runtime.keys import (
    AUDIT_SERVICES,
    KEYS_DIR_ENV,
    KeyFileError,
    KeyFileExistsError,
    default_keys_dir,
    init_keys,
    key_set_paths,
    load_audit_signing_key,
    load_audit_verify_keys,
    load_sealing_keyring,
    load_sealing_public,
    load_signing_key,
    load_verify_keys,
)

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")


@pytest.fixture(autouse=True, scope="module")
def _own_default_redactor() -> Iterator[None]:
    """Sealing/opening teaches the process-wide redactor; keep this module's test secrets
    (hypothesis generates values like four spaces) from masking other tests' output."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(redaction, "_DEFAULT", redaction.Redactor(max_secrets=256))
        yield


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_writes_a_key_set_that_seals_opens_signs_and_verifies(tmp_path: Path) -> None:
    paths = init_keys(tmp_path / "keys")

    public = load_sealing_public(paths.sealing_public)
    keyring = load_sealing_keyring(paths.sealing_private)
    assert open_text(seal_text("pw-1234", public), keyring) == "pw-1234"

    signature = sign(b"verdict", load_signing_key(paths.signing_private))
    verify(b"verdict", signature, load_verify_keys(paths.signing_public))


def test_key_files_follow_the_documented_layout(tmp_path: Path) -> None:
    paths = init_keys(tmp_path)

    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "audit-auth.key", "audit-auth.pub", "audit-executor.key", "audit-executor.pub",
        "audit-intake.key", "audit-intake.pub", "audit-notifier.key", "audit-notifier.pub",
        "auth-signing.key",
        "auth-signing.pub",
        "executor-sealing.key",
        "executor-sealing.pub",
        "intake-signing.key",
        "intake-signing.pub",
        "notifier-signing.key",
        "notifier-signing.pub",
        "operator-signing.key",
        "operator-signing.pub",
    ]
    private = json.loads(paths.sealing_private.read_text())
    public = json.loads(paths.sealing_public.read_text())
    assert set(private) == {"key_id", "algorithm", "private_key"}
    assert set(public) == {"key_id", "algorithm", "public_key"}
    assert private["algorithm"] == public["algorithm"] == "x25519-sealedbox"
    assert private["key_id"] == public["key_id"]
    assert public["key_id"].startswith("exec-")
    signing = json.loads(paths.signing_public.read_text())
    assert signing["algorithm"] == "ed25519"
    assert signing["key_id"].startswith("auth-")


@posix_only
def test_private_key_files_are_owner_only(tmp_path: Path) -> None:
    old_umask = os.umask(0)  # even a permissive umask must not widen them
    try:
        paths = init_keys(tmp_path / "keys")
    finally:
        os.umask(old_umask)

    assert _mode(paths.sealing_private) == 0o600
    assert _mode(paths.signing_private) == 0o600
    assert _mode(paths.sealing_public) == 0o644
    assert _mode(paths.directory) == 0o700


def test_init_refuses_to_overwrite_existing_keys(tmp_path: Path) -> None:
    paths = init_keys(tmp_path)
    before = paths.sealing_private.read_bytes()

    with pytest.raises(KeyFileExistsError, match="already exist"):
        init_keys(tmp_path)
    assert paths.sealing_private.read_bytes() == before


def test_init_refuses_when_only_part_of_a_key_set_exists(tmp_path: Path) -> None:
    (tmp_path / "auth-signing.pub").write_text("{}")

    with pytest.raises(KeyFileExistsError, match=r"auth-signing\.pub"):
        init_keys(tmp_path)


def test_init_with_force_replaces_the_keys(tmp_path: Path) -> None:
    first = load_sealing_public(init_keys(tmp_path).sealing_public)
    second = load_sealing_public(init_keys(tmp_path, force=True).sealing_public)

    assert first.key_id != second.key_id
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@posix_only
def test_group_or_world_readable_private_key_is_refused_with_the_fix(tmp_path: Path) -> None:
    paths = init_keys(tmp_path)
    paths.sealing_private.chmod(0o644)

    with pytest.raises(KeyFileError, match="chmod 600") as caught:
        load_sealing_keyring(paths.sealing_private)
    assert "0644" in str(caught.value)

    paths.signing_private.chmod(0o640)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_signing_key(paths.signing_private)


def test_missing_key_file_points_to_keys_init(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="intervene keys init"):
        load_sealing_public(tmp_path / "executor-sealing.pub")


def test_bad_json_is_reported_without_quoting_the_file(tmp_path: Path) -> None:
    paths = init_keys(tmp_path)
    material = json.loads(paths.sealing_private.read_text())["private_key"]
    paths.sealing_private.write_text('{"private_key": "' + material + '", oops')

    with pytest.raises(KeyFileError, match="not valid JSON") as caught:
        load_sealing_keyring(paths.sealing_private)
    assert material not in str(caught.value)
    assert caught.value.__context__ is None


def test_public_file_of_the_wrong_kind_is_refused(tmp_path: Path) -> None:
    paths = init_keys(tmp_path)

    with pytest.raises(KeyFileError, match="'ed25519'"):
        load_sealing_public(paths.signing_public)
    with pytest.raises(KeyFileError, match="x25519-sealedbox"):
        load_verify_keys(paths.sealing_public)


def test_private_file_of_the_wrong_kind_is_refused(tmp_path: Path) -> None:
    paths = init_keys(tmp_path)

    with pytest.raises(KeyFileError, match="expected"):
        load_signing_key(paths.sealing_private)


def test_public_file_given_as_private_is_refused(tmp_path: Path) -> None:
    paths = init_keys(tmp_path)
    paths.sealing_public.chmod(0o600)

    with pytest.raises(KeyFileError, match="private_key"):
        load_sealing_keyring(paths.sealing_public)


def test_bad_key_material_is_refused_without_echoing_it(tmp_path: Path) -> None:
    path = tmp_path / "executor-sealing.pub"
    path.write_text(
        json.dumps({"key_id": "exec-0123", "algorithm": "x25519-sealedbox", "public_key": "AAAA"})
    )

    with pytest.raises(KeyFileError, match="32 bytes"):
        load_sealing_public(path)


def test_rotation_keyring_loads_old_and_new_private_keys(tmp_path: Path) -> None:
    old = init_keys(tmp_path / "old")
    new = init_keys(tmp_path / "new")
    keyring = load_sealing_keyring(old.sealing_private, new.sealing_private)

    for paths in (old, new):
        public = load_sealing_public(paths.sealing_public)
        assert public.key_id in keyring
        assert open_text(seal_text("rotating", public), keyring) == "rotating"


def test_loading_a_keyring_needs_at_least_one_file() -> None:
    with pytest.raises(KeyFileError):
        load_sealing_keyring()
    with pytest.raises(KeyFileError):
        load_verify_keys()


def test_default_keys_dir_honours_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEYS_DIR_ENV, str(tmp_path / "elsewhere"))
    assert default_keys_dir() == tmp_path / "elsewhere"

    monkeypatch.delenv(KEYS_DIR_ENV)
    assert default_keys_dir().parts[-2:] == ("var", "keys")


def test_key_set_paths_touch_nothing(tmp_path: Path) -> None:
    paths = key_set_paths(tmp_path / "absent")

    assert paths.sealing_private == tmp_path / "absent" / "executor-sealing.key"
    assert not (tmp_path / "absent").exists()


def test_every_audit_writer_gets_its_own_owner_only_audit_key(tmp_path: Path) -> None:
    paths = init_keys(tmp_path)
    keys = load_audit_verify_keys(tmp_path)
    assert sorted(service for service, _ in keys.values()) == sorted(AUDIT_SERVICES)
    for service in AUDIT_SERVICES:
        private = json.loads(paths.audit_private(service).read_text())
        assert private["service"] == service
        assert private["key_id"].startswith(f"audit-{service}-")
        if os.name == "posix":
            assert _mode(paths.audit_private(service)) == 0o600
        signing = load_audit_signing_key(paths.audit_private(service), service)
        assert keys[signing.key_id] == (service, signing.verify_key)
    # One service's key file cannot be loaded as another's.
    with pytest.raises(KeyFileError, match="belongs to 'notifier', not 'executor'"):
        load_audit_signing_key(paths.audit_private("notifier"), "executor")


def test_an_older_key_set_gets_audit_keys_without_touching_the_rest(tmp_path: Path) -> None:
    paths = init_keys(tmp_path)
    for path in paths.audit_files():
        path.unlink()
    before = paths.sealing_private.read_bytes()
    init_keys(tmp_path)
    assert paths.sealing_private.read_bytes() == before
    assert all(path.exists() for path in paths.audit_files())


def test_the_notifier_gets_its_own_owner_only_signing_key(tmp_path: Path) -> None:
    paths = init_keys(tmp_path)
    key = load_signing_key(paths.notifier_signing_private)
    assert key.key_id.startswith("notifier-")
    assert key.key_id != load_signing_key(paths.signing_private).key_id  # not auth's
    if os.name == "posix":
        assert _mode(paths.notifier_signing_private) == 0o600
    verify(b"report", sign(b"report", key), load_verify_keys(paths.notifier_signing_public))


def test_an_older_key_set_gets_the_notifier_key_without_touching_the_rest(
        tmp_path: Path) -> None:
    paths = init_keys(tmp_path)
    paths.notifier_signing_private.unlink()
    paths.notifier_signing_public.unlink()
    before = {p: p.read_bytes() for p in (*paths.all(), *paths.audit_files())}
    init_keys(tmp_path)
    assert {p: p.read_bytes() for p in before} == before
    assert paths.notifier_signing_private.exists()
    assert paths.notifier_signing_public.exists()


def test_intake_gets_its_own_signing_key_for_tickets(tmp_path: Path) -> None:
    paths = init_keys(tmp_path)
    key = load_signing_key(paths.intake_signing_private)
    assert key.key_id.startswith("intake-")
    if os.name == "posix":
        assert _mode(paths.intake_signing_private) == 0o600
    verify(b"ticket", sign(b"ticket", key), load_verify_keys(paths.intake_signing_public))
