"""The rescue lab: customer servers that really boot from a disk, a rescue system that sees
that disk, and a local stand-in for the provider's rescue API — so rescue-mode repairs run
end to end on this machine. ``intervene demo`` (its locked-out ``edge-01``), the end-to-end
tests and the executor's rescue integration tests use it.

- **The disk** is an MBR-partitioned raw image with one ext4 root filesystem, built once
  from this machine's own Debian packages (sshd, PAM, shadow, coreutils, e2fsprogs,
  nftables, GRUB for i386-pc, udevadm, perl-base) and cached in ``.cache/images/``; every
  server gets a sparse copy on its own loop device. GRUB is really installed into it
  (``grub-install`` writes boot.img to the MBR and core.img after it; ``grub-mkconfig``
  writes the menu). The kernel and initrd in ``/boot`` are labelled placeholders: no kernel
  is ever executed here.
- **The server** is a network namespace (own address on a veth pair) whose "boot"
  (:data:`BOOT_SCRIPT`) does what firmware, GRUB and init do to decide whether SSH comes
  up, with the disk's own files: the MBR must hold GRUB's boot code and GRUB's own drivers
  (``grub-fstest``) must read ``grub.cfg``, ``normal.mod`` and the kernel it names;
  ``e2fsck -p`` must pass (else "emergency mode"); the root filesystem is mounted, the
  network configured from ``/etc/network/interfaces``, ``/etc/nftables.conf`` loaded into
  the namespace when nftables.service is enabled, and, when ssh.service is enabled, the
  disk's root filesystem made the root of the server's mount namespace and the disk's own
  ``/usr/sbin/sshd`` started in it. Nothing is faked: a broken file on the disk breaks the
  server the way it breaks a real one, only the kernel hand-over is skipped.
- **The rescue system** boots in the same network namespace after the server is "powered
  off": an overlay of this machine's root filesystem (read from it; writes go to a tmpfs,
  never to this machine) made the root of its own mount namespace, with a private ``/dev``
  whose only block devices are the customer's disk and its partition, and a second sshd
  with a fresh host key and a one-time root password (set inside the overlay only; the
  provider stand-in keeps a root-only record of it, :meth:`LabServer.rescue_passwords`).
- **The provider stand-in** is the one mocked boundary: a provider's rescue API cannot
  exist on this machine. It is a small HTTP server speaking exactly the protocol of the
  executor's provider adapter (``services/executor/rescue/provider.py``) for these servers,
  with failure injection (a boot that fails, one that never finishes, an API that answers
  503). Tests run it as a thread (:class:`ProviderStandIn`); the demo as its own process
  (:class:`ProviderProcess`, ``python -m services.demo.rescue_lab``), so it outlives
  ``intervene demo --keep`` like the rest of the estate.

How far the server and the rescue system are kept apart from this machine (the executor's
rescue runbooks run in the rescue system as root, on a developer's machine too): each runs
in PID, mount, IPC and UTS namespaces of its own besides the network namespace
(:data:`NAMESPACES`), so its ``ps`` and ``/proc`` show only its own processes and it cannot
signal any of this machine's. Before sshd starts, it makes its own tree (the disk, or the
overlay) the root (``pivot_root``) and detaches this machine's mount tree, so no chroot
escape leads back to this machine's ``/dev`` or mounts; and sshd starts with
:data:`DROPPED_CAPS` taken out of the capability bounding set (``setpriv``), so no login can
make a device node (CAP_MKNOD), load a kernel module, do raw I/O, reboot or set the clock.
What is not kept apart: logins are root of this machine's kernel and keep CAP_SYS_ADMIN,
CAP_SYS_CHROOT and CAP_NET_ADMIN, which the repairs need (mount, chroot, nft). That is
enough to reach this machine's disks on purpose (mounting a ``devtmpfs``, for one); and the
rescue system can read this machine's root filesystem, its overlay's lower layer. So the lab
keeps the runbooks from touching this machine by accident; it is no boundary against a
hostile root.

Everything is created under random ``<prefix><hex>`` names and removed by
:meth:`LabServer.close`: the namespaces with their processes (the init of a PID namespace
is killed first, which kills every process in it), the loop device, the image copy and
temporary directories (the demo records each server in its manifest before creating it).
No user, firewall or sshd configuration of this machine is touched. Needs root.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import inspect
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from services.demo.targets import free_port, free_subnet, new_password, token
from services.runtime.announce import announced

REPO = Path(__file__).resolve().parents[2]
IMAGE_FORMAT = "4"  # bump when the image layout changes
IMAGE_SIZE = 320 * 1024 * 1024
ROOT_UUID = "4f1c2a5e-7d36-4b0e-9a57-2d1f0c3b8e61"
KERNEL_VERSION = "6.1.0-stand-in"
OPERATOR = "operator"  # the customer's own admin login on the image (not a host user)
NIC = "eth0"

# What the image is made of: a small Debian with sshd, PAM, GRUB and nftables, copied from
# this machine's installed packages plus every library their programs link.
PACKAGES = (
    "base-files", "base-passwd", "bash", "dash", "coreutils", "libc6", "libc-bin", "login",
    "passwd", "libpam-modules", "libpam-modules-bin", "libpam-runtime", "openssh-server",
    "openssh-client", "sed", "grep", "mawk", "findutils", "gzip", "util-linux", "mount",
    "e2fsprogs", "perl-base", "gettext-base", "debianutils", "nftables", "iproute2",
    "grub-common", "grub2-common", "grub-pc-bin", "udev",
)
_SKIP = ("/usr/share/doc/", "/usr/share/man/", "/usr/share/info/", "/usr/share/locale/",
         "/usr/share/lintian/", "/usr/share/bug/", "/usr/share/bash-completion/",
         "/usr/lib/udev/hwdb", "/lib/udev/hwdb", "/etc/udev/hwdb")
TOOLS = ("sfdisk", "mkfs.ext4", "e2fsck", "debugfs", "losetup", "partx", "ip", "nft",
         "grub-install", "grub-fstest", "udevadm", "unshare", "chroot", "ssh-keygen",
         "chpasswd", "useradd", "perl", "dpkg", "ldd", "ss")

# The section markers of this module that delimit the image builder (see builder_source).
_BUILDER_SECTION = "# --- the base image ---"
_BOOT_SECTION = "# --- the server's boot and the rescue system ---"

NEVER = "2147483647"  # sleep argument: "hangs here"

# How the server's boot and the rescue system run: in PID, mount, IPC and UTS namespaces of
# their own (inside the server's network namespace). Their first process is the PID
# namespace's init: when it dies every process of the namespace dies with it, and it dies
# with unshare (--kill-child), the process LabServer starts.
NAMESPACES = ("unshare", "--mount", "--propagation", "private", "--pid", "--fork",
              "--kill-child", "--mount-proc", "--ipc", "--uts", "--")
# Capabilities taken out of the bounding set (setpriv) before sshd starts, so that no login
# can make a device node, load a kernel module, do raw I/O, reboot, set the clock, load BPF
# programs or watch this machine's performance events. What the repairs need stays:
# CAP_SYS_ADMIN (mount), CAP_SYS_CHROOT, CAP_NET_ADMIN (nft), CAP_SYSLOG (dmesg), ...
DROPPED_CAPS = ("mknod", "sys_module", "sys_rawio", "sys_boot", "sys_time", "sys_pacct",
                "wake_alarm", "block_suspend", "mac_admin", "mac_override", "bpf", "perfmon",
                "checkpoint_restore")
_BOUNDING = ",".join(f"-{cap}" for cap in DROPPED_CAPS)
READY = "provider stand-in: ready"  # what ProviderProcess waits for in its log
# The provider stand-in's record of the one-time rescue logins it set for a server, in the
# server's working directory (see LabServer.rescue_passwords).
RESCUE_CREDENTIALS = "rescue-credentials.jsonl"


def available() -> str | None:
    """Why rescue lab servers cannot run here (None: they can)."""
    if os.geteuid() != 0:
        return "needs root (loop devices, network namespaces, mounts)"
    if not Path("/usr/sbin/sshd").exists():
        return "/usr/sbin/sshd is missing (apt-get install openssh-server)"
    for tool in TOOLS:
        if shutil.which(tool) is None:
            return (f"{tool} is missing (apt-get install nftables grub-pc-bin grub2-common "
                    "fdisk udev e2fsprogs iproute2)")
    for package in PACKAGES:
        if subprocess.run(["dpkg", "-s", package], capture_output=True,
                          check=False).returncode != 0:
            return f"package {package} is not installed (the image is built from it)"
    return None


def run(*argv: str, stdin: str | None = None, check: bool = True,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False,
                          timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} failed ({done.returncode}): "
                           f"{done.stderr.strip()[-2000:]}")
    return done


# --- the base image ----------------------------------------------------------------------
# (Everything from here to the next section is hashed into the image's cache key.)


def cache_dir() -> Path:
    """Where the base image is kept: the local stack's git-ignored cache."""
    return Path(os.environ.get("INTERVENE_CACHE_DIR", REPO / ".cache")) / "images"


