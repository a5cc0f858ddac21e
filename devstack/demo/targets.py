"""Real "customer servers" on this machine: OpenSSH sshd processes with private configs,
throwaway users, a throwaway SysV service and a local apt repository of throwaway packages.

Two kinds of server, both the machine's own ``/usr/sbin/sshd`` started with ``-f <private
config>`` (the machine's sshd configuration is never touched):

- on loopback (``127.0.0.1:<free port>``);
- with *simulated* diagnostic tools: sshd runs in a private mount namespace with a tmpfs
  over ``/usr/local/sbin`` (first on sudo's ``secure_path`` and on the executor's command
  PATH) holding scripts that print a failing disk's ``smartctl`` and ``dmesg`` output. Only
  that server's sessions see them; every script says it is a simulation.

Everything gets a random ``<prefix><hex>`` name and is removed by its ``remove``/``stop``
method (users with ``userdel -r``, their sudoers drop-ins, init scripts, apt sources and
packages). Needs root, like the CI runners. The executor's integration tests
use these classes through ``tests/executor_targets.py``; the demo and the end-to-end tests
through :mod:`devstack.demo.estate`. A server with a disk of its own, locked out by its
firewall and repaired in rescue mode, is :mod:`devstack.demo.rescue_lab`'s.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

SSHD = "/usr/sbin/sshd"
# The first directory of sudo's secure_path and of the executor's STANDARD_PATH: a tool
# placed here shadows the real one for the sessions that see it.
TOOLS_DIR = Path("/usr/local/sbin")
# Network namespaces get a /30 out of this block (RFC 1918, unlikely to be routed here).
NETNS_BLOCK = ipaddress.IPv4Network("10.213.0.0/16")

TARGET_TOOLS = ("useradd", "userdel", "chpasswd", "ssh-keygen", "sudo", "visudo", "service",
                "start-stop-daemon", "dpkg-deb", "apt-get")
NETNS_TOOLS = ("ip", "nft", "unshare", "mount")


def available(*, netns: bool = False) -> str | None:
    """Why real sshd targets cannot run here (None: they can)."""
    if os.geteuid() != 0:
        return "needs root (sshd with password logins, throwaway users)"
    if not Path(SSHD).exists():
        return f"{SSHD} is missing (apt-get install openssh-server)"
    # sudo: the customer's admin login; service/start-stop-daemon: the throwaway SysV
    # service; dpkg-deb/apt-get: the throwaway packages; ip/nft/unshare: namespaces.
    for tool in (*TARGET_TOOLS, *(NETNS_TOOLS if netns else ())):
        if shutil.which(tool) is None:
            return f"{tool} is missing"
    return None


# What the demo servers need from the system, by the Debian package that brings it (the
# rescue lab's disk image is built from GRUB, fdisk, udev and e2fsprogs as well).
SYSTEM_PACKAGES = {SSHD: "openssh-server", "sudo": "sudo", "ip": "iproute2", "nft": "nftables",
                   "start-stop-daemon": "dpkg", "dpkg-deb": "dpkg",
                   "grub-install": "grub2-common", "/usr/lib/grub/i386-pc": "grub-pc-bin",
                   "sfdisk": "fdisk", "udevadm": "udev", "mkfs.ext4": "e2fsprogs"}


def install_missing_packages() -> list[str]:
    """Install (apt-get, as root) the packages whose tools are missing; return their names.

    The demo servers need nftables, iproute2 and the rescue lab's image tools beyond a
    minimal machine; a fresh machine gets them here rather than failing on the first use.
    """
    missing = sorted({package for tool, package in SYSTEM_PACKAGES.items()
                      if shutil.which(tool) is None and not Path(tool).exists()})
    if not missing or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return []
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"],
                 ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]):
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"`{' '.join(argv)}` failed: {done.stderr.strip()[-500:]}")
    return missing


def token() -> str:
    return secrets.token_hex(3)


def new_password() -> str:
    return "Pw-" + secrets.token_urlsafe(18)


def run(*argv: str, stdin: str | None = None) -> str:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def loopback_address() -> str:
    """A random address of 127.0.0.0/8 (all of it is loopback on Linux): several servers on
    one machine get addresses of their own, as the provider's inventory requires."""
    octets = (77 + secrets.randbelow(100), secrets.randbelow(256), 2 + secrets.randbelow(250))
    return "127.{}.{}.{}".format(*octets)


# --- processes --------------------------------------------------------------------------


