"""The lab servers' disk: an MBR-partitioned raw image with one ext4 root filesystem, built
once from this machine's own Debian packages and cached; every server gets a sparse copy
on its own loop device.

This whole module is hashed into the image's cache key (:func:`builder_source`), so a change
here rebuilds the image, and a change anywhere else in the lab does not.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import inspect
import os
import shutil
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

from devstack.demo.rescue_lab.common import (
    IMAGE_FORMAT,
    IMAGE_SIZE,
    KERNEL_VERSION,
    NIC,
    OPERATOR,
    PACKAGES,
    REPO,
    ROOT_UUID,
    SKIP,
    run,
)
from devstack.demo.targets import new_password
from services.runtime.announce import announced


def cache_dir() -> Path:
    """Where the base image is kept: the local stack's git-ignored cache."""
    return Path(os.environ.get("INTERVENE_CACHE_DIR", REPO / ".cache")) / "images"


def builder_source() -> str:
    """The code that shapes the image: this whole module (the helpers added later
    included) and what it calls from outside it (:func:`~.common.run`,
    :func:`~devstack.demo.targets.new_password`)."""
    return "".join((Path(__file__).read_text(encoding="utf-8"), inspect.getsource(run),
                    inspect.getsource(new_password)))


def _image_key() -> str:
    """What the image is built from: the packages' versions and the code that builds it
    (only that code: changing the provider stand-in must not cost a rebuild)."""
    versions = run("dpkg-query", "-W", "-f=${Package} ${Version}\\n", *PACKAGES).stdout
    digest = hashlib.sha256()
    digest.update(IMAGE_FORMAT.encode())
    digest.update(repr((IMAGE_SIZE, ROOT_UUID, KERNEL_VERSION, OPERATOR, NIC, PACKAGES,
                        SKIP)).encode())
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
        if not src.startswith("/") or src.startswith(SKIP) or src == "/.":
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
