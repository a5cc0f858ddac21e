"""Hardware-fault evidence from diagnostics output, for the provider's hardware-failure procedure.

Pure parsers (text in, :class:`Evidence` out) for what the diagnostics runbook collects:
``smartctl -H -A -l error`` (ATA, SCSI/SAS and NVMe layouts), kernel messages from
``dmesg`` or the journal (block I/O errors, ATA/NVMe errors, filesystem errors, EDAC/MCE),
``/proc/mdstat`` and the EDAC counters in sysfs. :func:`escalations` groups evidence into one
:class:`Escalation` per component and device — the payload of a HardwareEscalated event.

Healthy output gives no evidence: a parser only reports what the procedure would escalate
(or warn about), never "looks fine" lines. Thresholds follow common practice: any
reallocated, pending or offline-uncorrectable sector is worth a warning because those counts
only grow on a failing disk; a failed self-assessment, a failing-now attribute, an NVMe
critical warning, a degraded array or an uncorrectable memory error is critical.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, get_args

Component = Literal["disk", "memory", "raid", "cpu", "psu", "other"]
Severity = Literal["warning", "critical"]

MAX_EVIDENCE_PER_ESCALATION = 50  # HardwareEscalated.evidence holds at most 50 items


@dataclass(frozen=True, kw_only=True)
class Evidence:
    component: Component
    device: str | None
    severity: Severity
    source: str  # "smartctl", "kernel log", "/proc/mdstat", "EDAC"
    finding: str  # one line a hardware engineer can act on

    def text(self) -> str:
        return f"{self.source}: {self.finding}"


@dataclass(frozen=True, kw_only=True)
class Escalation:
    component: Component
    device: str | None
    severity: Severity
    evidence: tuple[str, ...]


# --- SMART -----------------------------------------------------------------------------

_FIRST_INT = re.compile(r"-?\d+")
# ID# ATTRIBUTE_NAME FLAG VALUE WORST THRESH TYPE UPDATED WHEN_FAILED RAW_VALUE
_ATA_ATTRIBUTE = re.compile(
    r"^\s*(?P<id>\d{1,3})\s+(?P<name>\S+)\s+0x[0-9a-fA-F]{4}\s+(?P<value>\d{3})\s+"
    r"(?P<worst>\d{3})\s+(?P<thresh>\d{3}|---)\s+(?P<type>\S+)\s+(?P<updated>\S+)\s+"
    r"(?P<when_failed>\S+)\s+(?P<raw>.+?)\s*$"
)
# Counters where any non-zero raw value means sectors the disk could not read or had to move.
_SECTOR_COUNTERS = {
    "5": "reallocated sectors",
    "196": "reallocation events",
    "197": "sectors pending reallocation",
    "198": "offline uncorrectable sectors",
    "187": "reported uncorrectable errors",
}
_CRITICAL_SECTOR_COUNTERS = {"198"}


def _int(text: str) -> int | None:
    """The first integer of a raw value: ``"36 (Min/Max 30/48)"`` -> 36."""
    match = _FIRST_INT.search(text)
    return int(match.group()) if match else None


def _field(text: str, label: str) -> str | None:
    match = re.search(rf"^{re.escape(label)}\s*:?\s*(.+?)\s*$", text, re.MULTILINE)
    return match.group(1) if match else None


def _number_field(text: str, label: str) -> int | None:
    value = _field(text, label)
    if value is None:
        return None
    # smartctl groups thousands with "," or "\u202f" or " " depending on the locale.
    digits = re.sub(r"[,\s\u202f]", "", value.split("[")[0])
    match = _FIRST_INT.match(digits)
    return int(match.group()) if match else None


def parse_smartctl(text: str, device: str | None = None) -> list[Evidence]:
    """Evidence from one device's ``smartctl -H -A [-l error]`` output (ATA, SAS or NVMe)."""
    found: list[Evidence] = []

    def add(severity: Severity, finding: str) -> None:
        found.append(Evidence(component="disk", device=device, severity=severity,
                              source="smartctl", finding=finding))

    health = _field(text, "SMART overall-health self-assessment test result")
    if health is not None and health.upper() != "PASSED":
        add("critical", f"SMART overall-health self-assessment: {health}")
    sas_health = _field(text, "SMART Health Status")
    if sas_health is not None and sas_health.upper() != "OK":
        add("critical", f"SMART health status: {sas_health}")

    for line in text.splitlines():
        match = _ATA_ATTRIBUTE.match(line)
        if match is None:
            continue
        attr_id, name, when_failed = match["id"], match["name"], match["when_failed"]
        if when_failed == "FAILING_NOW":
            add("critical", f"attribute {attr_id} {name} is failing now "
                            f"(value {match['value']}, threshold {match['thresh']})")
        elif when_failed == "In_the_past":
            add("warning", f"attribute {attr_id} {name} failed in the past")
        if attr_id in _SECTOR_COUNTERS:
            raw = _int(match["raw"])
            if raw is not None and raw > 0:
                severity: Severity = "critical" if attr_id in _CRITICAL_SECTOR_COUNTERS \
                    else "warning"
                add(severity, f"{raw} {_SECTOR_COUNTERS[attr_id]} ({name})")

    # NVMe health information log.
    critical_warning = _field(text, "Critical Warning")
    if critical_warning is not None:
        try:
            flags = int(critical_warning.split()[0], 16)
        except ValueError:
            flags = 0
        if flags:
            add("critical", f"NVMe critical warning {critical_warning}")
    media_errors = _number_field(text, "Media and Data Integrity Errors")
    if media_errors:
        add("warning", f"{media_errors} NVMe media and data integrity errors")
    spare = _number_field(text, "Available Spare")
    spare_threshold = _number_field(text, "Available Spare Threshold")
    if spare is not None and spare_threshold is not None and spare < spare_threshold:
        add("critical", f"NVMe available spare {spare}% below threshold {spare_threshold}%")
    used = _number_field(text, "Percentage Used")
    if used is not None and used >= 100:
        add("warning", f"NVMe endurance used {used}%")
    # SCSI/SAS grown defect list.
    grown = _number_field(text, "Elements in grown defect list")
    if grown:
        add("warning", f"{grown} elements in the grown defect list")
    return found


