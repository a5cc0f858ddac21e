"""Where a lab server and its rescue system run: PID, mount, IPC and UTS namespaces of their
own inside the server's network namespace, with a reduced capability bounding set.

The server's power-on (``boot.sh``: firmware, GRUB and init from the disk's own files) and
the provider's rescue system (``rescue.sh``) are shell scripts beside this module, checked
by ``shellcheck`` (tests/unit/demo/test_rescue_lab_scripts.py) and run with ``sh -c``.
"""

from __future__ import annotations

import os
from pathlib import Path

_HERE = Path(__file__).resolve().parent
BOOT_SCRIPT = (_HERE / "boot.sh").read_text(encoding="utf-8")
RESCUE_SCRIPT = (_HERE / "rescue.sh").read_text(encoding="utf-8")

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
BOUNDING = ",".join(f"-{cap}" for cap in DROPPED_CAPS)


def boot_command(netns: str, *, disk: str, part: str, root: Path, nic: str) -> list[str]:
    """Power on from the disk: ``boot.sh`` in the server's namespaces."""
    return ["ip", "netns", "exec", netns, *NAMESPACES, "sh", "-c", BOOT_SCRIPT, "boot",
            BOUNDING, disk, part, str(root), nic]


def rescue_command(netns: str, *, work: Path, disk: str, part: str,
                   smart: str) -> list[str]:
    """Boot the rescue system: ``rescue.sh`` in the server's namespaces (the root password
    line goes to its stdin)."""
    return ["ip", "netns", "exec", netns, *NAMESPACES, "sh", "-c", RESCUE_SCRIPT, "rescue",
            BOUNDING, str(work), disk, part, smart]


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
