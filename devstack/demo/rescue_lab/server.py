"""One lab customer server: a network namespace, a disk on a loop device, powered on from
that disk or into the rescue system — and how its customer locked themselves out."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devstack.demo.rescue_lab.common import NIC, OPERATOR, RESCUE_CREDENTIALS, run
from devstack.demo.rescue_lab.image import attach, base_image, detach
from devstack.demo.rescue_lab.sandbox import (
    boot_command,
    in_pid_namespaces,
    namespace_init,
    pid_namespace,
    rescue_command,
)
from devstack.demo.targets import free_subnet, token


@dataclass
class LabServer:
    """One customer server: a network namespace and a disk on a loop device."""

    service_id: str
    netns: str
    host_if: str
    address: str
    gateway: str
    prefix: int
    workdir: Path
    image: Path
    disk: str = ""
    part: str = ""
    mode: str = "off"  # "disk", "rescue" or "off"
    boots: int = 0
    rescue_host_key: str = ""
    log_lock: threading.Lock = field(default_factory=threading.Lock)
    _process: subprocess.Popen[bytes] | None = None
    smart_stand_in: str | None = None  # smartctl output the rescue system's disk reports

    @classmethod
    def create(cls, *, service_id: str | None = None, prefix: str = "ivr",
               record: Callable[[LabServer], None] | None = None) -> LabServer:
        """A server with a copy of the base image, powered off. ``record`` is called with
        it once its names are chosen and before anything else exists but its (empty)
        working directory, so a caller can write down what to remove if creation stops
        half-way (see :meth:`close`)."""
        name = f"{prefix}{token()}"
        workdir = Path(tempfile.mkdtemp(prefix=f"{name}-"))
        net = free_subnet()
        hosts = list(net.hosts())
        server = cls(service_id=service_id or f"SRV-{name}", netns=name, host_if=f"{name}h",
                     address=str(hosts[1]), gateway=str(hosts[0]), prefix=net.prefixlen,
                     workdir=workdir, image=workdir / "disk.img")
        try:
            if record is not None:
                record(server)
            run("cp", "--sparse=always", str(base_image()), str(server.image))
            server._attach()
            run("ip", "netns", "add", name)
            run("ip", "link", "add", server.host_if, "type", "veth", "peer", "name", NIC,
                "netns", name)
            run("ip", "addr", "add", f"{server.gateway}/{net.prefixlen}", "dev", server.host_if)
            run("ip", "link", "set", server.host_if, "up")
            server.edit_network(address=f"{server.address}/{net.prefixlen}",
                                gateway=server.gateway)
        except BaseException:
            server.close()
            raise
        return server

    def record(self) -> dict[str, Any]:
        """What another process needs to drive or remove this server (JSON values)."""
        return {"service_id": self.service_id, "netns": self.netns, "host_if": self.host_if,
                "address": self.address, "gateway": self.gateway, "prefix": self.prefix,
                "workdir": str(self.workdir), "image": str(self.image), "disk": self.disk,
                "part": self.part}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> LabServer:
        """The server of :meth:`record`, powered off as far as this process knows."""
        return cls(service_id=str(record["service_id"]), netns=str(record["netns"]),
                   host_if=str(record["host_if"]), address=str(record["address"]),
                   gateway=str(record["gateway"]), prefix=int(record["prefix"]),
                   workdir=Path(record["workdir"]), image=Path(record["image"]),
                   disk=str(record.get("disk") or ""), part=str(record.get("part") or ""))

    # --- the disk --------------------------------------------------------------------

    def _attach(self) -> None:
        self.disk, self.part = attach(self.image)

    def _loop_devices(self) -> set[str]:
        """The loop devices backed by this server's image (found again by the file, so a
        creation stopped before the device was noted leaves nothing behind)."""
        found = {self.disk} if self.disk else set()
        if self.image.exists():
            out = run("losetup", "--noheadings", "--output", "NAME", "--associated",
                      str(self.image), check=False).stdout
            found.update(line.strip() for line in out.splitlines() if line.strip())
        return found

    @contextlib.contextmanager
    def mounted(self) -> Iterator[Path]:
        """The root filesystem, mounted here while the server is off (to break or inspect)."""
        if self.mode != "off":
            raise RuntimeError("power the server off first")
        mnt = self.workdir / "inspect"
        mnt.mkdir(exist_ok=True)
        run("mount", self.part, str(mnt))
        try:
            yield mnt
        finally:
            run("umount", str(mnt))

    def edit_network(self, *, address: str, gateway: str) -> None:
        with self.mounted() as root:
            path = root / "etc/network/interfaces"
            text = path.read_text().replace("@ADDRESS@", address).replace("@GATEWAY@", gateway)
            path.write_text(text)

    def boot_code(self) -> bytes:
        """The MBR's boot code area (the partition table starts at byte 446)."""
        with open(self.disk, "rb") as disk:
            return disk.read(440)

    def fsck(self) -> subprocess.CompletedProcess[str]:
        """``e2fsck -f -n`` of the root filesystem (server off): read-only, the truth."""
        return run("e2fsck", "-f", "-n", self.part, check=False)

    # --- power -----------------------------------------------------------------------

    def _pids(self) -> list[int]:
        out = run("ip", "netns", "pids", self.netns, check=False).stdout
        return [int(p) for p in out.split()]

    def power_off(self) -> None:
        """Every process of the server is killed, as a power cut would; its mounts go with
        its mount namespace, which releases the disk. Found by the network namespace (so
        another process can do it: the demo's manifest), and the inits of its PID
        namespaces killed first: with them goes every process of their namespace, also one
        that a login moved to another network namespace."""
        inits = [pid for pid in self._pids() if namespace_init(pid)]
        namespaces = {ns for ns in map(pid_namespace, inits) if ns is not None}
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
        for _ in range(100):
            pids = self._pids()
            if not pids:
                break
            for pid in sorted(pids, key=lambda p: not namespace_init(p)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        # An init leaves the network namespace before it has taken the rest of its PID
        # namespace down: wait for that too.
        for _ in range(200):
            if not in_pid_namespaces(namespaces):
                break
            time.sleep(0.05)
        if self._process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=5)
            self._process = None
        if self.part:
            self._wait_released()
        # A reboot starts with no addresses, routes or firewall rules.
        self._ns("nft", "flush", "ruleset", check=False)
        self._ns("ip", "addr", "flush", "dev", NIC, check=False)
        self.mode = "off"

    def _wait_released(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fd = os.open(self.part, os.O_RDONLY | os.O_EXCL)
            except FileNotFoundError:
                return  # detached already: nothing holds it
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.part} still in use after power-off") from None
                time.sleep(0.05)
                continue
            os.close(fd)
            return

    def _ns(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run("ip", "netns", "exec", self.netns, *argv, check=check)

    def boot_disk(self) -> None:
        """Power on from the disk; returns once the boot script runs (SSH may follow)."""
        self.power_off()
        root = self.workdir / "root"
        root.mkdir(exist_ok=True)
        self.boots += 1
        log = (self.workdir / "console.log").open("ab")
        log.write(f"--- boot {self.boots} from disk ---\n".encode())
        log.flush()
        self._process = subprocess.Popen(
            boot_command(self.netns, disk=self.disk, part=self.part, root=root, nic=NIC),
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        self.mode = "disk"

    def boot_rescue(self, password: str) -> str:
        """Power on into the rescue system; returns its host key line once sshd listens."""
        self.power_off()
        self._ns("ip", "link", "set", "lo", "up")
        self._ns("ip", "link", "set", NIC, "up")
        self._ns("ip", "addr", "add", f"{self.address}/{self.prefix}", "dev", NIC)
        work = self.workdir / "rescue"
        work.mkdir(exist_ok=True)
        self.boots += 1
        log_path = self.workdir / "rescue.log"
        log = log_path.open("ab")
        log.write(f"--- boot {self.boots} into rescue ---\n".encode())
        log.flush()
        smart = ""
        if self.smart_stand_in is not None:
            fixture = self.workdir / "smartctl.txt"
            fixture.write_text(self.smart_stand_in)
            smart = str(fixture)
        self._process = subprocess.Popen(
            rescue_command(self.netns, work=work, disk=self.disk, part=self.part,
                           smart=smart),
            stdout=log, stderr=log, stdin=subprocess.PIPE, start_new_session=True)
        assert self._process.stdin is not None
        self._process.stdin.write(f"root:{password}\n".encode())
        self._process.stdin.close()
        self.mode = "rescue"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"rescue system failed: {log_path.read_text()[-2000:]}")
            if "rescue: ready" in log_path.read_text(errors="replace") and self.listening():
                # Read again now that sshd listens: the script prints the host key after
                # "ready" and only then starts sshd, so the key line is complete now (the
                # text read before the check may have ended at "ready").
                text = log_path.read_text(errors="replace")
                lines = text[text.rfind("rescue: ready"):].splitlines()
                if len(lines) > 1 and lines[1].strip():
                    self.rescue_host_key = " ".join(lines[1].split()[:2])
                    return self.rescue_host_key
            time.sleep(0.05)
        raise RuntimeError(f"rescue system did not come up: {log_path.read_text()[-2000:]}")

    def listening(self, port: int = 22) -> bool:
        with contextlib.suppress(OSError), socket.create_connection((self.address, port),
                                                                     timeout=0.3):
            return True
        return False

    def wait_ssh(self, timeout: float = 20, *, inside: bool = False) -> bool:
        """Until SSH answers from outside or, ``inside``, sshd listens in the server itself
        (whatever its firewall lets through)."""
        check = self.listening_inside if inside else self.listening
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return True
            time.sleep(0.1)
        return False

    def note_rescue_credentials(self, action_id: str, username: str, password: str) -> None:
        """Record a one-time rescue login the provider set for this server: one JSON line in
        a file only its owner (root) can read, in the server's working directory (removed
        with it), so that tests can search every sink for the password."""
        path = self.workdir / RESCUE_CREDENTIALS
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as out:
            os.fchmod(fd, 0o600)
            out.write(json.dumps({"action": action_id, "service_id": self.service_id,
                                  "username": username, "password": password}) + "\n")

    def rescue_passwords(self) -> list[str]:
        """Every one-time rescue root password the provider set for this server so far."""
        path = self.workdir / RESCUE_CREDENTIALS
        if not path.exists():
            return []
        return [str(json.loads(line)["password"])
                for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def console(self) -> str:
        path = self.workdir / "console.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def host_key(self) -> str:
        """The server's own ed25519 host key line, read from its disk (server off)."""
        with self.mounted() as root:
            return " ".join((root / "etc/ssh/ssh_host_ed25519_key.pub").read_text().split()[:2])

    def listening_inside(self, port: int = 22) -> bool:
        """Whether something listens on ``port`` in the server itself (what its console
        would show), whatever its firewall lets through."""
        out = self._ns("ss", "-Hltn", f"sport = :{port}", check=False).stdout
        return bool(out.strip())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.power_off()
        run("ip", "netns", "delete", self.netns, check=False)
        run("ip", "link", "delete", self.host_if, check=False)
        mnt = self.workdir / "inspect"
        if mnt.is_mount():
            run("umount", "-l", str(mnt), check=False)
        for disk in sorted(self._loop_devices()):
            detach(disk)
        shutil.rmtree(self.workdir, ignore_errors=True)


# --- how the customer locked themselves out ------------------------------------------------


def break_firewall(server: LabServer, *, nic: str | None = "ens3") -> None:
    """The customer's firewall edit that locked them out: SSH dropped before it is accepted;
    optionally also the interface renamed in the network configuration."""
    with server.mounted() as root:
        conf = root / "etc/nftables.conf"
        text = conf.read_text().replace(
            '\t\tct state established,related accept\n',
            '\t\ttcp dport 22 drop comment "customer: close ssh"\n'
            '\t\tct state established,related accept\n')
        conf.write_text(text)
        if nic is not None:
            interfaces = root / "etc/network/interfaces"
            interfaces.write_text(interfaces.read_text().replace(f" {NIC}", f" {nic}"))


def customer_login(server: LabServer, name: str, password: str) -> None:
    """The customer's own login on the image (created if it is not there yet) with a known
    password: the credentials a ticket carries."""
    with server.mounted() as root:
        users = {line.split(":", 1)[0] for line in (root / "etc/passwd").read_text().splitlines()}
        if name not in users:
            run("useradd", "--root", str(root), "--create-home", "--shell", "/bin/bash", name)
        run("chpasswd", "-R", str(root), stdin=f"{name}:{password}\n")


def operator_login(server: LabServer, password: str) -> None:
    """Give the image's own admin account (the customer's credentials) a known password."""
    customer_login(server, OPERATOR, password)
