"""GRUB repair in rescue mode (BIOS/MBR): reinstall the boot loader to the disk the root
filesystem lives on, regenerate its configuration, and verify the files.

Everything runs in a chroot of the customer's system, with the customer's own
``grub-install`` and ``grub-mkconfig``, so boot loader, modules and menu match the
customer's GRUB packages and kernels. Before anything is written, the first MiB of the disk
(MBR boot code, partition table and the embedded core image) and ``/boot/grub`` are copied
to the backup directory. Verification: the MBR holds GRUB's boot code, ``core.img`` and
``normal.mod`` are in place, ``grub-script-check`` accepts the new ``grub.cfg``, every kernel
it names exists, and — when the rescue system has ``grub-fstest`` — GRUB's own partition
and filesystem drivers read the configuration, ``normal.mod`` and the kernel from the disk.

UEFI systems (an EFI system partition in fstab, or a rescue system booted by UEFI) are not
automated: reinstalling GRUB there also means NVRAM boot entries, which an engineer checks
on the console.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from services.executor.rescue.runbooks.common import (
    MNT,
    RescueParams,
    check_root_fs,
    find_root,
    mount_root,
    read_host_keys,
    tagged,
    unmount_root,
)
from services.executor.runbooks.model import (
    BackupNote,
    Command,
    Context,
    Platform,
    Results,
    Runbook,
    Step,
    sh,
)

Ctx = Context[RescueParams]

_INSPECT = r"""
mnt=$1 disk=$2
[ -d /sys/firmware/efi ] && echo firmware:efi || echo firmware:bios
awk '$1 !~ /^#/ && $2 == "/boot/efi" { print "esp:fstab" }' "$mnt/etc/fstab"
chroot "$mnt" sh -c 'command -v grub-install' >/dev/null 2>&1 && echo tool:grub-install
chroot "$mnt" sh -c 'command -v grub-mkconfig' >/dev/null 2>&1 && echo tool:grub-mkconfig
command -v grub-fstest >/dev/null 2>&1 && echo tool:grub-fstest
[ -d "$mnt/usr/lib/grub/i386-pc" ] && echo platform:i386-pc
head -c 440 "$disk" | grep -aq GRUB && echo mbr:grub || echo mbr:none
for f in grub/grub.cfg grub/i386-pc/core.img grub/i386-pc/normal.mod; do
    [ -f "$mnt/boot/$f" ] && echo "present:$f" || echo "missing:$f"
done
[ -f "$mnt/etc/default/grub" ] && echo present:default-grub
ls "$mnt"/boot/vmlinuz-* >/dev/null 2>&1 && echo kernel:yes || echo kernel:no
echo "pttype:$(blkid -o value -s PTTYPE "$disk" 2>/dev/null)"
bootdev=$(findmnt -rno SOURCE --mountpoint "$mnt/boot" 2>/dev/null)
echo "bootdev:${bootdev:-}"
exit 0
"""

_PARTITION_NUMBER = re.compile(r"(\d+)$")


def _learn_boot(results: Results, ctx: Ctx) -> Mapping[str, Any]:
    tags = tagged(results)
    tools = tags.get("tool", [])
    facts: dict[str, Any] = {
        "tools": tools, "firmware": (tags.get("firmware") or ["bios"])[0],
        "esp": bool(tags.get("esp")), "grub_platform": tags.get("platform", []),
        "mbr_grub": tags.get("mbr") == ["grub"], "boot_files_missing": tags.get("missing", []),
        "boot_files_present": tags.get("present", []),
        "kernel_present": tags.get("kernel") == ["yes"],
    }
    # GRUB names partitions by table type and number: (hd0,msdos1), (hd0,gpt2).
    pttype = (tags.get("pttype") or [""])[0]
    boot_dev = (tags.get("bootdev") or [""])[0] or ctx.fact("root_device")
    number = _PARTITION_NUMBER.search(boot_dev)
    if pttype in ("dos", "gpt") and number and boot_dev != ctx.fact("disk"):
        facts["grub_partition"] = f"{'msdos' if pttype == 'dos' else 'gpt'}{number.group(1)}"
        facts["grub_prefix"] = "" if boot_dev != ctx.fact("root_device") else "/boot"
    return facts


def _refuse(results: Results, ctx: Ctx) -> str | None:
    if ctx.fact("firmware") == "efi" or ctx.facts.get("esp"):
        return ("the server boots with UEFI; reinstalling GRUB for EFI (and its NVRAM boot "
                "entries) is not automated, an engineer does it on the console")
    tools = ctx.facts.get("tools") or []
    if "grub-install" not in tools or "grub-mkconfig" not in tools:
        return ("GRUB is not installed in the customer's system (grub-install or grub-mkconfig "
                "missing); an engineer must reinstall the boot loader packages")
    if "i386-pc" not in (ctx.facts.get("grub_platform") or []):
        return "GRUB's BIOS modules (/usr/lib/grub/i386-pc, package grub-pc-bin) are missing"
    if not ctx.facts.get("kernel_present"):
        return ("there is no kernel in /boot: a reinstalled boot loader would have nothing to "
                "boot; an engineer must reinstall the kernel package")
    return None


_BACKUP = r"""
set -e
mnt=$1 bk=$2 disk=$3
mkdir -p -m 0700 "${bk%/*}" "$bk"
[ -e "$bk/disk-first-1MiB.img" ] \
    || dd if="$disk" of="$bk/disk-first-1MiB.img" bs=512 count=2048 status=none
cd "$mnt"
for p in boot/grub etc/default/grub; do
    if [ -e "$p" ] && [ ! -e "$bk/$p" ]; then cp -a --parents -- "$p" "$bk/"; fi
