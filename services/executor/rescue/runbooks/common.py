"""What every rescue runbook does around its repair: find the customer's root filesystem,
check it, mount it for a chroot, keep backups on it, read its SSH host key, unmount it.

Rescue runbooks run as root in the provider's rescue system, over SSH, through the same
engine as every other runbook (journalled, audited, resumable). The customer's root
filesystem is mounted at :data:`MNT` with ``/dev``, ``/proc``, ``/sys`` and ``/run`` inside,
so the customer's own tools (``chpasswd -R``, ``grub-install``, ``sshd -t``, ``nft``) act on
the customer's system. Backups go to :data:`BACKUP_ROOT` on the customer's disk — next to
what they are copies of, so the customer can review and restore them after boot-back.

Device names, key lines and chain names learnt from the rescue system are validated before
they go into a command, like ticket input: the rescue system is the customer's disk's view.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.executor.hardware import Evidence
from services.executor.runbooks.model import (
    BackupNote,
    Command,
    Context,
    Results,
    Step,
    sh,
)

MNT = "/mnt/os-intervention"
BACKUP_ROOT = "/root/os-intervention"
DEVICE = re.compile(r"^/dev/[A-Za-z0-9][A-Za-z0-9_.:-]{0,31}(/[A-Za-z0-9][A-Za-z0-9_.:-]{0,31})?$")
HOST_KEY = re.compile(r"^(ssh-ed25519|ecdsa-sha2-nistp(256|384|521)|ssh-rsa) [A-Za-z0-9+/=]+$")
EXT_TYPES = ("ext2", "ext3", "ext4")


class RescueParams(BaseModel):
    """Built by the executor from the verdict (never free text from the ticket)."""

    model_config = ConfigDict(frozen=True, extra="ignore", strict=True)

    backup_tag: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,80}$")
    server_ip: str
    ssh_port: int = Field(default=22, ge=1, le=65535)
    # The provider's management networks (EXECUTOR_RESCUE_MANAGEMENT_SOURCES), normalised.
    management_sources: tuple[str, ...] = ()

    @field_validator("management_sources")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            ipaddress.ip_network(item, strict=False)
        return value

    @field_validator("server_ip")
    @classmethod
    def _ip(cls, value: str) -> str:
        return str(ipaddress.ip_address(value))

    @property
    def backup_dir(self) -> str:
        """Where the backups are on the customer's system (after boot-back)."""
        return f"{BACKUP_ROOT}/{self.backup_tag}"

    @property
    def backup_rel(self) -> str:
        """The same, relative to the mounted root (for commands run with cwd = MNT)."""
        return self.backup_dir.lstrip("/")


Ctx = Context[Any]


def out(results: Results, n: int = 0) -> str:
    return results[n].stdout if len(results) > n else ""


def tagged(results: Results, n: int = 0) -> dict[str, list[str]]:
    """``key:value`` lines of a detection script, grouped by key."""
    return tag_lines(out(results, n))