def process_start_time(pid: int) -> str | None:
    """Kernel start time of ``pid`` (clock ticks since boot), None when it is gone.

    Recorded with a pid so a later stop never signals a process that reused the pid.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2:].split()
    return None if fields[0] == "Z" else fields[19]


def stop_process_group(pid: int, started: str | None, *, timeout: float = 10.0) -> bool:
    """SIGTERM, then SIGKILL, to the process group led by ``pid`` if it is still the process
    that was started (same start time). False when it was already gone."""
    if started is None or process_start_time(pid) != started:
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while process_start_time(pid) == started and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # our own child: reap it, or it stays a zombie
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)  # the leader's leftover children go too
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    return True


# --- users -----------------------------------------------------------------------------


@dataclass
class ThrowawayUser:
    name: str
    password: str = field(repr=False)
    sudo: bool = False

    @classmethod
    def create(cls, *, sudo: bool, prefix: str = "ivt") -> ThrowawayUser:
        user = cls(name=f"{prefix}{token()}", password=new_password(), sudo=sudo)
        run("useradd", "-m", "-s", "/bin/bash", user.name)
        try:
            run("chpasswd", stdin=f"{user.name}:{user.password}\n")
            if sudo:
                # Password-required sudo, like a customer's admin account.
                dropin = user.sudoers_path
                dropin.write_text(f"{user.name} ALL=(ALL:ALL) ALL\n")
                dropin.chmod(0o440)
                run("visudo", "-c", "-q", "-f", str(dropin))
        except BaseException:
            user.remove()
            raise
        return user

    @property
    def sudoers_path(self) -> Path:
        return Path("/etc/sudoers.d") / self.name

    def set_password(self, password: str, *, crypt_method: str | None = None) -> None:
        """``crypt_method``: chpasswd's ``-c`` (e.g. ``SHA512``, the hash of RHEL 8 and
        Ubuntu 20.04 servers); None for this machine's default (yescrypt on Debian 12)."""
        run("chpasswd", *(("-c", crypt_method) if crypt_method else ()),
            stdin=f"{self.name}:{password}\n")
        self.password = password

    def remove(self) -> None:
        self.sudoers_path.unlink(missing_ok=True)
        # -f: a session process of this user may still be exiting.
        subprocess.run(["userdel", "-r", "-f", self.name], capture_output=True, check=False)


# --- network namespaces ------------------------------------------------------------------