def builder_source() -> str:
    """The code that shapes the image: this whole section of the module (every function
    from here to the server's boot, the helpers added later included) and what it calls
    from outside it (:func:`run`, :func:`~services.demo.targets.new_password`)."""
    text = Path(__file__).read_text(encoding="utf-8")
    start = text.index(f"\n{_BUILDER_SECTION}")  # the headings, not these constants
    end = text.index(f"\n{_BOOT_SECTION}", start)
    return "".join((text[start:end], inspect.getsource(run), inspect.getsource(new_password)))


def _image_key() -> str:
    """What the image is built from: the packages' versions and the code that builds it
    (only that code: changing the provider stand-in must not cost a rebuild)."""
    versions = run("dpkg-query", "-W", "-f=${Package} ${Version}\\n", *PACKAGES).stdout
    digest = hashlib.sha256()
    digest.update(IMAGE_FORMAT.encode())
    digest.update(repr((IMAGE_SIZE, ROOT_UUID, KERNEL_VERSION, OPERATOR, NIC, PACKAGES,
                        _SKIP)).encode())
    digest.update(builder_source().encode())
    digest.update(versions.encode())
    return digest.hexdigest()[:16]


def image_path() -> Path:
    return cache_dir() / f"rescue-base-{_image_key()}.img"


