"""The Docker-free local stack: Kafka from Maven Central jars, FerretDB built with Go.

``intervene up`` installs what is missing into a git-ignored cache (``.cache/``), starts
each part as its own process group with its log in ``var/log/``, and waits until the real
thing answers (Kafka returns cluster metadata, FerretDB answers ``ping``). Pid files record
each process's start time as well as its pid, so ``down`` stops exactly what ``up`` started
even if the pid has since been reused by something else.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from services.runtime.announce import announced
from services.runtime.kafka_admin import cluster_metadata, ensure_topics

REPO_ROOT = Path(__file__).resolve().parents[1]
DEPLOY_LOCAL = REPO_ROOT / "deploy" / "local"

# Overridable so a second checkout (say, a clean-clone CI rehearsal) can run beside a
# developer's stack without touching it.
KAFKA_PORT = int(os.environ.get("INTERVENE_KAFKA_PORT", "9092"))
CONTROLLER_PORT = int(os.environ.get("INTERVENE_CONTROLLER_PORT", "9093"))
FERRETDB_PORT = int(os.environ.get("INTERVENE_FERRETDB_PORT", "27017"))
# Two cores, 24 GiB: a 1 GiB heap is plenty for one broker with test traffic.
KAFKA_HEAP = ("-Xms256m", "-Xmx1g")
SERVICES = ("intake", "auth", "executor", "notifier")


class StackError(RuntimeError):
    """A start/stop failure with the cause and the log file a human should read."""


def cache_dir() -> Path:
    return Path(os.environ.get("INTERVENE_CACHE_DIR", REPO_ROOT / ".cache"))


def var_dir() -> Path:
    return Path(os.environ.get("INTERVENE_VAR_DIR", REPO_ROOT / "var"))


# --- process bookkeeping ------------------------------------------------------------


def _start_time(pid: int) -> str | None:
    """Kernel start time of ``pid`` (clock ticks since boot), None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # a zombie has exited; it only waits to be reaped
        return None
    return fields[19]


@dataclass(frozen=True, kw_only=True)
class PidRecord:
    pid: int
    started: str

    def alive(self) -> bool:
        return _start_time(self.pid) == self.started