def tag_lines(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition(":")
        if sep:
            found.setdefault(key, []).append(value.strip())
    return found


def valid_device(name: str) -> bool:
    return bool(DEVICE.fullmatch(name)) and ".." not in name


# --- finding and mounting the root filesystem --------------------------------------------

_FIND = r"""
probe=/run/os-intervention-probe
mkdir -p "$probe"
for dev in $(blkid -o device 2>/dev/null | sort); do
    type=$(blkid -o value -s TYPE "$dev" 2>/dev/null)
    case $type in
        ext2|ext3|ext4) opts=ro,noload ;;
        xfs) opts=ro,norecovery ;;
        btrfs) opts=ro ;;
        *) continue ;;
    esac
    parent=$(lsblk -no PKNAME "$dev" 2>/dev/null | head -n 1)
    echo "fs:$dev $type ${parent:--}"
    if mount -o "$opts" "$dev" "$probe" 2>/dev/null; then
        if [ -f "$probe/etc/fstab" ] && [ -f "$probe/etc/passwd" ]; then echo "root:$dev"; fi
        umount "$probe"
    else
        echo "unmountable:$dev"
    fi
done
exit 0
"""


def learn_filesystems(results: Results, ctx: Ctx) -> Mapping[str, Any]:
    tags = tagged(results)
    filesystems = []
    for line in tags.get("fs", []):
        parts = line.split()
        if len(parts) != 3 or not valid_device(parts[0]):
            continue
        dev, fstype, parent = parts
        disk = f"/dev/{parent}" if parent != "-" else dev
        if valid_device(disk):
            # Dicts, not nested lists: FerretDB stores no arrays of arrays.
            filesystems.append({"device": dev, "type": fstype, "disk": disk})
    roots = [d for d in tags.get("root", []) if any(f["device"] == d for f in filesystems)]
    facts: dict[str, Any] = {"filesystems": filesystems, "root_candidates": roots,
                             "unmountable": [d for d in tags.get("unmountable", [])
                                             if valid_device(d)]}
    if len(roots) == 1:
        root = next(f for f in filesystems if f["device"] == roots[0])
        facts.update(root_device=root["device"], root_fstype=root["type"], disk=root["disk"],
                     root_is_ext=root["type"] in EXT_TYPES)
    return facts


def refuse_without_root(results: Results, ctx: Ctx) -> str | None:
    roots = ctx.facts.get("root_candidates") or []
    seen = ", ".join(f"{f['device']} ({f['type']})"
                     for f in ctx.facts.get("filesystems") or []) or "none"
    if not roots:
        return ("no Linux root filesystem (one with /etc/fstab and /etc/passwd) was found on "
                f"the server's disks; filesystems seen: {seen}")
    if len(roots) > 1:
        return (f"more than one Linux root filesystem was found ({', '.join(roots)}); an "
                "engineer must choose which one is the customer's system")
    return None


def find_root() -> Step[Any]:
    return Step(name="find_root", title="Find the customer's root filesystem",
                precheck=lambda ctx: [sh(_FIND, root=True)], learn=learn_filesystems,
                refuse=refuse_without_root)


def _check_errors(results: Results, ctx: Ctx) -> Mapping[str, Any]:
    status = results[0].exit_status if results else None
    return {"root_fs_errors": status is not None and status >= 4}


def check_root_fs() -> Step[Any]:
    """Read-only: a filesystem with errors is repaired first (filesystem repair), never
    written to by another repair."""
    return Step(
        name="check_root_fs", title="Check the root filesystem before changing it (read-only)",
        requires=("fact:root_is_ext",),
        precheck=lambda ctx: [Command(argv=("e2fsck", "-n", ctx.fact("root_device")), root=True,
                                      ok_exit=frozenset({0, 1, 2, 4, 8}), timeout_s=3600)],
        learn=_check_errors,
        refuse=lambda results, ctx: (
            f"e2fsck reports errors on the root filesystem {ctx.fact('root_device')}; it must "
            "be repaired first (filesystem repair), so nothing was changed"
            if ctx.facts.get("root_fs_errors") else None))


_MOUNT = r"""
set -e
dev=$1 mnt=$2
mkdir -p "$mnt"
mountpoint -q "$mnt" || mount "$dev" "$mnt"
# A separate /boot (and EFI system partition) as the customer's fstab says.
for where in /boot /boot/efi; do
    spec=$(awk -v w="$where" '$1 !~ /^#/ && $2 == w { print $1; exit }' "$mnt/etc/fstab")
    [ -n "$spec" ] || continue
    src=$(findfs "$spec" 2>/dev/null || true)
    case $src in /dev/*) ;; *) case $spec in /dev/*) src=$spec ;; *)
        echo "cannot find $spec (mounted at $where)" >&2; exit 3 ;; esac ;; esac
    mountpoint -q "$mnt$where" || mount "$src" "$mnt$where"
done
mountpoint -q "$mnt/dev" || mount --rbind /dev "$mnt/dev"
mountpoint -q "$mnt/proc" || mount -t proc proc "$mnt/proc"
mountpoint -q "$mnt/sys" || mount -t sysfs sys "$mnt/sys"
mountpoint -q "$mnt/run" || mount -t tmpfs -o mode=0755 run "$mnt/run"
mkdir -p -m 0755 "$mnt/run/sshd"
"""


def _mounted_source(ctx: Ctx) -> list[Command]:
    return [Command(argv=("findmnt", "-rno", "SOURCE", "--mountpoint", MNT),
                    ok_exit=frozenset({0, 1}))]


def mount_root() -> Step[Any]:
    return Step(
        name="mount_root", title=f"Mount the root filesystem at {MNT} for a chroot",
        requires=("fact:root_device",), precheck=_mounted_source,
        needed=lambda results, ctx: out(results).strip() != ctx.fact("root_device"),
        change=lambda ctx: [sh(_MOUNT, ctx.fact("root_device"), MNT, root=True)],
        verify=_mounted_source,
        verified=lambda results, ctx: out(results).strip() == ctx.fact("root_device"),
        rollback=lambda ctx: [Command(argv=("umount", "-R", MNT), root=True)])


def unmount_root() -> Step[Any]:
    return Step(
        name="unmount_root", title="Unmount the customer's filesystems cleanly",
        precheck=lambda ctx: [Command(argv=("mountpoint", "-q", MNT),
                                      ok_exit=frozenset({0, 1, 32}))],
        needed=lambda results, ctx: bool(results) and results[0].exit_status == 0,
        change=lambda ctx: [sh('sync; umount -R "$1"', MNT, root=True)],
        verify=lambda ctx: [Command(argv=("mountpoint", "-q", MNT),
                                    ok_exit=frozenset({1, 32}))],
        blocking=False)


_HOST_KEYS = r"""
for t in ed25519 ecdsa rsa; do
    f="$1/etc/ssh/ssh_host_${t}_key.pub"
    [ -f "$f" ] && head -n 1 "$f"
done
exit 0
"""


def _learn_host_keys(results: Results, ctx: Ctx) -> Mapping[str, Any]:
    keys = []
    for line in out(results).splitlines():
        key = " ".join(line.split()[:2])
        if HOST_KEY.fullmatch(key):
            keys.append(key)
    return {"server_host_keys": keys}


def read_host_keys() -> Step[Any]:
    """The server's own host keys, read from its disk through the provider-authenticated
    rescue system: after boot-back the executor checks the server against them."""
    return Step(name="read_host_keys", title="Read the server's SSH host keys from its disk",
                requires=("fact:root_device",),
                precheck=lambda ctx: [sh(_HOST_KEYS, MNT, root=True)],
                learn=_learn_host_keys, blocking=False)


# --- backups -------------------------------------------------------------------------------

_BACKUP_STATE = r"""
cd "$1" || exit 2
bk=$2; shift 2
for p; do
    if [ -e "$p" ] || [ -L "$p" ]; then
        if [ -e "$bk/$p" ] || [ -L "$bk/$p" ]; then echo "saved:$p"; else echo "pending:$p"; fi
    fi
done
exit 0
"""

_BACKUP = r"""
set -e
cd "$1"
bk=$2; shift 2
mkdir -p -m 0700 "${bk%/*}" "$bk"
chmod 0700 "${bk%/*}" "$bk"
for p; do
    if { [ -e "$p" ] || [ -L "$p" ]; } && ! { [ -e "$bk/$p" ] || [ -L "$bk/$p" ]; }; then
        cp -a --parents -- "$p" "$bk/"
    fi
done
"""

_BACKUP_CHECK = r"""
cd "$1" || exit 2
bk=$2; shift 2
for p; do [ -e "$bk/$p" ] || [ -L "$bk/$p" ] || { echo "missing backup of $p" >&2; exit 1; }; done
"""


def backup_step(name: str, title: str, paths: Sequence[str], before: str, *,
                when: str | None = None) -> Step[Any]:
    """Copy ``paths`` (relative to the customer's root) into the backup directory, keeping
    their own relative paths. A copy made once is never overwritten (a resumed run would
    otherwise back up what the first run already changed). ``when`` names a fact that
    says a change will follow; without it, the backup is taken whenever a path exists."""
    fact = f"backup_{name}"

    def learn(results: Results, ctx: Ctx) -> Mapping[str, Any]:
        tags = tagged(results)
        return {fact: sorted(tags.get("pending", []) + tags.get("saved", []))}

    def needed(results: Results, ctx: Ctx) -> bool:
        return bool(tagged(results).get("pending")) and (when is None
                                                         or bool(ctx.facts.get(when)))

    def notes(ctx: Ctx) -> list[BackupNote]:
        params: RescueParams = ctx.params
        return [BackupNote(location=f"{params.backup_dir}/{p} (on the server's disk)",
                           description=f"copy of /{p} before {before}")
                for p in ctx.facts.get(fact) or []]

    return Step(
        name=name, title=title, requires=("fact:root_device",),
        precheck=lambda ctx: [sh(_BACKUP_STATE, MNT, ctx.params.backup_rel, *paths,
                                 root=True)],
        learn=learn, needed=needed,
        change=lambda ctx: [sh(_BACKUP, MNT, ctx.params.backup_rel,
                               *(ctx.facts.get(fact) or ()), root=True)],
        verify=lambda ctx: [sh(_BACKUP_CHECK, MNT, ctx.params.backup_rel,
                               *(ctx.facts.get(fact) or ()), root=True)],
        backups=notes)


def restore_from_backup(ctx: Ctx, *paths: str) -> list[Command]:
    """Rollback: put the backed-up copies back (used when a change fails verification)."""
    return [sh('set -e; cd "$1"; bk=$2; shift 2; for p; do cp -a -- "$bk/$p" "$p"; done',
               MNT, ctx.params.backup_rel, *paths, root=True)]


def critical_disk_evidence(ctx: Ctx) -> list[Evidence]:
    from services.executor.runbooks.diagnostics import evidence

    return [e for e in evidence(ctx.facts) if e.severity == "critical"]