def base_image() -> Path:
    """The cached base disk image, built on first use (a lock keeps parallel runs apart)."""
    image = image_path()
    image.parent.mkdir(parents=True, exist_ok=True)
    with (image.parent / "build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if image.exists():
            return image
        for old in image.parent.glob("rescue-base-*.img*"):
            old.unlink(missing_ok=True)
        partial = image.with_suffix(".img.partial")
        # No log of its own: a failing step raises with that command's stderr.
        with announced(f"rescue lab: building the base disk image {image.name}",
                       log=None, expect="about 10 s"):
            _build_image(partial)
        partial.rename(image)
    return image


def _copy_path(src: str, tree: Path) -> Path | None:
    """Copy one path of the host into ``tree`` (symlinks as symlinks); return regular files."""
    dest = tree / src.lstrip("/")
    if os.path.islink(src):
        if not os.path.lexists(dest):
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.readlink(src), dest)
        return None
    if os.path.isdir(src):
        dest.mkdir(parents=True, exist_ok=True)
        return None
    if not os.path.isfile(src) or os.path.lexists(dest):
        return None
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dest)
    return dest


def _is_elf(path: Path) -> bool:
    with contextlib.suppress(OSError), path.open("rb") as f:
        return f.read(4) == b"\x7fELF"
    return False


def _populate(tree: Path) -> None:
    # Debian 12 has a merged /usr: the top-level directories are symlinks into it.
    (tree / "usr").mkdir(parents=True)
    for name in ("bin", "sbin", "lib", "lib64"):
        (tree / "usr" / name).mkdir()
        os.symlink(f"usr/{name}", tree / name)
    copied: list[Path] = []
    listed = run("dpkg", "-L", *PACKAGES).stdout.splitlines()
    for src in listed:
        if not src.startswith("/") or src.startswith(_SKIP) or src == "/.":
            continue
        copy = _copy_path(src, tree)
        if copy is not None:
            copied.append(copy)
    # Every library the programs and PAM modules link, with their soname symlinks.
    elves = [p for p in copied if _is_elf(p)]
    libraries: set[str] = set()
    for n in range(0, len(elves), 200):
        linked = run("ldd", *(str(p) for p in elves[n:n + 200]), check=False).stdout
        for line in linked.splitlines():
            parts = line.split()
            for part in parts:
                if part.startswith("/") and not part.endswith(":"):
                    libraries.add(part)
    for lib in sorted(libraries):
        if not os.path.exists(lib):
            continue
        real = os.path.realpath(lib)
        _copy_path(real, tree)
        dest = tree / lib.lstrip("/")
        if not os.path.lexists(dest):
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.path.relpath(real, os.path.realpath(os.path.dirname(lib))), dest)
    # The host's PAM and login configuration (the modules came with libpam-modules).
    for conf in ("pam.d", "security", "login.defs", "nsswitch.conf", "shells", "environment",
                 "adduser.conf", "host.conf", "ld.so.conf", "ld.so.conf.d",
                 "protocols", "services", "ethertypes"):
        host_conf = Path("/etc") / conf
        if host_conf.is_dir():
            shutil.copytree(host_conf, tree / "etc" / conf, symlinks=True, dirs_exist_ok=True)
        elif host_conf.exists():
            shutil.copy2(host_conf, tree / "etc" / conf)