def _read_pid(path: Path) -> PidRecord | None:
    try:
        data = json.loads(path.read_text())
        return PidRecord(pid=int(data["pid"]), started=str(data["started"]))
    except (OSError, ValueError, KeyError):
        return None


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.3)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _raise_open_file_limit() -> None:
    """Runs in the child before exec: a broker holds ~3 files per partition segment, and
    the soft limit of 1024 was exhausted by a few hundred topics (Kafka then died with
    "Too many open files")."""
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:  # root may raise the hard limit too
        resource.setrlimit(resource.RLIMIT_NOFILE, (262144, max(hard, 262144)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _require(tool: str, why: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise StackError(f"`{tool}` is not on PATH; it is needed to {why}. Install it and retry.")
    return path


def _wait(check: Callable[[], bool], *, timeout: float, alive: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            return False
        if check():
            return True
        time.sleep(0.2)
    return False


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log yet)"


# --- components -----------------------------------------------------------------------


@dataclass(kw_only=True)
class Component:
    """One process of the stack: how to install it, start it and tell that it is ready."""

    name: str
    ports: tuple[int, ...] = ()
    ready_timeout: float = 60.0
    install: Callable[[], None] = lambda: None
    prepare: Callable[[], None] = lambda: None
    command: Callable[[], list[str]] = list
    ready: Callable[[], bool] = lambda: True
    env: dict[str, str] = field(default_factory=dict)

    @property
    def log_path(self) -> Path:
        return var_dir() / "log" / f"{self.name}.log"

    @property
    def pid_path(self) -> Path:
        return var_dir() / "run" / f"{self.name}.pid"

    def record(self) -> PidRecord | None:
        rec = _read_pid(self.pid_path)
        return rec if rec is not None and rec.alive() else None

    def start(self) -> str:
        rec = self.record()
        if rec is not None:
            if self.ready():
                return f"{self.name}: already running (pid {rec.pid}), nothing changed"
            # Started by an earlier `up` that was interrupted: wait for it instead of a twin.
            if _wait(self.ready, timeout=self.ready_timeout, alive=rec.alive):
                return f"{self.name}: was starting (pid {rec.pid}), now ready"
            raise StackError(f"{self.name}: pid {rec.pid} runs but never became ready; "
                             f"see {self.log_path} or run `intervene down`")
        for port in self.ports:
            if _port_in_use(port):
                raise StackError(
                    f"{self.name}: port 127.0.0.1:{port} is already taken by another process "
                    f"(not started by `intervene up`); stop it or free the port. "
                    f"Log: {self.log_path}"
                )
        self.install()
        self.prepare()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.pid_path.parent.mkdir(parents=True, exist_ok=True)
        began = time.monotonic()
        with self.log_path.open("ab") as log:
            proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: `down` kills the whole tree
                preexec_fn=_raise_open_file_limit,
                env={**os.environ, **self.env},
                cwd=REPO_ROOT,
            )
        started = _start_time(proc.pid) or ""
        self.pid_path.write_text(json.dumps({"pid": proc.pid, "started": started}))
        rec = PidRecord(pid=proc.pid, started=started)
        if not _wait(self.ready, timeout=self.ready_timeout, alive=lambda: proc.poll() is None):
            code = proc.poll()
            self.stop()
            cause = f"exited with status {code}" if code is not None else "did not become ready"
            raise StackError(
                f"{self.name}: {cause} within {self.ready_timeout:.0f}s. "
                f"Log: {self.log_path}\n--- last lines ---\n{_tail(self.log_path)}"
            )
        return f"{self.name}: started (pid {rec.pid}) in {time.monotonic() - began:.1f}s"

    def stop(self, timeout: float = 20.0) -> str:
        rec = _read_pid(self.pid_path)
        if rec is None or not rec.alive():
            self.pid_path.unlink(missing_ok=True)
            return f"{self.name}: not running"
        with contextlib.suppress(ProcessLookupError):
            os.killpg(rec.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while rec.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        if rec.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(rec.pid, signal.SIGKILL)
            while rec.alive():
                time.sleep(0.05)
        # Anything left in the group (children the leader did not reap) goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(rec.pid, signal.SIGKILL)
        self.pid_path.unlink(missing_ok=True)
        return f"{self.name}: stopped (pid {rec.pid})"


# --- Kafka ----------------------------------------------------------------------------


def kafka_libs() -> Path:
    return cache_dir() / "kafka" / "libs"


def install_kafka() -> None:
    if any(kafka_libs().glob("kafka_2.13-*.jar")):
        return
    _require("java", "run the Kafka broker")
    mvn = _require("mvn", "fetch the Kafka broker jars from Maven Central")
    kafka_libs().mkdir(parents=True, exist_ok=True)
    log = var_dir() / "log" / "install-kafka.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with (announced("kafka: fetching the broker's jars from Maven Central", log=log,
                    expect="about 1 min"), log.open("wb") as out):
        code = subprocess.call(
            [mvn, "-q", "-B", "-f", str(DEPLOY_LOCAL / "pom.xml"), "dependency:copy-dependencies",
             "-DincludeScope=runtime", f"-DoutputDirectory={kafka_libs()}"],
            stdout=out, stderr=subprocess.STDOUT,
        )
    if code != 0:
        raise StackError(f"kafka: fetching jars with Maven failed (exit {code}). Log: {log}")


def _kafka_dir() -> Path:
    return var_dir() / "kafka"


def _kafka_java(main: str, *args: str, heap: tuple[str, ...] = ("-Xmx256m",),
                logs_dir: Path | None = None) -> list[str]:
    java = _require("java", "run the Kafka broker")
    return [
        java, *heap, "-XX:+UseG1GC", "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={DEPLOY_LOCAL / 'log4j2.properties'}",
        f"-Dkafka.logs.dir={logs_dir or var_dir() / 'log'}",
        "-cp", f"{kafka_libs()}/*", main, *args,
    ]


def _kafka_uuid() -> str:
    # Kafka's Uuid string form: URL-safe base64 of 16 random bytes, no padding. Never one
    # beginning with "-": the storage tool would read it as an option (1 format in 64).
    while True:
        value = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not value.startswith("-"):
            return value


def prepare_kafka() -> None:
    kdir = _kafka_dir()
    data = kdir / "data"
    props = kdir / "server.properties"
    template = (DEPLOY_LOCAL / "server.properties").read_text()
    kdir.mkdir(parents=True, exist_ok=True)
    props.write_text(
        template.replace("${LOG_DIR}", str(data))
        .replace("${KAFKA_PORT}", str(KAFKA_PORT))
        .replace("${CONTROLLER_PORT}", str(CONTROLLER_PORT))
    )
    if (data / "meta.properties").exists():
        return
    log = var_dir() / "log" / "kafka-format.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        code = subprocess.call(
            _kafka_java("kafka.tools.StorageTool", "format", "--standalone",
                        "-t", _kafka_uuid(), "-c", str(props)),
            stdout=out, stderr=subprocess.STDOUT,
        )
    if code != 0:
        raise StackError(f"kafka: formatting storage failed (exit {code}). Log: {log}")