# --- kernel messages -------------------------------------------------------------------

_PARTITION = re.compile(r"^((?:nvme\d+n\d+)|(?:mmcblk\d+)|(?:[a-z]+?))(?:p?\d+)?$")


def disk_of(name: str) -> str:
    """``sda3`` -> ``sda``; ``nvme0n1p2`` -> ``nvme0n1``: the disk a partition lives on."""
    if name.startswith(("md", "dm-", "loop")):
        return name
    match = _PARTITION.fullmatch(name)
    return match.group(1) if match else name


@dataclass(frozen=True, kw_only=True)
class _Rule:
    pattern: re.Pattern[str]
    component: Component
    severity: Severity
    what: str
    device_group: str | None = "dev"
    whole_disk: bool = True


_KERNEL_RULES: tuple[_Rule, ...] = (
    _Rule(pattern=re.compile(r"critical medium error, dev (?P<dev>[\w-]+), sector \d+"),
          component="disk", severity="critical", what="medium errors"),
    _Rule(pattern=re.compile(r"(?<!medium )I/O error, dev (?P<dev>[\w-]+), sector \d+"),
          component="disk", severity="critical", what="block I/O errors"),
    _Rule(pattern=re.compile(r"Buffer I/O error on dev(?:ice)? (?P<dev>[\w-]+),"),
          component="disk", severity="critical", what="buffer I/O errors"),
    _Rule(pattern=re.compile(r"sd \S+: \[(?P<dev>sd[a-z]+)\].*Sense Key : Medium Error"),
          component="disk", severity="critical", what="SCSI medium errors"),
    _Rule(pattern=re.compile(r"(?P<dev>ata\d+)(?:\.\d+)?: failed command: "),
          component="disk", severity="warning", what="ATA failed commands",
          whole_disk=False),  # a port (ata2), not a block device
    _Rule(pattern=re.compile(r"(?P<dev>nvme\d+): I/O \d+ QID \d+ timeout"),
          component="disk", severity="warning", what="NVMe I/O timeouts",
          whole_disk=False),  # a controller (nvme0)
    _Rule(pattern=re.compile(r"EXT4-fs error \(device (?P<dev>[\w-]+)\)"),
          component="disk", severity="warning", what="ext4 filesystem errors",
          whole_disk=False),
    _Rule(pattern=re.compile(r"XFS \((?P<dev>[\w-]+)\): .*(?:[Cc]orruption|metadata I/O error)"),
          component="disk", severity="warning", what="XFS filesystem errors", whole_disk=False),
    _Rule(pattern=re.compile(r"BTRFS (?:error|critical) \(device (?P<dev>[\w-]+)"),
          component="disk", severity="warning", what="btrfs filesystem errors",
          whole_disk=False),
    _Rule(pattern=re.compile(r"md/raid\d*:(?P<dev>md\d+): Disk failure on"),
          component="raid", severity="critical", what="RAID member disk failures",
          whole_disk=False),
    _Rule(pattern=re.compile(r"EDAC (?P<dev>MC\d+): \d+ UE "),
          component="memory", severity="critical", what="uncorrectable memory errors (EDAC)"),
    _Rule(pattern=re.compile(r"EDAC (?P<dev>MC\d+): \d+ CE "),
          component="memory", severity="warning", what="corrected memory errors (EDAC)"),
    _Rule(pattern=re.compile(r"mce: \[Hardware Error\]: CPU \d+: Machine Check"),
          component="cpu", severity="critical", what="machine check exceptions",
          device_group=None),
    # Logged (corrected) machine checks: worth a look, not yet a failure.
    _Rule(pattern=re.compile(r"mce: (?:\[Hardware Error\]: )?(?:\d+ )?Machine check events "
                             r"logged"),
          component="cpu", severity="warning", what="machine check events logged",
          device_group=None),
)