def _write_etc(tree: Path, operator_password_hash: str) -> None:
    etc = tree / "etc"
    for d in ("dev", "proc", "sys", "run", "tmp", "mnt", "root", "home/operator", "var/log",
              "var/lib", "var/tmp", "boot", "etc/network", "etc/ssh/sshd_config.d",
              "etc/systemd/system/multi-user.target.wants",
              "etc/systemd/system/sysinit.target.wants", "etc/default"):
        (tree / d).mkdir(parents=True, exist_ok=True)
    (tree / "tmp").chmod(0o1777)
    (tree / "var/tmp").chmod(0o1777)
    (tree / "root").chmod(0o700)
    # The root password is one nobody knows any more: the "forgotten root password".
    (etc / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/bash\n"
        "daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
        "sshd:x:100:65534::/run/sshd:/usr/sbin/nologin\n"
        f"{OPERATOR}:x:1000:1000:customer admin:/home/operator:/bin/bash\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
    (etc / "group").write_text("root:x:0:\ndaemon:x:1:\nshadow:x:42:\n"
                               f"{OPERATOR}:x:1000:\nnogroup:x:65534:\n")
    forgotten = run("openssl", "passwd", "-6", new_password()).stdout.strip() \
        if shutil.which("openssl") else "$6$forgotten$" + "x" * 86
    (etc / "shadow").write_text(
        f"root:{forgotten}:19700:0:99999:7:::\n"
        "daemon:*:19700:0:99999:7:::\nsshd:*:19700:0:99999:7:::\n"
        f"{OPERATOR}:{operator_password_hash}:19700:0:99999:7:::\n"
        "nobody:*:19700:0:99999:7:::\n")
    (etc / "gshadow").write_text("root:*::\ndaemon:*::\nshadow:*::\n"
                                 f"{OPERATOR}:!::\nnogroup:*::\n")
    (etc / "shadow").chmod(0o640)
    (etc / "gshadow").chmod(0o640)
    os.chown(tree / "home/operator", 1000, 1000)
    (etc / "hostname").write_text("customer-web-01\n")
    (etc / "hosts").write_text("127.0.0.1 localhost\n127.0.1.1 customer-web-01\n")
    (etc / "fstab").write_text(f"UUID={ROOT_UUID} / ext4 errors=remount-ro 0 1\n")
    (etc / "ssh/sshd_config").write_text(textwrap.dedent("""\
        # The customer's sshd configuration.
        Include /etc/ssh/sshd_config.d/*.conf
        Port 22
        PermitRootLogin yes
        PasswordAuthentication yes
        KbdInteractiveAuthentication no
        UsePAM yes
        X11Forwarding no
        PrintMotd no
        AcceptEnv LANG LC_*
        Subsystem sftp /usr/lib/openssh/sftp-server
        """))
    # The customer's firewall: SSH and the web allowed, everything else inbound dropped, and
    # a rule of their own (a blocked port) the recovery must keep.
    (etc / "nftables.conf").write_text(textwrap.dedent("""\
        #!/usr/sbin/nft -f
        flush ruleset

        table inet filter {
        \tchain input {
        \t\ttype filter hook input priority filter; policy drop;
        \t\tct state established,related accept
        \t\tiif "lo" accept
        \t\tmeta l4proto { icmp, ipv6-icmp } accept
        \t\ttcp dport { 22, 80, 443 } accept
        \t}
        \tchain forward {
        \t\ttype filter hook forward priority filter; policy drop;
        \t}
        \tchain output {
        \t\ttype filter hook output priority filter; policy accept;
        \t\ttcp dport 25 drop comment "customer: no outbound mail"
        \t}
        }
        """))
    (etc / "network/interfaces").write_text(textwrap.dedent(f"""\
        # The customer's network configuration (ifupdown).
        auto lo
        iface lo inet loopback

        auto {NIC}
        iface {NIC} inet static
        \taddress @ADDRESS@
        \tgateway @GATEWAY@
        """))
    (etc / "default/grub").write_text(textwrap.dedent("""\
        GRUB_DEFAULT=0
        GRUB_TIMEOUT=1
        GRUB_DISTRIBUTOR=Debian
        GRUB_CMDLINE_LINUX_DEFAULT="quiet"
        GRUB_CMDLINE_LINUX=""
        GRUB_DISABLE_OS_PROBER=true
        """))
    # systemd's enablement of the two services the boot checks.
    os.symlink("/lib/systemd/system/ssh.service",
               etc / "systemd/system/multi-user.target.wants/ssh.service")
    os.symlink("/lib/systemd/system/ssh.service", etc / "systemd/system/sshd.service")
    os.symlink("/lib/systemd/system/nftables.service",
               etc / "systemd/system/sysinit.target.wants/nftables.service")
    for name in (f"vmlinuz-{KERNEL_VERSION}", f"initrd.img-{KERNEL_VERSION}"):
        (tree / "boot" / name).write_text(
            "placeholder: the rescue tests never execute a kernel; GRUB only has to find "
            "this file\n")
    (tree / "root/.profile").write_text("# the customer's root profile\n")
    (tree / "home/operator/notes.txt").write_text("the customer's own data\n")


@contextlib.contextmanager
def attached(image: Path) -> Iterator[tuple[str, str]]:
    """The image on a loop device with its partition: ``(disk, partition)`` device paths."""
    disk, part = attach(image)
    try:
        yield disk, part
    finally:
        detach(disk)


def attach(image: Path) -> tuple[str, str]:
    """Put ``image`` on a loop device; ``(disk, partition)`` once the partition exists."""
    disk = run("losetup", "--find", "--show", "--partscan", str(image)).stdout.strip()
    # This kernel has no MS-DOS partition parser; partx adds the partition from the
    # table itself (BLKPG), which is what udev would do elsewhere.
    run("partx", "--add", disk, check=False)
    run("partx", "--update", disk, check=False)
    part = f"{disk}p1"
    for _ in range(50):
        if os.path.exists(part):
            return disk, part
        time.sleep(0.05)
    detach(disk)
    raise RuntimeError(f"partition {part} did not appear")


def detach(disk: str) -> None:
    run("partx", "--delete", disk, check=False)
    run("losetup", "--detach", disk, check=False)


@contextlib.contextmanager
def chroot_mounts(root: Path) -> Iterator[None]:
    mounted: list[Path] = []
    try:
        for what, where, args in (("/dev", "dev", ("--rbind",)), ("proc", "proc", ("-t", "proc")),
                                  ("sys", "sys", ("-t", "sysfs")),
                                  ("run", "run", ("-t", "tmpfs"))):
            run("mount", *args, what, str(root / where))
            mounted.append(root / where)
        yield
    finally:
        for point in reversed(mounted):
            run("umount", "-R", "-l", str(point), check=False)


def _build_image(path: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix="ivr-image-"))
    try:
        tree = work / "root"
        _populate(tree)
        _write_etc(tree, "!")
        with path.open("wb") as f:
            f.truncate(IMAGE_SIZE)
        run("sfdisk", "-q", str(path), stdin="label: dos\nstart=2048, type=83, bootable\n")
        with attached(path) as (disk, part):
            run("mkfs.ext4", "-q", "-F", "-L", "cloudimg-rootfs", "-U", ROOT_UUID, "-d",
                str(tree), part)
            mnt = work / "mnt"
            mnt.mkdir()
            run("mount", part, str(mnt))
            try:
                with chroot_mounts(mnt):
                    run("chroot", str(mnt), "/usr/bin/ssh-keygen", "-A")
                    run("chroot", str(mnt), "/usr/sbin/grub-install", "--target=i386-pc", disk)
                    run("chroot", str(mnt), "/usr/sbin/grub-mkconfig", "-o",
                        "/boot/grub/grub.cfg")
            finally:
                run("umount", str(mnt))
            run("e2fsck", "-f", "-p", part)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --- the server's boot and the rescue system -----------------------------------------------

