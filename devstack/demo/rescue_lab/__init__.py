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
  (:class:`ProviderProcess`, ``python -m devstack.demo.rescue_lab``), so it outlives
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

from devstack.demo.rescue_lab.common import (
    KERNEL_VERSION,
    NIC,
    OPERATOR,
    READY,
    RESCUE_CREDENTIALS,
    available,
    run,
)
from devstack.demo.rescue_lab.image import (
    attach,
    attached,
    base_image,
    builder_source,
    cache_dir,
    chroot_mounts,
    detach,
    image_path,
)
from devstack.demo.rescue_lab.provider import (
    Action,
    ProviderApi,
    ProviderProcess,
    ProviderStandIn,
    serve,
)
from devstack.demo.rescue_lab.sandbox import (
    BOOT_SCRIPT,
    DROPPED_CAPS,
    NAMESPACES,
    RESCUE_SCRIPT,
    in_pid_namespaces,
    namespace_init,
    pid_namespace,
)
from devstack.demo.rescue_lab.server import (
    LabServer,
    break_firewall,
    customer_login,
    operator_login,
)

__all__ = [
    "BOOT_SCRIPT", "DROPPED_CAPS", "KERNEL_VERSION", "NAMESPACES", "NIC", "OPERATOR",
    "READY", "RESCUE_CREDENTIALS", "RESCUE_SCRIPT", "Action", "LabServer", "ProviderApi",
    "ProviderProcess", "ProviderStandIn", "attach", "attached", "available", "base_image",
    "break_firewall", "builder_source", "cache_dir", "chroot_mounts", "customer_login",
    "detach", "image_path", "in_pid_namespaces", "namespace_init", "operator_login",
    "pid_namespace", "run", "serve",
]