def parse_kernel_log(text: str, *, source: str = "kernel log") -> list[Evidence]:
    """Evidence from kernel messages (``dmesg`` or ``journalctl -k`` lines).

    Repeated messages are counted, not listed: a failing disk logs thousands of identical
    lines, and the engineer needs the count and one example.
    """
    counts: dict[tuple[int, str | None], int] = {}
    example: dict[tuple[int, str | None], str] = {}
    for line in text.splitlines():
        for index, rule in enumerate(_KERNEL_RULES):
            match = rule.pattern.search(line)
            if match is None:
                continue
            device = match.group(rule.device_group) if rule.device_group else None
            if device is not None and rule.whole_disk and rule.component == "disk":
                device = disk_of(device)
            key = (index, device)
            counts[key] = counts.get(key, 0) + 1
            example.setdefault(key, _example(line))
            break
    found = []
    for (index, device), count in counts.items():
        rule = _KERNEL_RULES[index]
        on = f" on {device}" if device else ""
        found.append(Evidence(
            component=rule.component, device=device, severity=rule.severity, source=source,
            finding=f"{count} {rule.what}{on}, e.g. {example[(index, device)]!r}",
        ))
    return found


def _example(line: str, limit: int = 300) -> str:
    line = line.strip()
    return line if len(line) <= limit else line[: limit - 1] + "…"


# --- /proc/mdstat ----------------------------------------------------------------------

_MD_ARRAY = re.compile(r"^(?P<name>md[\w/]+)\s*:\s*(?P<state>active|inactive)"
                       r"(?:\s*\((?P<ro>[\w-]+)\))?"
                       r"(?:\s+(?P<level>raid\d+|linear|multipath))?\s*(?P<members>.*)$")
_MD_STATUS = re.compile(r"\[(?P<total>\d+)/(?P<up>\d+)\]\s+\[(?P<map>[U_]+)\]")
_MD_PROGRESS = re.compile(r"(?P<what>recovery|resync|reshape|check)\s*=\s*(?P<pct>[\d.]+)%")


def parse_mdstat(text: str) -> list[Evidence]:
    """Evidence from ``/proc/mdstat``: degraded, inactive or rebuilding arrays, failed members."""
    found: list[Evidence] = []
    arrays: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        head = _MD_ARRAY.match(line)
        if head is not None:
            arrays.append((line, []))
        elif arrays and line.startswith((" ", "\t")):
            arrays[-1][1].append(line)
    for head_line, body in arrays:
        head = _MD_ARRAY.match(head_line)
        assert head is not None
        name = head["name"]

        def add(severity: Severity, finding: str, name: str = name) -> None:
            found.append(Evidence(component="raid", device=name, severity=severity,
                                  source="/proc/mdstat", finding=finding))

        if head["state"] == "inactive":
            add("critical", f"{name} is inactive")
        failed = re.findall(r"(\w+)\[\d+\]\(F\)", head["members"])
        if failed:
            add("critical", f"{name} has failed members: {', '.join(failed)}")
        joined = " ".join(body)
        status = _MD_STATUS.search(joined)
        if status is not None and int(status["up"]) < int(status["total"]):
            add("critical", f"{name} ({head['level'] or 'md'}) is degraded: "
                            f"{status['up']} of {status['total']} devices up [{status['map']}]")
        progress = _MD_PROGRESS.search(joined)
        if progress is not None and progress["what"] in ("recovery", "reshape"):
            add("warning", f"{name} {progress['what']} in progress at {progress['pct']}%")
    return found


# --- EDAC counters ---------------------------------------------------------------------