# Firmware + GRUB + init, from the disk's own files. "$@" = disk partition rootdir nic
BOOT_SCRIPT = r"""
set -u
disk=$1 part=$2 root=$3 nic=$4
say() { echo "boot: $*"; }
hang() { say "$*"; exec sleep """ + NEVER + r"""; }
head -c 440 "$disk" | grep -aq GRUB || hang "no boot loader in the MBR: no bootable device"
cfg=$(grub-fstest "$disk" cat '(loop0,msdos1)/boot/grub/grub.cfg' 2>&1) \
    || hang "GRUB cannot read /boot/grub/grub.cfg: grub rescue> ($cfg)"
grub-fstest "$disk" cat '(loop0,msdos1)/boot/grub/i386-pc/normal.mod' >/dev/null 2>&1 \
    || hang "GRUB: file /boot/grub/i386-pc/normal.mod not found: grub rescue>"
kernel=$(printf '%s\n' "$cfg" | awk '$1 == "linux" { print $2; exit }')
[ -n "$kernel" ] || hang "GRUB: no menu entry with a kernel"
grub-fstest "$disk" cat "(loop0,msdos1)$kernel" >/dev/null 2>&1 \
    || hang "GRUB: kernel $kernel not found"
say "GRUB: booting $kernel"
e2fsck -p "$part"; rc=$?
[ "$rc" -lt 4 ] || hang "fsck $part failed (exit $rc): emergency mode, no services started"
say "fsck: $part clean (exit $rc)"
mount "$part" "$root" || hang "cannot mount the root filesystem"
mount -t tmpfs -o mode=0755 dev "$root/dev"
for n in "null 1 3" "zero 1 5" "full 1 7" "random 1 8" "urandom 1 9" "tty 5 0"; do
    set -- $n; mknod -m 0666 "$root/dev/$1" c "$2" "$3"
done
mkdir "$root/dev/pts" && mount -t devpts -o newinstance,ptmxmode=0666 devpts "$root/dev/pts"
ln -s pts/ptmx "$root/dev/ptmx"
mount -t proc proc "$root/proc"
mount -t sysfs sys "$root/sys"
mount -t tmpfs -o mode=0755 run "$root/run"
mkdir -m 0755 "$root/run/sshd"
ip link set lo up
awk '$1 == "iface" { name = $2; method = $4 }
     $1 == "address" && method == "static" { print name, "address", $2 }
     $1 == "gateway" && method == "static" { print name, "gateway", $2 }' \
    "$root/etc/network/interfaces" | while read -r name what value; do
    if ! ip link show "$name" >/dev/null 2>&1; then
        say "networking: no interface $name"; continue
    fi
    ip link set "$name" up
    case $what in
        address) ip addr add "$value" dev "$name" && say "networking: $name $value" ;;
        gateway) ip route add default via "$value" dev "$name" 2>/dev/null ;;
    esac
done
wants=$root/etc/systemd/system
if [ -L "$wants/sysinit.target.wants/nftables.service" ] && [ -f "$root/etc/nftables.conf" ]; then
    if chroot "$root" /usr/sbin/nft -f /etc/nftables.conf; then say "nftables: ruleset loaded"
    else say "nftables: ruleset failed to load"; fi
fi
[ -L "$wants/multi-user.target.wants/ssh.service" ] || hang "ssh.service: not enabled"
[ "$(readlink "$wants/ssh.service")" != /dev/null ] || hang "ssh.service: masked"
chroot "$root" /usr/sbin/sshd -t || hang "ssh.service: configuration test failed"
# The disk's root filesystem becomes this mount namespace's root and this machine's mount
# tree is detached (pivot_root): the server's processes have nothing else to get back to.
# From here on the commands are the disk's own (umount, setpriv: util-linux and mount).
cd "$root" && pivot_root . . && umount -l . && cd / \
    || hang "cannot switch to the root filesystem"
say "ssh.service: started"
exec setpriv --bounding-set """ + _BOUNDING + r""" -- /usr/sbin/sshd -D -e
"""