def free_subnet() -> ipaddress.IPv4Network:
    """A /30 no interface of this machine uses, for a server in a network namespace (the
    rescue lab's): the host end takes the first address, the server the second."""
    used = []
    for line in run("ip", "-4", "-o", "addr", "show").splitlines():
        parts = line.split()
        if "inet" in parts:
            used.append(ipaddress.IPv4Interface(parts[parts.index("inet") + 1]).network)
    for _ in range(200):
        index = secrets.randbelow(NETNS_BLOCK.num_addresses // 4)
        subnet = ipaddress.IPv4Network(
            (int(NETNS_BLOCK.network_address) + index * 4, 30))
        if not any(subnet.overlaps(u) for u in used):
            return subnet
    raise RuntimeError(f"no free /30 left in {NETNS_BLOCK} for a demo network namespace")


# --- sshd ------------------------------------------------------------------------------


@dataclass
class Sshd:
    """One sshd with its own host key and config; ``stop()`` ends only it.

    ``netns`` runs it inside that namespace (listening on its address); ``tools`` runs it in
    a private mount namespace where that directory's files replace ``/usr/local/sbin``.
    """

    port: int
    workdir: Path
    host_key_line: str
    host: str = "127.0.0.1"
    process: subprocess.Popen[bytes] | None = None
    pid: int | None = None
    started: str | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / "sshd.log"

    @classmethod
    def start(cls, users: Sequence[str], *, max_startups: str | None = None,
              listen: str = "127.0.0.1", tools: Path | None = None,
              prefix: str = "ivt") -> Sshd:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir
        workdir = Path(tempfile.mkdtemp(prefix=f"{prefix}-sshd-"))
        key = workdir / "host_ed25519"
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(key))
        host, port = listen, free_port(listen)
        config = workdir / "sshd_config"
        config.write_text(textwrap.dedent(f"""\
            Port {port}
            ListenAddress {host}
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
        run(SSHD, "-t", "-f", str(config))
        argv = [SSHD, "-D", "-e", "-f", str(config)]
        if tools is not None:
            TOOLS_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)  # a standard FHS dir
            # A private mount namespace: the tmpfs (and so the simulated tools) exists for
            # this sshd and its sessions only; the host's /usr/local/sbin is untouched.
            argv = ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c",
                    'mount -t tmpfs -o size=4m,mode=0755 simulated "$1" && '
                    'cp -pR "$2"/. "$1"/ && shift 2 && exec "$@"',
                    "sh", str(TOOLS_DIR), str(tools), *argv]
        log = (workdir / "sshd.log").open("ab")
        process = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
        log.close()
        public = (workdir / "host_ed25519.pub").read_text()
        sshd = cls(port=port, workdir=workdir, process=process, host=host,
                   host_key_line=" ".join(public.split()[:2]), pid=process.pid,
                   started=process_start_time(process.pid))
        try:
            sshd.wait_listening()
        except BaseException:
            sshd.stop()
            raise
        return sshd

    def wait_listening(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"sshd exited: {self.log()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(
                    (self.host, self.port), timeout=0.5):
                return
            time.sleep(0.05)
        raise RuntimeError(f"sshd on {self.host}:{self.port} did not start")

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
        elif self.process is None and self.pid is not None:
            stop_process_group(self.pid, self.started)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def other_host_key() -> str:
    """A valid ed25519 public key line that no target has: a "wrong pinned key"."""
    with tempfile.TemporaryDirectory() as tmp:
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", f"{tmp}/k")
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
# Short-Description: throwaway daemon of the OS Intervention tests and demo
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
    def install(cls, *, prefix: str = "ivt") -> SysvService:
        name = f"{prefix}{token()}svc"
        state = Path(tempfile.mkdtemp(prefix=f"{name}-"))
        service = cls(name=name, state=state)
        try:
            service.config_path.write_text("valid=yes\n")
            service.script_path.write_text(_INIT_SCRIPT.format(name=name, state=state))
            service.script_path.chmod(0o755)
            run("service", name, "start")
        except BaseException:
            service.remove()
            raise
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
        if self.script_path.exists():
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
    def create(cls, count: int = 2, *, postinst_sleep_s: float = 0,
               prefix: str = "ivt") -> AptRepo:
        name = f"{prefix}{token()}"
        directory = Path(tempfile.mkdtemp(prefix=f"{name}-repo-"))
        directory.chmod(0o755)
        marker_dir = Path(tempfile.mkdtemp(prefix=f"{name}-marks-"))
        repo = cls(name=name, directory=directory, marker_dir=marker_dir,
                   packages=[f"{name}-probe{n}" for n in range(count)])
        try:
            stanzas = [repo._build(package, postinst_sleep_s) for package in repo.packages]
            (directory / "Packages").write_text("\n".join(stanzas))
            repo.list_path.write_text(f"deb [trusted=yes] file:{directory} ./\n")
            # Only this source is read: the machine's other sources (and the network) are
            # never touched, and its own package lists stay as they were.
            run("apt-get", "update", "-qq", "-o", f"Dir::Etc::sourcelist={repo.list_path}",
                "-o", "Dir::Etc::sourceparts=-", "-o", "APT::Get::List-Cleanup=0")
        except BaseException:
            repo.remove()
            raise
        return repo

    def _build(self, package: str, sleep_s: float) -> str:
        """Build ``package`` and return its stanza of the repository's Packages index
        (written here rather than by dpkg-scanpackages, which needs dpkg-dev)."""
        root = self.directory / f"build-{package}"
        (root / "DEBIAN").mkdir(parents=True)
        (root / "usr/share/doc" / package).mkdir(parents=True)
        (root / "usr/share/doc" / package / "README").write_text("throwaway test package\n")
        (root / "DEBIAN/control").write_text(textwrap.dedent(f"""\
            Package: {package}
            Version: 1.0
            Architecture: all
            Maintainer: OS Intervention tests <tests@example.invalid>
            Description: throwaway package of the OS Intervention tests and demo
            """))
        postinst = root / "DEBIAN/postinst"
        # The marker is written when configuration completes: it counts finished runs.
        postinst.write_text(
            "#!/bin/sh\nset -e\n" + (f"sleep {sleep_s}\n" if sleep_s else "")
            + f"echo \"$1 $(date +%s.%N)\" >> {self.marker_dir}/{package}\nexit 0\n")
        postinst.chmod(0o755)
        deb = self.directory / f"{package}_1.0_all.deb"
        run("dpkg-deb", "--root-owner-group", "-b", str(root), str(deb))
        shutil.rmtree(root)
        data = deb.read_bytes()
        control = run("dpkg-deb", "-f", str(deb)).rstrip("\n")
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
