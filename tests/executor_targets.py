"""Real "customer servers" for the executor's tests and benchmark: OpenSSH sshd processes on
loopback with private configs, throwaway users, a throwaway SysV service and a local apt
repository of throwaway packages.

Everything here is created with random ``ivt<hex>`` names and removed again by the caller
(the session fixtures in ``tests/integration/conftest.py``, or ``bench/bench_executor.py``):
users (``userdel -r``), their sudoers drop-ins, init scripts, apt source lists and packages.
No existing user, service or the machine's own sshd configuration is touched; sshd is the
machine's binary started with ``-f <private config>``.

Needs root (to run sshd with password logins and to create users), like the CI runners.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

SSHD = "/usr/sbin/sshd"


def available() -> str | None:
    """Why real sshd targets cannot run here (None: they can)."""
    if os.geteuid() != 0:
        return "needs root (sshd with password logins, throwaway users)"
    if not Path(SSHD).exists():
        return f"{SSHD} is missing (apt-get install openssh-server)"
    # sudo: the customer's admin login; service/start-stop-daemon: the throwaway SysV
    # service; dpkg-deb/apt-get: the throwaway packages.
    for tool in ("useradd", "userdel", "chpasswd", "ssh-keygen", "sudo", "visudo", "service",
                 "start-stop-daemon", "dpkg-deb", "apt-get"):
        if shutil.which(tool) is None:
            return f"{tool} is missing"
    return None


def token() -> str:
    return secrets.token_hex(3)


def new_password() -> str:
    return "Pw-" + secrets.token_urlsafe(18)


def _run(*argv: str, stdin: str | None = None) -> str:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


# --- users -----------------------------------------------------------------------------


@dataclass
class ThrowawayUser:
    name: str
    password: str = field(repr=False)
    sudo: bool = False

    @classmethod
    def create(cls, *, sudo: bool) -> ThrowawayUser:
        user = cls(name=f"ivt{token()}", password=new_password(), sudo=sudo)
        _run("useradd", "-m", "-s", "/bin/bash", user.name)
        try:
            _run("chpasswd", stdin=f"{user.name}:{user.password}\n")
            if sudo:
                # Password-required sudo, like a customer's admin account.
                dropin = user.sudoers_path
                dropin.write_text(f"{user.name} ALL=(ALL:ALL) ALL\n")
                dropin.chmod(0o440)
                _run("visudo", "-c", "-q", "-f", str(dropin))
        except BaseException:
            user.remove()
            raise
        return user

    @property
    def sudoers_path(self) -> Path:
        return Path("/etc/sudoers.d") / self.name

    def set_password(self, password: str) -> None:
        _run("chpasswd", stdin=f"{self.name}:{password}\n")
        self.password = password

    def remove(self) -> None:
        self.sudoers_path.unlink(missing_ok=True)
        # -f: a session process of this user may still be exiting.
        subprocess.run(["userdel", "-r", "-f", self.name], capture_output=True, check=False)


# --- sshd ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Sshd:
    """One sshd on 127.0.0.1:<port> with its own host key; ``stop()`` ends only it."""

    port: int
    workdir: Path
    host_key_line: str
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / "sshd.log"

    @classmethod
    def start(cls, users: list[str], *, max_startups: str | None = None) -> Sshd:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir
        workdir = Path(tempfile.mkdtemp(prefix="ivt-sshd-"))
        key = workdir / "host_ed25519"
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(key))
        port = free_port()
        config = workdir / "sshd_config"
        config.write_text(textwrap.dedent(f"""\
            Port {port}
            ListenAddress 127.0.0.1
            HostKey {key}
            PidFile {workdir / "sshd.pid"}
            UsePAM yes
            PasswordAuthentication yes
            KbdInteractiveAuthentication no
            PubkeyAuthentication yes
            PermitRootLogin no
            AllowUsers {" ".join(users)}
            StrictModes no
            X11Forwarding no
            AllowTcpForwarding no
            PrintMotd no
            LogLevel VERBOSE
            """) + (f"MaxStartups {max_startups}\n" if max_startups else ""))
        _run(SSHD, "-t", "-f", str(config))
        log = (workdir / "sshd.log").open("ab")
        process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log,
                                   stderr=log, start_new_session=True)
        public = (workdir / "host_ed25519.pub").read_text()
        sshd = cls(port=port, workdir=workdir, process=process,
                   host_key_line=" ".join(public.split()[:2]))
        sshd.wait_listening()
        return sshd

    def wait_listening(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"sshd exited: {self.log_path.read_text()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=0.5):
                return
            time.sleep(0.05)
        raise RuntimeError(f"sshd on port {self.port} did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            # The listener's own process group (start_new_session): its per-connection
            # children go with it, nothing else does.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def other_host_key() -> str:
    """A valid ed25519 public key line that no target has: a "wrong pinned key"."""
    with tempfile.TemporaryDirectory() as tmp:
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", f"{tmp}/k")
        return " ".join(Path(f"{tmp}/k.pub").read_text().split()[:2])


# --- a throwaway SysV service ----------------------------------------------------------

_INIT_SCRIPT = """\
#!/bin/sh
### BEGIN INIT INFO
# Provides:          {name}
# Required-Start:    $remote_fs
# Required-Stop:     $remote_fs
# Default-Start:     2 3 4 5
# Default-Stop:      0 1 6
# Short-Description: throwaway test daemon of the executor tests
### END INIT INFO
PIDFILE=/run/{name}.pid
CONF=/etc/{name}.conf
STATE={state}
check() {{
    grep -qx 'valid=yes' "$CONF" && return 0
    echo "$CONF: syntax error: expected valid=yes" >&2; return 1
}}
start() {{
    check || return 1
    start-stop-daemon --start --quiet --background --make-pidfile --pidfile "$PIDFILE" \\
        --exec /bin/sleep -- 100000 || return 1
    echo "start $(date +%s.%N)" >> "$STATE/starts"
    echo "$(date) {name} started" >> /var/log/{name}.log
}}
stop() {{
    start-stop-daemon --stop --quiet --oknodo --retry 5 --pidfile "$PIDFILE" --exec /bin/sleep
    rm -f "$PIDFILE"
}}
case "$1" in
    start) start ;;
    stop) stop ;;
    restart) check || exit 1; stop; start ;;
    configtest) check && echo "configuration ok" ;;
    status)
        if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
            echo "{name} is running"; exit 0
        fi
        echo "{name} is not running"; exit 3 ;;
    *) echo "Usage: $0 {{start|stop|restart|configtest|status}}" >&2; exit 2 ;;
