"""What every part of the rescue lab shares: where things are, what the image is made of,
whether the lab can run here, and how it runs a command."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
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
SKIP = ("/usr/share/doc/", "/usr/share/man/", "/usr/share/info/", "/usr/share/locale/",
         "/usr/share/lintian/", "/usr/share/bug/", "/usr/share/bash-completion/",
         "/usr/lib/udev/hwdb", "/lib/udev/hwdb", "/etc/udev/hwdb")
TOOLS = ("sfdisk", "mkfs.ext4", "e2fsck", "debugfs", "losetup", "partx", "ip", "nft",
         "grub-install", "grub-fstest", "udevadm", "unshare", "chroot", "ssh-keygen",
         "chpasswd", "useradd", "perl", "dpkg", "ldd", "ss")

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