# The provider's network-booted rescue system. "$@" = workdir disk partition [smartctl
# output]; stdin: the root password line for chpasswd.
RESCUE_SCRIPT = r"""
set -eu
work=$1 disk=$2 part=$3 smart=${4:-}
mount -t tmpfs -o mode=0755 rescue "$work"
mkdir "$work/upper" "$work/wd" "$work/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$work/upper,workdir=$work/wd" "$work/root"
r=$work/root
mount -t proc proc "$r/proc"
mount -t sysfs sys "$r/sys"
mount -t tmpfs -o mode=0755 run "$r/run"
mkdir -m 0755 "$r/run/sshd"
mount -t tmpfs -o mode=1777 tmp "$r/tmp"
mount -t tmpfs -o mode=0755 dev "$r/dev"
for n in "null 1 3" "zero 1 5" "full 1 7" "random 1 8" "urandom 1 9" "tty 5 0"; do
    set -- $n; mknod -m 0666 "$r/dev/$1" c "$2" "$3"
done
mkdir "$r/dev/pts" "$r/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666 devpts "$r/dev/pts"
ln -s pts/ptmx "$r/dev/ptmx"
ln -s /proc/self/fd "$r/dev/fd"
# The customer's disk is the only block device with a node here (and sshd starts without
# CAP_MKNOD: no login can make another).
for dev in "$disk" "$part"; do
    mknod -m 0660 "$r$dev" b $(stat -L -c '0x%t 0x%T' "$dev")
done
if [ -n "$smart" ]; then
    # The disk's SMART answer: loop devices have none, so the failing-disk test gives the
    # rescue system a smartctl that prints a real failing disk's output.
    mkdir -p "$r${smart%/*}" && cp "$smart" "$r$smart"
    printf '#!/bin/sh\ncat %s\nexit 24\n' "$smart" > "$r/usr/local/sbin/smartctl"
    chmod 755 "$r/usr/local/sbin/smartctl"
fi
chroot "$r" /usr/sbin/chpasswd
ssh-keygen -q -t ed25519 -N '' -C rescue -f "$r/etc/ssh/rescue_host_ed25519_key"
cat > "$r/etc/ssh/rescue_sshd_config" <<EOF
Port 22
HostKey /etc/ssh/rescue_host_ed25519_key
PidFile /run/rescue-sshd.pid
PermitRootLogin yes
PasswordAuthentication yes
KbdInteractiveAuthentication no
UsePAM yes
AllowUsers root
PrintMotd no
EOF
# The overlay becomes this mount namespace's root and this machine's mount tree (its /dev
# with its disks among it) is detached: no chroot escape leads back to it.
cd "$r"
pivot_root . .
umount -l .
cd /
echo "rescue: ready"
cat /etc/ssh/rescue_host_ed25519_key.pub
exec setpriv --bounding-set """ + _BOUNDING + r""" -- \
    /usr/sbin/sshd -D -e -f /etc/ssh/rescue_sshd_config
"""


def pid_namespace(pid: int | str) -> str | None:
    """The PID namespace of ``pid`` (``pid:[4026531836]``); None once it exited."""
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def in_pid_namespaces(namespaces: set[str]) -> list[int]:
    """Every live process (host pids) in one of ``namespaces``."""
    return [int(entry) for entry in os.listdir("/proc")
            if entry.isdigit() and pid_namespace(entry) in namespaces]