esac
"""


@dataclass
class SysvService:
    """A daemon (``sleep``) managed by an init script, restartable with ``service``."""

    name: str
    state: Path

    @classmethod
    def install(cls) -> SysvService:
        name = f"ivt{token()}svc"
        state = Path(tempfile.mkdtemp(prefix=f"{name}-"))
        service = cls(name=name, state=state)
        service.config_path.write_text("valid=yes\n")
        service.script_path.write_text(_INIT_SCRIPT.format(name=name, state=state))
        service.script_path.chmod(0o755)
        _run("service", name, "start")
        return service

    @property
    def script_path(self) -> Path:
        return Path("/etc/init.d") / self.name

    @property
    def config_path(self) -> Path:
        return Path(f"/etc/{self.name}.conf")

    @property
    def pid_path(self) -> Path:
        return Path(f"/run/{self.name}.pid")

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if Path(f"/proc/{pid}").exists() else None

    def starts(self) -> int:
        path = self.state / "starts"
        return len(path.read_text().splitlines()) if path.exists() else 0

    def break_config(self) -> None:
        self.config_path.write_text("valid=no\n")

    def fix_config(self) -> None:
        self.config_path.write_text("valid=yes\n")

    def remove(self) -> None:
        subprocess.run(["service", self.name, "stop"], capture_output=True, check=False)
        for path in (self.script_path, self.config_path, self.pid_path,
                     Path(f"/var/log/{self.name}.log")):
            path.unlink(missing_ok=True)
        shutil.rmtree(self.state, ignore_errors=True)


# --- a local apt repository of throwaway packages --------------------------------------


@dataclass
class AptRepo:
    """``deb [trusted=yes] file:...`` with packages that record each postinst run."""

    name: str
    directory: Path
    packages: list[str]
    marker_dir: Path

    @classmethod
    def create(cls, count: int = 2, *, postinst_sleep_s: float = 0) -> AptRepo:
        name = f"ivt{token()}"
        directory = Path(tempfile.mkdtemp(prefix=f"{name}-repo-"))
        directory.chmod(0o755)
        marker_dir = Path(tempfile.mkdtemp(prefix=f"{name}-marks-"))
        repo = cls(name=name, directory=directory, marker_dir=marker_dir,
                   packages=[f"{name}-probe{n}" for n in range(count)])
        stanzas = [repo._build(package, postinst_sleep_s) for package in repo.packages]
        (directory / "Packages").write_text("\n".join(stanzas))
        repo.list_path.write_text(f"deb [trusted=yes] file:{directory} ./\n")
        _run("apt-get", "update", "-qq", "-o", f"Dir::Etc::sourcelist={repo.list_path}",
             "-o", "Dir::Etc::sourceparts=-", "-o", "APT::Get::List-Cleanup=0")
        return repo

    def _build(self, package: str, sleep_s: float) -> str:
        """Build ``package`` and return its stanza of the repository's Packages index
        (written here rather than by dpkg-scanpackages, which needs dpkg-dev)."""
        root = self.directory / f"build-{package}"
        (root / "DEBIAN").mkdir(parents=True)
        (root / "usr/share/doc" / package).mkdir(parents=True)
        (root / "usr/share/doc" / package / "README").write_text("executor test package\n")
        (root / "DEBIAN/control").write_text(textwrap.dedent(f"""\
            Package: {package}
            Version: 1.0
            Architecture: all
            Maintainer: Executor Tests <tests@example.invalid>
            Description: throwaway package of the executor tests
            """))
        postinst = root / "DEBIAN/postinst"
        # The marker is written when configuration completes: it counts finished runs.
        postinst.write_text(
            "#!/bin/sh\nset -e\n" + (f"sleep {sleep_s}\n" if sleep_s else "")
            + f"echo \"$1 $(date +%s.%N)\" >> {self.marker_dir}/{package}\nexit 0\n")
        postinst.chmod(0o755)
        deb = self.directory / f"{package}_1.0_all.deb"
        _run("dpkg-deb", "--root-owner-group", "-b", str(root), str(deb))
        shutil.rmtree(root)
        data = deb.read_bytes()
        control = _run("dpkg-deb", "-f", str(deb)).rstrip("\n")
        return (f"{control}\nFilename: ./{deb.name}\nSize: {len(data)}\n"
                f"SHA256: {hashlib.sha256(data).hexdigest()}\n")

    @property
    def list_path(self) -> Path:
        return Path("/etc/apt/sources.list.d") / f"{self.name}.list"

    def installed(self, package: str) -> bool:
        done = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package],
                              capture_output=True, text=True, check=False)
        return done.returncode == 0 and done.stdout.strip() == "install ok installed"

    def postinst_runs(self, package: str) -> int:
        path = self.marker_dir / package
        return len(path.read_text().splitlines()) if path.exists() else 0

    def remove(self) -> None:
        installed = [p for p in self.packages if self.installed(p)
                     or subprocess.run(["dpkg", "-s", p], capture_output=True,
                                       check=False).returncode == 0]
        if installed:
            subprocess.run(["dpkg", "--purge", *installed], capture_output=True, check=False)
        self.list_path.unlink(missing_ok=True)
        # apt's index of this source is named after its path (with "_" escaped as "%5f");
        # the random repository name alone identifies it.
        for path in Path("/var/lib/apt/lists").glob(f"*{self.name}-repo-*"):
            path.unlink(missing_ok=True)
        shutil.rmtree(self.directory, ignore_errors=True)
        shutil.rmtree(self.marker_dir, ignore_errors=True)


def processes_with(text: str) -> list[int]:
    """Pids whose command line contains ``text`` (to prove secrets never appear there)."""
    found = []
    needle = text.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if needle in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


# --- reading everything a test run published -------------------------------------------


@dataclass
class Record:
    topic: str  # catalogue name, prefix removed
    key: bytes | None
    value: bytes
    headers: dict[str, str]


class EventBus:
    """Collects every record of every topic under one prefix (catalogue and DLQs)."""

    def __init__(self, bootstrap: str, prefix: str) -> None:
        self.bootstrap = bootstrap
        self.prefix = prefix
        self.records: list[Record] = []
        self._task: object = None
        self._consumer: object = None

    async def start(self) -> None:
        import asyncio

        from aiokafka import AIOKafkaConsumer, TopicPartition

        from schemas.topics import all_topics

        names = [spec.name for spec in all_topics(self.prefix)]
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        await consumer.start()
        for _ in range(100):  # just-created topics reach the metadata a moment later
            await consumer._client.force_metadata_update()
            if all(consumer.partitions_for_topic(t) for t in names):
                break
            await asyncio.sleep(0.1)
        parts = [TopicPartition(t, p) for t in names
                 for p in consumer.partitions_for_topic(t) or ()]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)

        async def collect() -> None:
            while True:
                batch = await consumer.getmany(timeout_ms=200)
                for records in batch.values():
                    self.records.extend(
                        Record(topic=r.topic.removeprefix(self.prefix), key=r.key,
                               value=r.value,
                               headers={k: v.decode(errors="replace") for k, v in r.headers})
                        for r in records)

        self._consumer = consumer
        self._task = asyncio.create_task(collect())

    async def stop(self) -> None:
        self._task.cancel()  # type: ignore[attr-defined]
        await self._consumer.stop()  # type: ignore[attr-defined]

    def of(self, ticket_id: str, event_type: str | None = None) -> list[object]:
        from schemas.registry import parse_event

        found = []
        for record in self.records:
            if record.key != ticket_id.encode() or record.topic.endswith(".dlq"):
                continue
            if not record.topic.startswith("intervention."):
                continue
            event = parse_event(record.value)
            if event_type is None or event.event_type == event_type:
                found.append(event)
        return found

    def values(self, ticket_id: str, event_type: str) -> list[bytes]:
        from schemas.topics import event_topic

        return [r.value for r in self.records
                if r.key == ticket_id.encode() and r.topic == event_topic(event_type)]

    async def wait(self, ticket_id: str, event_type: str, n: int = 1,
                   timeout: float = 60.0) -> list[object]:
        import asyncio

        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            found = self.of(ticket_id, event_type)
            if len(found) >= n:
                return found
            if asyncio.get_running_loop().time() > deadline:
                seen = [getattr(e, "event_type", "?") for e in self.of(ticket_id)]
                raise AssertionError(f"{ticket_id}: {len(found)} of {n} {event_type} in "
                                     f"{timeout}s; seen {seen}")
            await asyncio.sleep(0.1)
