"""Real rescue-mode targets for the executor's rescue tests: the rescue lab of the demo
(:mod:`devstack.demo.rescue_lab` — servers booting from real disk images, the rescue system,
the provider API stand-in), plus the ways of breaking a server only the tests use.

``intervene demo`` locks ``edge-01`` out with :func:`break_firewall`; the tests break the
filesystem, GRUB and sshd as well. Needs root.
"""

from __future__ import annotations

import shutil

from devstack.demo.rescue_lab import (
    KERNEL_VERSION,
    OPERATOR,
    LabServer,
    ProviderStandIn,
    available,
    base_image,
    break_firewall,
    operator_login,
    run,
)

__all__ = ["KERNEL_VERSION", "OPERATOR", "LabServer", "ProviderStandIn", "available",
           "base_image", "break_filesystem", "break_firewall", "break_grub",
           "break_sshd_config", "operator_login", "run"]


def break_filesystem(server: LabServer) -> None:
    """Corrupt the root filesystem the way a crash does, and mark it as having errors (as
    the kernel does when it meets the damage), so the next boot's fsck stops the boot."""
    with server.mounted() as root:
        victim = root / "var/lib/customer-app"
        victim.mkdir(parents=True)
        for n in range(20):
            (victim / f"record-{n}.dat").write_text(f"record {n}\n" * 50)
    inode = run("debugfs", "-R", "stat /var/lib/customer-app", server.part).stdout
    number = run("debugfs", "-R", "ls -l /var/lib", server.part).stdout
    del inode, number
    # Clear the directory's inode (its entries and blocks become orphans) and mark some
    # in-use blocks free: both need a full, interactive-grade fsck.
    run("debugfs", "-w", "-R", "clri /var/lib/customer-app", server.part)
    run("debugfs", "-w", "-R", "freeb 2000 40", server.part)
    run("debugfs", "-w", "-R", "ssv state 2", server.part)


def break_grub(server: LabServer) -> None:
    """Delete GRUB's files and its boot code in the MBR (the partition table stays)."""
    with server.mounted() as root:
        shutil.rmtree(root / "boot/grub")
    with open(server.disk, "r+b") as disk:
        disk.write(b"\0" * 440)
    run("sync")


def break_sshd_config(server: LabServer) -> None:
    """A typo in sshd_config, a stray option, and a missing host key."""
    with server.mounted() as root:
        config = root / "etc/ssh/sshd_config"
        text = config.read_text().replace("PasswordAuthentication yes",
                                          "PasswordAuthentication yes\nPermitRootLogn no\n"
                                          "MaxAuthTries many")
        config.write_text(text)
        for suffix in ("", ".pub"):
            (root / f"etc/ssh/ssh_host_ed25519_key{suffix}").unlink()
        (root / "etc/systemd/system/multi-user.target.wants/ssh.service").unlink()