def namespace_init(pid: int) -> bool:
    """Whether ``pid`` is the init (pid 1) of a PID namespace below this one."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("NSpid:"):
            levels = line.split()[1:]
            return len(levels) > 1 and levels[-1] == "1"
    return False


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
            ["ip", "netns", "exec", self.netns, *NAMESPACES,
             "sh", "-c", BOOT_SCRIPT, "boot", self.disk, self.part, str(root), NIC],
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
            ["ip", "netns", "exec", self.netns, *NAMESPACES,
             "sh", "-c", RESCUE_SCRIPT, "rescue", str(work), self.disk, self.part, smart],
            stdout=log, stderr=log, stdin=subprocess.PIPE, start_new_session=True)
        assert self._process.stdin is not None
        self._process.stdin.write(f"root:{password}\n".encode())
        self._process.stdin.close()
        self.mode = "rescue"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"rescue system failed: {log_path.read_text()[-2000:]}")
            text = log_path.read_text(errors="replace")
            marker = text.rfind("rescue: ready")
            if marker >= 0 and self.listening():
                key = text[marker:].splitlines()[1]
                self.rescue_host_key = " ".join(key.split()[:2])
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


# --- the provider stand-in -------------------------------------------------------------------


@dataclass
class Action:
    id: str
    server_id: str
    kind: str  # "boot_rescue" or "boot_disk"
    status: str = "running"
    progress: int = 0
    message: str = "queued"
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    credentials: dict[str, Any] | None = None
    credentials_issued: bool = False

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "server_id": self.server_id, "kind": self.kind,
                "status": self.status, "progress": self.progress, "message": self.message,
                "started_at": _iso(self.started_at),
                "finished_at": _iso(self.finished_at) if self.finished_at else None}


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


class ProviderStandIn:
    """The rescue provider API (see ``services/executor/rescue/provider.py``) for
    :class:`LabServer`\\ s, on 127.0.0.1. Failure injection per server id in ``faults``:
    ``"fail_rescue"`` (the rescue boot fails), ``"hang_rescue"`` (it never finishes),
    ``"fail_disk"`` (the boot back to disk fails), ``"unavailable"`` (HTTP 503)."""

    def __init__(self, *, token: str | None = None, port: int = 0,
                 log: Callable[[str], None] | None = None) -> None:
        self.token = token or secrets.token_urlsafe(24)
        self._log = log
        self.servers: dict[str, LabServer | None] = {}
        self.actions: dict[str, Action] = {}
        self.by_request: dict[str, str] = {}
        self.faults: dict[str, str] = {}
        self.calls: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                        daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def add(self, server: LabServer) -> None:
        self.servers[server.service_id] = server

    def add_virtual(self, service_id: str, fault: str) -> None:
        """A server id the provider knows but with no machine behind it: for failure tests,
        where the provider fails before any machine would be touched."""
        self.servers[service_id] = None
        self.faults[service_id] = fault

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _start(self, server_id: str, kind: str, request_id: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            existing = self.by_request.get(request_id)
            if existing is not None:  # the same request again: the same action
                return 200, {"action": self.actions[existing].public()}
            action = Action(id=f"act-{uuid.uuid4().hex[:10]}", server_id=server_id, kind=kind)
            self.actions[action.id] = action
            self.by_request[request_id] = action.id
        threading.Thread(target=self._work, args=(action,), daemon=True).start()
        return 202, {"action": action.public()}

    def _work(self, action: Action) -> None:
        server = self.servers.get(action.server_id)
        fault = self.faults.get(action.server_id)
        try:
            action.progress, action.message = 10, "powering off"
            if action.kind == "boot_rescue":
                if fault == "hang_rescue":
                    action.message = "waiting for the network boot"
                    return  # never finishes
                if fault == "fail_rescue":
                    time.sleep(0.2)
                    raise RuntimeError("PXE boot failed: no DHCP offer on the rescue VLAN")
                action.progress, action.message = 40, "network boot of the rescue system"
                if server is None:
                    raise RuntimeError("no machine behind this server id")
                password = new_password()
                server.note_rescue_credentials(action.id, "root", password)
                host_key = server.boot_rescue(password)
                action.credentials = {"address": server.address, "port": 22,
                                      "username": "root", "password": password,
                                      "host_key": host_key}
            else:
                if fault == "fail_disk":
                    raise RuntimeError("power cycle failed: BMC did not answer")
                action.progress, action.message = 50, "booting from disk"
                if server is not None:
                    server.boot_disk()
            action.progress, action.message, action.status = 100, "done", "succeeded"
        except Exception as exc:  # noqa: BLE001 - reported through the API like a provider does
            action.status, action.message = "failed", str(exc)[:500]
        finally:
            if action.status != "running":
                action.finished_at = time.time()
                if self._log is not None:
                    took = action.finished_at - action.started_at
                    self._log(f"{action.id} {action.kind} {action.server_id}: {action.status} "
                              f"after {took:.1f}s ({action.message})")

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _route(self, method: str) -> None:
                provider.calls.append((method, self.path))
                if self.headers.get("Authorization") != f"Bearer {provider.token}":
                    self._send(401, {"error": "unauthorized", "message": "bad token"})
                    return
                parts = [p for p in self.path.split("/") if p]
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}") if length else {}
                if len(parts) == 5 and parts[:2] == ["v1", "servers"] and parts[3] == "actions":
                    server_id = parts[2]
                    if provider.faults.get(server_id) == "unavailable":
                        self._send(503, {"error": "unavailable", "message": "maintenance"})
                        return
                    if server_id not in provider.servers:
                        self._send(404, {"error": "unknown_server", "message": server_id})
                        return
                    kind = {"boot-rescue": "boot_rescue", "boot-disk": "boot_disk"}.get(parts[4])
                    request_id = str(body.get("request_id") or "")
                    if method != "POST" or kind is None or not request_id:
                        self._send(400, {"error": "bad_request", "message": self.path})
                        return
                    self._send(*provider._start(server_id, kind, request_id))
                    return
                if len(parts) >= 3 and parts[:2] == ["v1", "actions"]:
                    action = provider.actions.get(parts[2])
                    if action is None:
                        self._send(404, {"error": "unknown_action", "message": parts[2]})
                        return
                    if len(parts) == 3 and method == "GET":
                        self._send(200, {"action": action.public()})
                        return
                    if len(parts) == 4 and parts[3] == "rescue-credentials" and method == "POST":
                        with provider._lock:
                            if action.credentials is None:
                                self._send(409, {"error": "not_ready",
                                                 "message": action.status})
                            elif action.credentials_issued:
                                self._send(409, {"error": "already_issued",
                                                 "message": "one-time credentials"})
                            else:
                                action.credentials_issued = True
                                self._send(200, action.credentials)
                        return
                self._send(404, {"error": "not_found", "message": self.path})

            def do_GET(self) -> None:
                self._route("GET")

            def do_POST(self) -> None:
                self._route("POST")

        return Handler


# --- the provider stand-in as its own process (the demo) -------------------------------------


@dataclass(frozen=True)
class ProviderApi:
    """Where the executor finds the provider's rescue API."""

    url: str
    token: str = field(repr=False)

    def executor_env(self) -> dict[str, str]:
        return {"EXECUTOR_RESCUE_API_URL": self.url, "EXECUTOR_RESCUE_API_TOKEN": self.token}


