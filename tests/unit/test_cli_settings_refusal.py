"""Impossible settings make every `intervene` command say so in one line and exit 2.

The executor's commands only read the store, but their settings validate the Kafka TLS/SASL
variables like a service's; a ``SettingsError`` there used to end in a traceback.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from services.cli.main import main
from services.runtime.keys import init_keys

PASSWORD = "cli-Sasl-pw-7f3e91"


@pytest.fixture
def impossible_kafka(monkeypatch: pytest.MonkeyPatch) -> None:
    """SASL_SSL with a password but no user name: a SettingsError naming the variable."""
    for name in ("KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD_FILE",
                 "KAFKA_SSL_CAFILE", "KAFKA_SSL_CERTFILE", "KAFKA_SSL_KEYFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", PASSWORD)
    # Never reached: the settings fail first. Were they not, nothing answers here.
    monkeypatch.setenv("MONGODB_URI", "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=200")


@pytest.mark.usefixtures("impossible_kafka")
@pytest.mark.parametrize("argv", [
    ["executor", "claims"],
    ["executor", "manual", "--all"],
    ["executor", "vault-key", "register", "acct-1", "<public key>"],
    ["status", "--stuck"],
])
def test_a_settings_error_is_one_line_and_exit_2(
        argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    public = init_keys(tmp_path / "keys").sealing_public
    argv = [str(public) if a == "<public key>" else a for a in argv]

    assert main(argv) == 2

    out, err = capsys.readouterr()
    assert out == ""
    [line] = err.splitlines()
    assert line == ("error: KAFKA_SECURITY_PROTOCOL=SASL_SSL needs KAFKA_SASL_USERNAME")
    assert PASSWORD not in out + err


def test_other_errors_still_propagate(monkeypatch: pytest.MonkeyPatch) -> None:
    import services.cli.commands_executor as commands

    def broken(*_: object, **__: object) -> int:
        raise RuntimeError("a bug, not an operator's fix")

    monkeypatch.setattr(commands, "_print_rows", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["executor", "claims"])
