"""Filesystem check and repair in rescue mode: every ext2/3/4 filesystem on the server's
disks, unmounted, with a before/after summary and a failing disk escalated, not repaired.

Order of play: a full read-only check first (``e2fsck -f -n``: the "before" summary, and
whether there is anything to repair); then the disk's health — SMART (when the rescue
system has ``smartctl``), kernel I/O errors on the disk, read errors e2fsck met. A failing
disk is escalated as hardware (HardwareEscalated) and *not* written to: ``fsck -y`` on a
dying disk destroys what data recovery could still save. Otherwise ``e2fsck -f -y`` repairs
each filesystem that had errors, writing an undo file first (``-z``: e2fsck saves every
block before it overwrites it, so ``e2undo`` can revert the repair); a second full
read-only check gives the "after" summary. The undo files are then kept on the customer's
disk next to the other backups.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from services.executor import hardware
from services.executor.rescue.runbooks.common import (
    EXT_TYPES,
    MNT,
    RescueParams,
    critical_disk_evidence,
    find_root,
    learn_filesystems,
    mount_root,
    read_host_keys,
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
UNDO_DIR = "/root/os-intervention-undo"  # in the rescue system, until copied to the disk
FSCK_TIMEOUT_S = 4 * 3600.0
_SUMMARY = re.compile(r"^\S+: \d+/\d+ files .*blocks$")
_READ_ERROR = re.compile(r"(Error reading block|short read|Input/output error|"
                         r"Attempt to read block .* resulted in short read)", re.IGNORECASE)
_EXIT_MEANING = {0: "clean", 1: "errors corrected", 2: "errors corrected (reboot needed)",
                 4: "errors found, left uncorrected", 8: "operational error",
                 12: "interrupted"}


def _devices(ctx: Ctx) -> list[str]:
    return [f["device"] for f in ctx.facts.get("filesystems") or [] if f["type"] in EXT_TYPES]


def _disks(ctx: Ctx) -> list[str]:
    return sorted({f["disk"] for f in ctx.facts.get("filesystems") or []
                   if f["type"] in EXT_TYPES})


def _learn_find(results: Results, ctx: Ctx) -> Mapping[str, Any]:
    facts = dict(learn_filesystems(results, ctx))
    ext = [f for f in facts["filesystems"] if f["type"] in EXT_TYPES]
    # A root filesystem too damaged to mount is still the one to repair.
    if "root_device" not in facts and len(ext) == 1:
        facts.update(root_device=ext[0]["device"], root_fstype=ext[0]["type"],
                     disk=ext[0]["disk"], root_is_ext=True)
    others = [f"{f['device']} ({f['type']})" for f in facts["filesystems"]
              if f["type"] not in EXT_TYPES]
    if others:
        facts["findings_other_fs"] = [
            f"Not checked (only ext2/3/4 repair is automated): {', '.join(others)}."]
    return facts


def _refuse_nothing(results: Results, ctx: Ctx) -> str | None:
    if _devices(ctx):
        return None
    return ("no ext2/3/4 filesystem was found on the server's disks; repair of other "
            "filesystems is not automated")


def _summary(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if _SUMMARY.fullmatch(line.strip())]
    return lines[-1] if lines else ""


def _problems(text: str) -> int:
    """Questions e2fsck asked (and answered "no" in a read-only check): the problems found."""
    return sum(1 for line in text.splitlines() if line.rstrip().endswith(("? no", "? yes")))


def _state(results: Results, ctx: Ctx) -> dict[str, dict[str, Any]]:
    state = {}
    for dev, result in zip(_devices(ctx), results, strict=False):
        status = result.exit_status
        text = result.stdout + "\n" + result.stderr
        state[dev] = {"exit": status, "meaning": _EXIT_MEANING.get(status or 0, "unknown"),
                      "problems": _problems(text), "summary": _summary(text)}
    return state


def _learn_before(results: Results, ctx: Ctx) -> Mapping[str, Any]:
    state = _state(results, ctx)
    facts: dict[str, Any] = {"fsck_before": state,
                             "fsck_to_repair": [d for d, s in state.items() if s["exit"] != 0]}
    evidence = []
    for dev, result in zip(_devices(ctx), results, strict=False):
        errors = [line.strip() for line in (result.stdout + result.stderr).splitlines()
                  if _READ_ERROR.search(line)]
        if errors or result.exit_status == 8:
            disk = next((f["disk"] for f in ctx.facts.get("filesystems") or []
                         if f["device"] == dev), dev)
            evidence.append(hardware.Evidence(
                component="disk", device=disk.removeprefix("/dev/"), severity="critical",
                source="e2fsck", finding=f"{len(errors)} read errors checking {dev}, e.g. "
                                         f"{(errors or ['operational error (exit 8)'])[0]!r}"))
    if evidence:
        facts["evidence_fsck"] = [hardware.evidence_to_dict(e) for e in evidence]
    return facts


def _check(ctx: Ctx, devices: list[str], *, ok: frozenset[int]) -> list[Command]:
    return [Command(argv=("e2fsck", "-f", "-n", dev), root=True, ok_exit=ok,
                    timeout_s=FSCK_TIMEOUT_S) for dev in devices]


_HEALTH = r"""
disk=$1
name=${disk#/dev/}
if command -v smartctl >/dev/null 2>&1; then
    echo "== smartctl $disk"
    smartctl -H -A -l error "$disk" 2>&1
fi
echo "== kernel log $disk"
dmesg 2>/dev/null | grep -E "(dev |device |\[)$name[a-z0-9]*[,): \]]" | tail -n 200
exit 0
"""


def _learn_health(results: Results, ctx: Ctx) -> Mapping[str, Any]:
    smart: list[hardware.Evidence] = []
    kernel: list[hardware.Evidence] = []
    for disk, result in zip(_disks(ctx), results, strict=False):
        name = disk.removeprefix("/dev/")
        text = result.stdout
        smart_text, _, kernel_text = text.partition(f"== kernel log {disk}")
        if "== smartctl" in smart_text:
            smart.extend(hardware.parse_smartctl(smart_text, device=name))
        kernel.extend(e for e in hardware.parse_kernel_log(kernel_text)
                      if e.device is None or e.device.startswith(name))
    facts: dict[str, Any] = {}
    if smart:
        facts["evidence_smart"] = [hardware.evidence_to_dict(e) for e in smart]
    if kernel:
        facts["evidence_kernel"] = [hardware.evidence_to_dict(e) for e in kernel]
    return facts


def _refuse_failing(results: Results, ctx: Ctx) -> str | None:
    critical = critical_disk_evidence(ctx)
    if not critical:
        return None
    return (f"the disk shows signs of hardware failure ({critical[0].text()}); the "
            "filesystem was not repaired, because writing to a failing disk can destroy what "
            "can still be recovered. Escalated to the data-centre team.")


_REPAIR = r"""
dev=$1 undo=$2
mkdir -p -m 0700 "${undo%/*}"
[ ! -e "$undo" ] || mv -f "$undo" "$undo.previous"
exec e2fsck -f -y -z "$undo" "$dev"
"""


def _undo_file(params: RescueParams, dev: str) -> str:
    return f"{UNDO_DIR}/{params.backup_tag}-{dev.removeprefix('/dev/').replace('/', '_')}.e2undo"


def _repair(ctx: Ctx) -> list[Command]:
    return [Command(argv=("sh", "-c", _REPAIR, "sh", dev, _undo_file(ctx.params, dev)),
                    root=True, ok_exit=frozenset({0, 1, 2}), timeout_s=FSCK_TIMEOUT_S)
            for dev in ctx.facts.get("fsck_to_repair") or []]


def _learn_after(results: Results, ctx: Ctx) -> Mapping[str, Any]:
    after = _state(results, ctx)
    before = ctx.facts.get("fsck_before") or {}
    lines = []
    for dev, now in after.items():
        then = before.get(dev) or {}
        lines.append(
            f"Filesystem {dev}: before the repair {then.get('meaning', '?')} "
            f"({then.get('problems', 0)} problems; {then.get('summary') or 'no summary'}); "
            f"after: {now['meaning']} ({now['summary'] or 'no summary'}).")
    return {"fsck_after": after, "findings_fsck": lines}


_KEEP_UNDO = r"""
set -e
bk=$1; shift
mkdir -p -m 0700 "${bk%/*}" "$bk"
for f; do [ -e "$bk/${f##*/}" ] || cp -a -- "$f" "$bk/"; done
"""


def _undo_files(ctx: Ctx) -> list[str]:
    return [_undo_file(ctx.params, dev) for dev in ctx.facts.get("fsck_to_repair") or []]


def _prepare_undo(ctx: Ctx) -> list[Command]:
    return [sh('mkdir -p -m 0700 "$1"', UNDO_DIR, root=True)]


def _undo_notes(ctx: Ctx) -> list[BackupNote]:
    notes = []
    for dev in ctx.facts.get("fsck_to_repair") or []:
        name = _undo_file(ctx.params, dev).rsplit("/", 1)[1]
        notes.append(BackupNote(
            location=f"{ctx.params.backup_dir}/{name} (on the server's disk)",
            description=f"e2fsck undo file of the repair of {dev}: e2fsck saves every block "
                        "before it overwrites it, and the file is copied to the disk after the "
                        "repair; to revert, copy it off this filesystem and run "
                        f"`e2undo -f {name} {dev}` from a rescue system"))
    return notes


def _steps(params: RescueParams, platform: Platform) -> tuple[Step[RescueParams], ...]:
    find = find_root()
    return (
        Step(name="find_filesystems", title="Find the filesystems on the server's disks",
             precheck=find.precheck, learn=_learn_find, refuse=_refuse_nothing),
        Step(name="check_before", title="Check the filesystems, read-only (before summary)",
             precheck=lambda ctx: _check(ctx, _devices(ctx), ok=frozenset({0, 1, 2, 4, 8})),
             learn=_learn_before),
        Step(name="disk_health", title="Check the disk's health (SMART, kernel I/O errors)",
             precheck=lambda ctx: [sh(_HEALTH, disk, root=True) for disk in _disks(ctx)],
             learn=_learn_health, refuse=_refuse_failing),
        Step(name="plan_undo", title="Prepare the undo files of the repair",
             requires=("fact:fsck_to_repair",), change=_prepare_undo,
             verify=lambda ctx: [Command(argv=("test", "-d", UNDO_DIR))],
             backups=_undo_notes),
        Step(name="repair", title="Repair the filesystems with errors (e2fsck -f -y, with an "
                                  "undo file)",
             needed=lambda results, ctx: bool(ctx.facts.get("fsck_to_repair")),
             change=_repair,
             verify=lambda ctx: [Command(argv=("e2fsck", "-n", dev), root=True,
                                         timeout_s=FSCK_TIMEOUT_S)
                                 for dev in ctx.facts.get("fsck_to_repair") or []]),
        Step(name="check_after", title="Check the filesystems again, read-only (after summary)",
             precheck=lambda ctx: _check(ctx, _devices(ctx), ok=frozenset({0})),
             learn=_learn_after),
        mount_root(),
        Step(name="keep_undo", title="Keep the undo files on the server's disk",
             requires=("fact:root_device", "fact:fsck_to_repair"),
             change=lambda ctx: [sh(_KEEP_UNDO, f"{MNT}{ctx.params.backup_dir}",
                                    *_undo_files(ctx), root=True)],
             verify=lambda ctx: [Command(argv=("test", "-s", f"{MNT}{ctx.params.backup_dir}/"
                                                           f"{f.rsplit('/', 1)[1]}"))
                                 for f in _undo_files(ctx)],
             blocking=False),
        read_host_keys(), unmount_root(),
    )


RESCUE_FILESYSTEM_REPAIR: Runbook[RescueParams] = Runbook(
    name="rescue.filesystem_repair", category="filesystem_repair",
    title="Filesystem check and repair in rescue mode", platforms=frozenset({"linux"}),
    params=RescueParams, build=_steps)