done
"""


def _backup_notes(ctx: Ctx) -> list[BackupNote]:
    where = ctx.params.backup_dir
    disk = ctx.fact("disk")
    notes = [BackupNote(
        location=f"{where}/disk-first-1MiB.img (on the server's disk)",
        description=f"the first MiB of {disk} before the GRUB reinstall: MBR boot code, "
                    "partition table and GRUB's core image (restore only the boot code with "
                    f"`dd if=disk-first-1MiB.img of={disk} bs=440 count=1`)")]
    present = ctx.facts.get("boot_files_present") or []
    if any(f.startswith("grub/") for f in present):
        notes.append(BackupNote(location=f"{where}/boot/grub (on the server's disk)",
                                description="copy of /boot/grub (what was left of it) before "
                                            "the GRUB reinstall"))
    if "default-grub" in present:
        notes.append(BackupNote(location=f"{where}/etc/default/grub (on the server's disk)",
                                description="copy of /etc/default/grub, GRUB's settings (not "
                                            "changed)"))
    return notes


_VERIFY_INSTALL = r"""
mnt=$1 disk=$2
head -c 440 "$disk" | grep -aq GRUB || { echo "no GRUB boot code in the MBR of $disk" >&2; exit 1; }
for f in grub/i386-pc/core.img grub/i386-pc/normal.mod; do
    [ -s "$mnt/boot/$f" ] || { echo "/boot/$f missing" >&2; exit 1; }
done
echo "GRUB boot code in the MBR of $disk; core.img and normal.mod present"
"""

_VERIFY_KERNELS = r"""
mnt=$1
cfg=$mnt/boot/grub/grub.cfg
n=0
for k in $(awk '$1 == "linux" { print $2 }' "$cfg" | sort -u); do
    [ -e "$mnt$k" ] || [ -e "$mnt/boot$k" ] \
        || { echo "grub.cfg names $k, which is missing" >&2; exit 1; }
    echo "kernel $k present"; n=$((n + 1))
done
[ "$n" -gt 0 ] || { echo "grub.cfg has no menu entry with a kernel" >&2; exit 1; }
"""

# GRUB's own drivers (the code that runs at boot) read the disk, not the rescue kernel's.
# Run after the filesystem is unmounted: GRUB does not replay the ext4 journal, so it sees
# what a boot would see only once everything is written back.
_FSTEST = r"""
disk=$1 part=$2 prefix=$3
cfg=$(grub-fstest "$disk" cat "(loop0,$part)$prefix/grub/grub.cfg") || exit 1
grub-fstest "$disk" cat "(loop0,$part)$prefix/grub/i386-pc/normal.mod" > /dev/null || exit 1
echo "GRUB reads grub.cfg and normal.mod from ($part)"
for k in $(printf '%s\n' "$cfg" | awk '$1 == "linux" { print $2 }' | sort -u); do
    grub-fstest "$disk" cat "(loop0,$part)$k" > /dev/null || exit 1
    echo "GRUB reads $k from ($part)"
done
"""


def _steps(params: RescueParams, platform: Platform) -> tuple[Step[RescueParams], ...]:
    return (
        find_root(), check_root_fs(), mount_root(),
        Step(name="inspect_boot", title="Inspect the boot loader and /boot",
             requires=("fact:root_device",),
             precheck=lambda ctx: [sh(_INSPECT, MNT, ctx.fact("disk"), root=True)],
             learn=_learn_boot, refuse=_refuse),
        Step(name="backup_boot", title="Back up the disk's first MiB and /boot/grub",
             precheck=lambda ctx: [Command(argv=("test", "-e", f"{MNT}{ctx.params.backup_dir}"
                                                           "/disk-first-1MiB.img"),
                                           ok_exit=frozenset({0, 1}))],
             needed=lambda results, ctx: bool(results) and results[0].exit_status == 1,
             change=lambda ctx: [sh(_BACKUP, MNT, f"{MNT}{ctx.params.backup_dir}",
                                    ctx.fact("disk"), root=True)],
             verify=lambda ctx: [Command(argv=("test", "-s", f"{MNT}{ctx.params.backup_dir}"
                                                           "/disk-first-1MiB.img"))],
             backups=_backup_notes),
        Step(name="reinstall_grub", title="Reinstall GRUB to the disk (grub-install, i386-pc)",
             change=lambda ctx: [Command(argv=("chroot", MNT, "grub-install",
                                               "--target=i386-pc", ctx.fact("disk")),
                                         root=True, timeout_s=600)],
             verify=lambda ctx: [sh(_VERIFY_INSTALL, MNT, ctx.fact("disk"), root=True)]),
        Step(name="regenerate_config", title="Regenerate grub.cfg (grub-mkconfig)",
             change=lambda ctx: [Command(argv=("chroot", MNT, "grub-mkconfig", "-o",
                                               "/boot/grub/grub.cfg"), root=True,
                                         timeout_s=600)],
             verify=lambda ctx: [Command(argv=("chroot", MNT, "grub-script-check",
                                               "/boot/grub/grub.cfg"), root=True),
                                 sh(_VERIFY_KERNELS, MNT, root=True)]),
        read_host_keys(), unmount_root(),
        Step(name="verify_boot_files", title="Read the boot files with GRUB's own drivers",
             requires=("tool:grub-fstest", "fact:grub_partition"),
             precheck=lambda ctx: [sh(_FSTEST, ctx.fact("disk"), ctx.fact("grub_partition"),
                                      ctx.fact("grub_prefix"), root=True)]),
    )


RESCUE_BOOT_REPAIR: Runbook[RescueParams] = Runbook(
    name="rescue.boot_repair", category="boot_repair",
    title="GRUB repair in rescue mode", platforms=frozenset({"linux"}),
    params=RescueParams, build=_steps)
