"""A local Matrix Synapse homeserver (SQLite, loopback, no federation): the demo's chat, and
the one the notifier's and the end-to-end tests use (``tests/integration/synapse_fixture.py``
wraps :func:`start_homeserver` in a session fixture).

- The generated base config (signing key, secrets) is made once with
  ``python -m synapse.app.homeserver --generate-config`` and kept in ``<home>/base``
  (``var/synapse`` by default, git-ignored), saving ~5 s per start; each start runs from its
  own directory ``<home>/run-<pid>-<id>`` (fresh SQLite database, media store, log) on a
  free port, with ``deploy/local/synapse/homeserver.overrides.yaml`` merged in (loopback
  listener, raised ``rc_*`` rate limits, no key servers).
- Ready when ``/_matrix/client/versions`` answers.
- Users are registered through the shared-secret admin API (what ``register_new_matrix_user``
  does, without a process per user).

``matrix-synapse`` is a development dependency (``pip install -e '.[dev]'``); it brings
PyYAML, which is imported only when a homeserver is started.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
OVERRIDES = ROOT / "deploy" / "local" / "synapse" / "homeserver.overrides.yaml"
SERVER_NAME = "localhost"
READY_TIMEOUT_S = 90.0


def default_home() -> Path:
    return Path(os.environ.get("INTERVENE_VAR_DIR", ROOT / "var")) / "synapse"


def synapse_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("synapse") is not None


@dataclass(frozen=True)
class MatrixUser:
    user_id: str
    password: str
    access_token: str


@dataclass
class Homeserver:
    url: str
    server_name: str
    directory: Path
    shared_secret: str
    process: subprocess.Popen[bytes]

    # -- client-server API, synchronous: fixtures set rooms up before the event loop runs --

    def request(self, method: str, path: str, body: dict[str, Any] | None = None, *,
                token: str | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        # Always http://127.0.0.1:<port>: the homeserver this module started.
        request = urllib.request.Request(self.url + path, data=data, method=method)  # noqa: S310
        request.add_header("Content-Type", "application/json")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                answer: dict[str, Any] = json.loads(response.read() or b"{}")
                return answer
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"{method} {path}: HTTP {exc.code} {exc.read()[:300]!r}") from None

    def register(self, localpart: str, *, password: str | None = None,
                 admin: bool = False) -> MatrixUser:
        """A new user, through the shared-secret admin registration."""
        password = password or f"pw-{uuid.uuid4().hex}"
        nonce = self.request("GET", "/_synapse/admin/v1/register")["nonce"]
        message = "\x00".join([nonce, localpart, password, "admin" if admin else "notadmin"])
        mac = hmac.new(self.shared_secret.encode(), message.encode(), hashlib.sha1)
        answer = self.request("POST", "/_synapse/admin/v1/register", {
            "nonce": nonce, "username": localpart, "password": password, "admin": admin,
            "mac": mac.hexdigest()})
        return MatrixUser(user_id=answer["user_id"], password=password,
                          access_token=answer["access_token"])

    def create_room(self, creator: MatrixUser, *, invite: list[MatrixUser],
                    name: str = "on-call") -> str:
        """A private room ``creator`` made, with ``invite`` invited (bots join themselves)."""
        room = self.request("POST", "/_matrix/client/v3/createRoom", {
            "preset": "private_chat", "name": name,
            "invite": [u.user_id for u in invite]}, token=creator.access_token)
        return str(room["room_id"])

    def join(self, user: MatrixUser, room_id: str) -> None:
        self.request("POST", f"/_matrix/client/v3/join/{_quote(room_id)}", {},
                     token=user.access_token)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        shutil.rmtree(self.directory, ignore_errors=True)

    @property
    def log_path(self) -> Path:
        return self.directory / "homeserver.log"


def _quote(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _base_config(home: Path) -> Path:
    """The generated config, keys and secrets: made once, reused by later starts."""
    base = home / "base"
    if (base / "homeserver.yaml").exists():
        return base
    home.mkdir(parents=True, exist_ok=True)
    staging = home / f"base-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    subprocess.run(
        [sys.executable, "-m", "synapse.app.homeserver", "--generate-config",
         "--server-name", SERVER_NAME, "--report-stats=no",
         "-c", str(staging / "homeserver.yaml"), "--data-directory", str(staging),
         "--config-directory", str(staging)],
        check=True, capture_output=True, cwd=staging, timeout=120,
    )
    try:
        staging.rename(base)  # atomic: a concurrent start either wins or reuses ours
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
    return base


def _run_config(base: Path, run: Path, port: int) -> tuple[Path, str]:
    import yaml  # matrix-synapse's own dependency: present wherever Synapse is

    config = yaml.safe_load((base / "homeserver.yaml").read_text())
    config.update(yaml.safe_load(OVERRIDES.read_text()))
    config["listeners"][0]["port"] = port
    config["pid_file"] = str(run / "homeserver.pid")
    config["database"] = {"name": "sqlite3", "args": {"database": str(run / "homeserver.db")}}
    config["media_store_path"] = str(run / "media_store")
    config["signing_key_path"] = str(base / f"{SERVER_NAME}.signing.key")
    log_config = yaml.safe_load((base / f"{SERVER_NAME}.log.config").read_text())
    log_config["handlers"]["file"]["filename"] = str(run / "homeserver.log")
    log_config["root"]["level"] = "WARNING"
    (run / "log.config").write_text(yaml.safe_dump(log_config))
    config["log_config"] = str(run / "log.config")
    path = run / "homeserver.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, str(config["registration_shared_secret"])


def _remove_stale_runs(home: Path) -> None:
    """Run directories left by processes that died without stopping their homeserver."""
    for run in home.glob("run-*-*"):
        pid_file = run / "homeserver.pid"
        owners = [run.name.split("-")[1]]  # the process that made it
        if pid_file.exists():
            owners.append(pid_file.read_text().strip())  # and its homeserver
        if not any(_alive(owner) for owner in owners):
            shutil.rmtree(run, ignore_errors=True)


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (OSError, ValueError):
        return True  # another user's process, or not a pid: leave it alone
    return True


def start_homeserver(*, home: Path | None = None, new_session: bool = False) -> Homeserver:
    """Start a homeserver and wait until it answers.

    ``new_session`` puts it in its own process group, so a Ctrl-C in the terminal reaches
    only the caller, which then stops it in order (the demo); a test session leaves it in
    its own group so it never outlives an interrupted run.
    """
    home = home or default_home()
    base = _base_config(home)
    _remove_stale_runs(home)
    run = home / f"run-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    run.mkdir(parents=True)
    port = _free_port()
    config, secret = _run_config(base, run, port)
    with (run / "stdout.log").open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "synapse.app.homeserver", "-c", str(config)],
            cwd=run, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=new_session,
        )
    server = Homeserver(url=f"http://127.0.0.1:{port}", server_name=SERVER_NAME,
                        directory=run, shared_secret=secret, process=process)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = (run / "stdout.log").read_text(errors="replace")[-2000:]
            server.stop()
            raise RuntimeError(f"synapse exited with {process.returncode}:\n{tail}")
        with contextlib.suppress(OSError, RuntimeError):
            server.request("GET", "/_matrix/client/versions")
            return server
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"synapse did not answer within {READY_TIMEOUT_S:.0f}s")