@dataclass
class ProviderProcess:
    """:class:`ProviderStandIn` in a process of its own session, serving ``servers`` (and
    powering them on from their disks first, as a provider's machines are running). Stopped
    by SIGTERM to its process group; the servers are left as they are (:meth:`LabServer.close`
    removes them)."""

    process: subprocess.Popen[bytes]
    api: ProviderApi
    log_path: Path

    @classmethod
    def start(cls, servers: Sequence[LabServer], *, log_path: Path,
              power_on: bool = True) -> ProviderProcess:
        port = free_port()
        api = ProviderApi(url=f"http://127.0.0.1:{port}", token=secrets.token_urlsafe(24))
        # The token goes through stdin: never on a command line `ps` shows.
        config = {"port": port, "token": api.token, "power_on": power_on,
                  "servers": [s.record() for s in servers]}
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "services.demo.rescue_lab"], cwd=REPO,
                stdin=subprocess.PIPE, stdout=log, stderr=log, start_new_session=True)
        assert process.stdin is not None
        process.stdin.write(json.dumps(config).encode())
        process.stdin.close()
        return cls(process=process, api=api, log_path=log_path)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the provider stand-in exited ({self.process.returncode}): "
                                   f"{self.log()[-2000:]}")
            if READY in self.log():
                return
            time.sleep(0.05)
        raise RuntimeError(f"the provider stand-in did not start: {self.log()[-2000:]}")


def serve(config: dict[str, Any]) -> None:
    """The body of ``python -m services.demo.rescue_lab``: serve until SIGTERM or SIGINT."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    def log(line: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)

    provider = ProviderStandIn(token=str(config["token"]), port=int(config["port"]), log=log)
    try:
        for record in config["servers"]:
            server = LabServer.from_record(record)
            provider.add(server)
            if config.get("power_on"):
                server.boot_disk()
                log(f"{server.service_id}: powered on from its disk ({server.address})")
        log(f"{READY} on {provider.url} for {', '.join(provider.servers)}")
        while not stop.wait(0.5):
            pass
    finally:
        provider.close()
        log("provider stand-in: stopped")


if __name__ == "__main__":
    serve(json.loads(sys.stdin.read()))