def kafka_bootstrap() -> str:
    return f"127.0.0.1:{KAFKA_PORT}"


def kafka_ready() -> bool:
    try:
        return asyncio.run(cluster_metadata(kafka_bootstrap(), timeout=3.0)) is not None
    except Exception:  # noqa: BLE001 - any failure means "not ready yet"
        return False


@dataclass(frozen=True, kw_only=True)
class KafkaBrokerProcess:
    """A broker of its own started by :func:`start_kafka_broker` (not part of the stack)."""

    process: subprocess.Popen[bytes]
    directory: Path

    @property
    def log_path(self) -> Path:
        return self.directory / "log" / "kafka-server.log"

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the broker's process group: SIGTERM, then SIGKILL after ``timeout``.

        Only a group whose leader this call found alive is signalled: a leader reaped
        earlier (a broker that crashed mid-session) may have had its pid, and so the group
        id, reused by an unrelated process group since.
        """
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        # Stragglers of the group just stopped (reaped a moment ago: no reuse yet).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)


def start_kafka_broker(
    properties: str,
    directory: Path,
    *,
    format_args: tuple[str, ...] = (),
    ready: Callable[[], bool],
    ready_timeout: float = 90.0,
    heap: tuple[str, ...] = ("-Xms128m", "-Xmx512m"),
) -> KafkaBrokerProcess:
    """Format and start a single-node KRaft broker from the stack's jars, all in ``directory``.

    For tests that need a broker configured unlike the stack's (TLS and SASL listeners, say):
    ``properties`` is the whole ``server.properties`` text, with ``${LOG_DIR}`` standing for
    ``directory/data``; ``format_args`` go to ``kafka-storage format`` (``--add-scram ...``).
    The configuration, data and logs stay under ``directory`` (nothing in ``var/``, no pid
    file: the caller owns the process and calls :meth:`KafkaBrokerProcess.stop`). Returns once
    ``ready()`` is true; raises :class:`StackError` with the log's tail otherwise.
    """
    install_kafka()
    directory.mkdir(parents=True, exist_ok=True)
    logs = directory / "log"
    logs.mkdir(exist_ok=True)
    props = directory / "server.properties"
    props.write_text(properties.replace("${LOG_DIR}", str(directory / "data")))
    with (logs / "format.log").open("wb") as out:
        code = subprocess.call(
            _kafka_java("kafka.tools.StorageTool", "format", "--standalone",
                        "-t", _kafka_uuid(), "-c", str(props), *format_args, logs_dir=logs),
            stdout=out, stderr=subprocess.STDOUT,
        )
    if code != 0:
        raise StackError(f"kafka: formatting {directory} failed (exit {code}):\n"
                         f"{_tail(logs / 'format.log')}")
    with (logs / "stdout.log").open("ab") as out:
        proc = subprocess.Popen(
            _kafka_java("kafka.Kafka", str(props), heap=heap, logs_dir=logs),
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=_raise_open_file_limit, cwd=directory,
        )
    broker = KafkaBrokerProcess(process=proc, directory=directory)
    if not _wait(ready, timeout=ready_timeout, alive=lambda: proc.poll() is None):
        status = proc.poll()
        broker.stop()
        cause = f"exited with status {status}" if status is not None else "did not become ready"
        raise StackError(f"kafka ({directory}): {cause} within {ready_timeout:.0f}s\n"
                         f"--- last lines ---\n{_tail(broker.log_path)}\n"
                         f"{_tail(logs / 'stdout.log')}")
    return broker


# --- FerretDB -------------------------------------------------------------------------


def ferretdb_binary() -> Path:
    return cache_dir() / "bin" / "ferretdb"


FERRETDB_MODULE = "github.com/FerretDB/FerretDB"
FERRETDB_VERSION = "v1.24.2"


def install_ferretdb() -> None:
    if ferretdb_binary().exists():
        return
    go = _require("go", "build FerretDB")
    log = var_dir() / "log" / "install-ferretdb.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    ferretdb_binary().parent.mkdir(parents=True, exist_ok=True)
    # Not `go install ...@v1.24.2`: the binary then panics at start because the module zip
    # carries an empty build/version/version.txt (FerretDB's release task fills it). So:
    # download the module, copy it, write the version file, build from the copy.
    with (announced(f"ferretdb: building FerretDB {FERRETDB_VERSION} with Go", log=log,
                    expect="about 2 min"), log.open("wb") as out):
        fetched = subprocess.run(
            [go, "mod", "download", "-json", f"{FERRETDB_MODULE}@{FERRETDB_VERSION}"],
            stdout=subprocess.PIPE, stderr=out, check=False,
        )
        if fetched.returncode != 0:
            raise StackError(f"ferretdb: `go mod download` failed. Log: {log}")
        src = cache_dir() / "src" / f"ferretdb-{FERRETDB_VERSION}"
        shutil.rmtree(src, ignore_errors=True)
        shutil.copytree(json.loads(fetched.stdout)["Dir"], src)
        for path in [src, *src.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)  # the module cache is read-only
        (src / "build" / "version" / "version.txt").write_text(FERRETDB_VERSION + "\n")
        code = subprocess.call(
            [go, "build", "-o", str(ferretdb_binary()), "./cmd/ferretdb"],
            cwd=src, stdout=out, stderr=subprocess.STDOUT,
        )
    if code != 0:
        raise StackError(f"ferretdb: `go build` failed (exit {code}). Log: {log}")


def mongodb_uri() -> str:
    return f"mongodb://127.0.0.1:{FERRETDB_PORT}"


def ferretdb_command() -> list[str]:
    data = var_dir() / "ferretdb"
    data.mkdir(parents=True, exist_ok=True)
    return [
        str(ferretdb_binary()), "--handler=sqlite", f"--sqlite-url=file:{data}/",
        "--telemetry=disable", f"--listen-addr=127.0.0.1:{FERRETDB_PORT}",
        "--log-level=warn", "--debug-addr=-", f"--state-dir={data}",
    ]


def ferretdb_ready() -> bool:
    from pymongo import MongoClient

    try:
        client: MongoClient[dict[str, object]] = MongoClient(
            mongodb_uri(), serverSelectionTimeoutMS=500, connectTimeoutMS=500
        )
        with client:
            client.admin.command("ping")
        return True
    except Exception:  # noqa: BLE001 - any failure means "not ready yet"
        return False


# --- the stack ------------------------------------------------------------------------


def infrastructure() -> list[Component]:
    return [
        Component(
            name="kafka", ports=(KAFKA_PORT, CONTROLLER_PORT), ready_timeout=90.0,
            install=install_kafka, prepare=prepare_kafka,
            command=lambda: _kafka_java("kafka.Kafka", str(_kafka_dir() / "server.properties"),
                                        heap=KAFKA_HEAP),
            ready=kafka_ready,
        ),
        Component(
            name="ferretdb", ports=(FERRETDB_PORT,), ready_timeout=30.0,
            install=install_ferretdb, command=ferretdb_command, ready=ferretdb_ready,
        ),
    ]


# Where each service answers /healthz and /metrics: an operations port of its own, never the
# public API (intake's API listens on INTAKE_API_PORT).
SERVICE_HEALTH_PORTS = {"intake": 9100, "auth": 9101, "executor": 9102, "notifier": 9103}
INTAKE_API_PORT = 8080


def _http_ok(port: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def service_components() -> list[Component]:
    """The services that exist as runnable packages (``services/<name>/__main__.py``)."""
    found = []
    for name in SERVICES:
        if not (REPO_ROOT / "services" / name / "__main__.py").exists():
            continue
        port = SERVICE_HEALTH_PORTS[name]
        env = {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap(), "MONGODB_URI": mongodb_uri(),
               "INTERVENE_SPAN_FILE": str(span_file())}
        env["OPS_HTTP_PORT"] = str(port)
        if name == "intake":
            env["INTAKE_HTTP_PORT"] = str(INTAKE_API_PORT)
        found.append(Component(
            name=name, ports=(port, INTAKE_API_PORT) if name == "intake" else (port,),
            ready_timeout=60.0,
            command=lambda name=name: [sys.executable, "-m", f"services.{name}"],  # type: ignore[misc]
            ready=lambda port=port: _http_ok(port),  # type: ignore[misc]
            env=env,
        ))
    return found


def span_file() -> Path:
    """Where the local stack's services append their spans (`intervene trace` reads it)."""
    return Path(os.environ.get("INTERVENE_SPAN_FILE", var_dir() / "traces" / "spans.jsonl"))


