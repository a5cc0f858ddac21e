"""Auth holds one key, its signing key, and has no way to open the credentials it passes on."""

from __future__ import annotations

import ast
import builtins
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.auth.app import build
from services.auth.settings import AuthSettings
from services.runtime.keys import init_keys, key_set_paths

REPO = Path(__file__).resolve().parents[3]
AUTH_CODE = [
    *sorted((REPO / "services" / "auth").rglob("*.py")),
    REPO / "services" / "cli" / "commands_auth.py",
]
# Everything that opens a sealed secret or reads the executor's private key.
FORBIDDEN = {
    "open_sealed",
    "open_text",
    "load_sealing_keyring",
    "PrivateSealingKey",
    "SEALING_PRIVATE_FILE",
    "SealedBox",
    "crypto_box_seal_open",
    "PrivateKey",
    "nacl.public",
}


def _names(tree: ast.AST) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            yield node.id
        elif isinstance(node, ast.Attribute):
            yield node.attr
        elif isinstance(node, ast.ImportFrom):
            yield node.module or ""
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and "executor-sealing" in node.value
        ):
            yield "executor-sealing"


@pytest.mark.parametrize("path", AUTH_CODE, ids=lambda p: p.name)
def test_no_code_path_in_auth_opens_a_sealed_secret(path: Path):
    used = set(_names(ast.parse(path.read_text(), filename=str(path))))
    assert not used & (FORBIDDEN | {"executor-sealing"}), path


def test_auth_settings_name_only_the_signing_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.delenv("AUTH_SIGNING_KEY", raising=False)
    monkeypatch.setenv("INTERVENTION_KEYS_DIR", str(tmp_path))
    settings = AuthSettings()
    assert settings.signing_key_path == tmp_path / "auth-signing.key"
    paths = [v for v in settings.model_dump().values() if isinstance(v, Path | str)]
    assert not any("sealing" in str(v) for v in paths)
    monkeypatch.setenv("AUTH_SIGNING_KEY", str(tmp_path / "elsewhere.key"))
    assert AuthSettings().signing_key_path == tmp_path / "elsewhere.key"


async def test_bootstrap_opens_only_auth_signing_key_and_intakes_public_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    paths = init_keys(tmp_path / "keys")
    opened: list[Path] = []
    real_open = builtins.open
    real_io_open = io.open

    def spy(file: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(file, str | os.PathLike):
            opened.append(Path(file).resolve())
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    monkeypatch.setattr(io, "open", spy)
    # The executor's private key is absent: touching it would fail the build.
    paths.sealing_private.unlink()
    service = build(
        AuthSettings(intervention_keys_dir=str(tmp_path / "keys"), auth_signing_key=None)
    )
    monkeypatch.setattr(builtins, "open", real_open)
    monkeypatch.setattr(io, "open", real_io_open)
    key_files = {p for p in opened if p.parent == paths.directory.resolve()}
    assert key_files == {key_set_paths(paths.directory).signing_private.resolve(),
                         paths.intake_signing_public.resolve()}  # to check tickets
    assert service.deps.signer.key_id.startswith("auth-")
    await service.runtime.mongo.close()