_EDAC_LINE = re.compile(r"^(?P<path>/sys/devices/system/edac/mc/(?P<mc>mc\d+)(?:/(?P<unit>"
                        r"(?:dimm|csrow|rank)\d+))?/(?P<file>[\w]+)):(?P<value>.*)$")


def parse_edac_counts(text: str) -> list[Evidence]:
    """Evidence from EDAC sysfs files printed as ``path:value`` (``grep -H .`` style).

    Per-DIMM counters (with the DIMM's label) are preferred; the controller totals are used
    only for controllers that expose no per-DIMM counters.
    """
    labels: dict[tuple[str, str], str] = {}
    counters: dict[tuple[str, str | None], dict[str, int]] = {}
    for line in text.splitlines():
        match = _EDAC_LINE.fullmatch(line.strip())
        if match is None:
            continue
        mc, unit, name, value = match["mc"], match["unit"], match["file"], match["value"].strip()
        if name.endswith("label") and unit is not None:
            labels[(mc, unit)] = value
            continue
        kind = "ce" if name.endswith("ce_count") else "ue" if name.endswith("ue_count") else None
        if kind is None or name.endswith("noinfo_count"):
            continue
        try:
            counters.setdefault((mc, unit), {})[kind] = int(value)
        except ValueError:
            continue
    with_units = {mc for (mc, unit) in counters if unit is not None}
    found: list[Evidence] = []
    for (mc, unit), counts in sorted(counters.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        if unit is None and mc in with_units:
            continue
        where = labels.get((mc, unit or ""), "") or (f"{mc}/{unit}" if unit else mc)
        device = where[:500]
        if counts.get("ue", 0) > 0:
            found.append(Evidence(component="memory", device=device, severity="critical",
                                  source="EDAC",
                                  finding=f"{counts['ue']} uncorrectable memory errors on {where}"))
        if counts.get("ce", 0) > 0:
            found.append(Evidence(component="memory", device=device, severity="warning",
                                  source="EDAC",
                                  finding=f"{counts['ce']} corrected memory errors on {where}"))
    return found


# --- Windows --------------------------------------------------------------------------


def parse_windows_disks(text: str) -> list[Evidence]:
    """Evidence from ``Get-PhysicalDisk`` printed as ``Name : value`` blocks."""
    found: list[Evidence] = []
    for block in re.split(r"\n\s*\n", text):
        fields = {}
        for line in block.splitlines():
            name, sep, value = line.partition(":")
            if sep:
                fields[name.strip()] = value.strip()
        health = fields.get("HealthStatus")
        if not health or health == "Healthy":
            continue
        name = fields.get("FriendlyName") or None
        severity: Severity = "critical" if health == "Unhealthy" else "warning"
        status = fields.get("OperationalStatus", "")
        found.append(Evidence(component="disk", device=name, severity=severity,
                              source="Get-PhysicalDisk",
                              finding=f"health {health}, operational status {status or 'unknown'}"))
    return found


# --- grouping --------------------------------------------------------------------------


def escalations(evidence: Iterable[Evidence]) -> list[Escalation]:
    """One escalation per (component, device), most severe first, evidence de-duplicated."""
    groups: dict[tuple[Component, str | None], list[Evidence]] = {}
    for item in evidence:
        groups.setdefault((item.component, item.device), []).append(item)
    result = []
    for (component, device), items in groups.items():
        texts = list(dict.fromkeys(i.text() for i in sorted(
            items, key=lambda i: i.severity != "critical")))
        severity: Severity = "critical" if any(i.severity == "critical" for i in items) \
            else "warning"
        result.append(Escalation(component=component, device=device, severity=severity,
                                 evidence=tuple(texts[:MAX_EVIDENCE_PER_ESCALATION])))
    result.sort(key=lambda e: (e.severity != "critical", e.component, e.device or ""))
    return result


def evidence_to_dict(item: Evidence) -> dict[str, str | None]:
    """JSON form, for the step journal (facts must survive a restart)."""
    return {"component": item.component, "device": item.device, "severity": item.severity,
            "source": item.source, "finding": item.finding}


_COMPONENTS: dict[str, Component] = {c: c for c in get_args(Component)}


def evidence_from_dict(data: Mapping[str, object]) -> Evidence:
    device = data.get("device")
    return Evidence(
        component=_COMPONENTS.get(str(data.get("component")), "other"),
        device=str(device) if device is not None else None,
        severity="critical" if data.get("severity") == "critical" else "warning",
        source=str(data.get("source") or "diagnostics"),
        finding=str(data.get("finding") or ""),
    )
