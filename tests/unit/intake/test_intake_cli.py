"""`intervene seal` and `intervene submit`: the helpdesk's side, never echoing a secret."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from services.cli.main import build_parser, main
from services.intake.examples import example_request
from services.runtime.crypto import open_text
from services.runtime.keys import init_keys, key_set_paths, load_sealing_keyring

CANARY = "Canary-Cli-55d0e1"


@pytest.fixture
def keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "keys"
    init_keys(directory)
    monkeypatch.setenv("INTERVENTION_KEYS_DIR", str(directory))
    return directory


def test_both_commands_are_registered() -> None:
    parser = build_parser()
    assert parser.parse_args(["seal", "--username", "root"]).func.__name__ == "_cmd_seal"
    assert parser.parse_args(["submit", "t.json", "--via", "kafka"]).via == "kafka"
    with pytest.raises(SystemExit):
        parser.parse_args(["seal", "--password", CANARY])  # no secrets on the command line


def test_seal_reads_the_password_from_stdin_and_prints_only_ciphertext(
    keys: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(CANARY + "\n"))
    assert main(["seal", "--username", "root", "--password-stdin"]) == 0
    out, err = capsys.readouterr()
    assert CANARY not in out + err
    sealed = json.loads(out)
    assert (sealed["username"], sealed["kind"]) == ("root", "password")
    keyring = load_sealing_keyring(key_set_paths(keys).sealing_private)
    from schemas import SealedSecret

    assert open_text(SealedSecret.model_validate(sealed["sealed"]), keyring) == CANARY


def test_seal_a_private_key_file(keys: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    key_file = tmp_path / "id_ed25519"
    key_file.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaA==\n"
                        "-----END OPENSSH PRIVATE KEY-----\n")
    assert main(["seal", "--username", "admin", "--private-key-file", str(key_file)]) == 0
    out, _ = capsys.readouterr()
    assert "b3BlbnNzaA" not in out
    assert json.loads(out)["kind"] == "private_key"


def test_seal_a_whole_request_document(keys: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ticket.json"
    path.write_text(json.dumps(example_request(credentials={"username": "root",
                                                            "password": CANARY})))
    assert main(["seal", "--request", str(path)]) == 0
    out, err = capsys.readouterr()
    assert CANARY not in out + err
    assert "sealed" in json.loads(out)["credentials"]


def test_seal_refuses_an_empty_password_without_a_traceback(
    keys: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["seal", "--username", "root", "--password-stdin"]) == 2
    assert "credentials" in capsys.readouterr().err


def test_seal_without_a_key_set_says_how_to_make_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("INTERVENTION_KEYS_DIR", str(tmp_path / "none"))
    monkeypatch.setattr("sys.stdin", io.StringIO(CANARY))
    assert main(["seal", "--username", "root", "--password-stdin"]) == 2
    err = capsys.readouterr().err
    assert "intervene keys init" in err
    assert CANARY not in err


def test_submit_reports_an_unreachable_intake(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ticket.json"
    path.write_text(json.dumps(example_request()))
    monkeypatch.setenv("INTAKE_INTEGRATION_SECRET", "osi_test")
    assert main(["submit", str(path), "--url", "http://127.0.0.1:9",
                 "--integration", "desk"]) == 2
    assert "did not answer" in capsys.readouterr().err


def test_submit_refuses_to_send_unsigned(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INTAKE_INTEGRATION", raising=False)
    monkeypatch.delenv("INTAKE_INTEGRATION_SECRET", raising=False)
    path = tmp_path / "ticket.json"
    path.write_text(json.dumps(example_request()))
    assert main(["submit", str(path), "--url", "http://127.0.0.1:9"]) == 2
    assert "--integration" in capsys.readouterr().err
    assert main(["submit", str(path), "--url", "http://127.0.0.1:9",
                 "--integration", "desk"]) == 2
    err = capsys.readouterr().err
    assert "INTAKE_INTEGRATION_SECRET" in err
    assert "never on the command line" in err