def ensure_dev_keys() -> str:
    """The local stack's services need a key set; a fresh machine gets a dev one."""
    from services.runtime.keys import KEYS_DIR_ENV, default_keys_dir, init_keys, key_set_paths

    directory = default_keys_dir()
    paths = key_set_paths(directory)
    files = (paths.sealing_private, paths.sealing_public, paths.signing_private,
             paths.signing_public)
    if all(f.exists() for f in files):
        if all(f.exists() for f in paths.added_files()):
            return f"keys: using {directory}"
        init_keys(directory)  # an older set: adds the missing pairs, touches nothing else
        return f"keys: using {directory} (missing audit or notifier keys added)"
    if os.environ.get(KEYS_DIR_ENV):
        raise StackError(f"keys: {directory} (from {KEYS_DIR_ENV}) is incomplete; "
                         "run `intervene keys init --dir` there or fix the variable")
    init_keys(directory)
    return f"keys: dev key set created in {directory}"


def up(*, with_services: bool = True) -> Iterator[str]:
    for comp in infrastructure():
        yield comp.start()
    created = asyncio.run(ensure_topics(kafka_bootstrap()))
    yield f"topics: {len(created)} created" if created else "topics: all present"
    if with_services:
        yield ensure_dev_keys()
        for comp in service_components():
            yield comp.start()


def down() -> Iterator[str]:
    # Services first, so none of them logs a storm of connection errors while Kafka goes.
    for comp in [*service_components(), *reversed(infrastructure())]:
        yield comp.stop()


@dataclass(frozen=True, kw_only=True)
class ComponentStatus:
    name: str
    pid: int | None
    healthy: bool
    log: Path

    def line(self) -> str:
        state = "not running" if self.pid is None else (
            f"running pid {self.pid}, " + ("healthy" if self.healthy else "NOT answering"))
        return f"{self.name:<9} {state:<34} log: {self.log}"


def status() -> list[ComponentStatus]:
    result = []
    for comp in [*infrastructure(), *service_components()]:
        rec = comp.record()
        result.append(ComponentStatus(
            name=comp.name, pid=rec.pid if rec else None,
            healthy=rec is not None and comp.ready(), log=comp.log_path,
        ))
    return result
