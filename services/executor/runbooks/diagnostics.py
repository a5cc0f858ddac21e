"""OS diagnostics: load, memory, disks, failed units, kernel and journal errors, SMART, RAID, ECC.

Read-only from the first step to the last. Each check runs only if its tool (or kernel
interface) exists on the host; a missing one is reported as skipped, not as a failure.
Hardware evidence found here becomes HardwareEscalated events (see
:mod:`services.executor.hardware`); other findings become recommendations.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict

from services.executor import hardware
from services.executor.runbooks.model import (
    Command,
    Context,
    Platform,
    Results,
    Runbook,
    Step,
    powershell,
    sh,
)


class DiagnosticsParams(BaseModel):
    # Diagnostics take no parameters; unknown ones from the ticket are ignored rather than
    # refused, because the form may send category-independent fields.
    model_config = ConfigDict(frozen=True, extra="ignore")


Ctx = Context[DiagnosticsParams]

_TOOLS = ("smartctl", "mdadm", "journalctl", "dmesg", "systemctl")
_DETECT = (
    'for t in "$@"; do command -v "$t" >/dev/null 2>&1 && echo "tool:$t"; done; '
    "[ -d /run/systemd/system ] && echo flag:systemd; "
    "[ -r /proc/mdstat ] && echo flag:mdstat; "
    "[ -d /sys/devices/system/edac/mc ] && echo flag:edac; "
    "exit 0"
)
_DEVICE = re.compile(r"^/dev/[A-Za-z0-9][A-Za-z0-9/_.:-]{0,63}$")
_DEVICE_TYPE = re.compile(r"^[a-z0-9][a-z0-9,+_-]{0,31}$")
MAX_SMART_DEVICES = 32


def _out(results: Results, n: int = 0) -> str:
    return results[n].stdout if len(results) > n else ""


def _detect(results: Results, ctx: Ctx) -> Mapping[str, Any]:
    lines = _out(results).split()
    return {"tools": sorted(x[5:] for x in lines if x.startswith("tool:")),
            "flags": sorted(x[5:] for x in lines if x.startswith("flag:"))}


def _load(results: Results, ctx: Ctx) -> Mapping[str, Any]:
    try:
        load1 = float(_out(results).split()[0])
        cpus = int(_out(results, 1).strip())
    except (IndexError, ValueError):
        return {}
    if load1 > 2 * cpus:
        return {"findings_load": [f"Load average {load1:.1f} on {cpus} CPUs: the server is "
                                  "overloaded; check which processes use the CPU."]}
    return {}


def _meminfo(results: Results, ctx: Ctx) -> Mapping[str, Any]:
    values: dict[str, int] = {}
    for line in _out(results).splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[name.strip()] = int(parts[0])
    total, available = values.get("MemTotal"), values.get("MemAvailable")
    if total and available is not None and available < total * 0.05:
        return {"findings_memory": [f"Only {available // 1024} MiB of {total // 1024} MiB "
                                    "memory available: check for memory-hungry processes."]}
    return {}


def _df(results: Results, ctx: Ctx) -> Mapping[str, Any]:
    findings = []
    for what, text in (("space", _out(results)), ("inodes", _out(results, 1))):
        for line in text.splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 6 and parts[4].endswith("%") and parts[4][:-1].isdigit():
                used, mount = int(parts[4][:-1]), parts[5]
                if used >= 90 and not mount.startswith(("/dev", "/run", "/sys", "/proc")):
                    findings.append(f"Filesystem {mount} uses {used}% of its {what}: free "
                                    "some up before it fills.")
    return {"findings_disks": findings[:20]} if findings else {}


def _failed_units(results: Results, ctx: Ctx) -> Mapping[str, Any]:
    units = [line.split()[0] for line in _out(results).splitlines() if line.strip()]
    if units:
        return {"findings_units": [f"Failed services: {', '.join(units[:20])}; check their "
                                   "logs (journalctl -u <unit>)."]}
    return {}


def _evidence(key: str, parse: Any) -> Any:
    def learn(results: Results, ctx: Ctx) -> Mapping[str, Any]:
        found: list[hardware.Evidence] = []
        for result in results:
            found.extend(parse(result.stdout))
        return {key: [hardware.evidence_to_dict(e) for e in found]} if found else {}

    return learn


def _smart_devices(results: Results, ctx: Ctx) -> Mapping[str, Any]:
    # smartctl --scan: "/dev/sda -d sat # /dev/sda [SAT], ATA device". Device names come
    # from the host, so they are validated like ticket input before they go into a command.
    # One object per device, not a [device, type] pair: facts are journalled in the claim
    # document, and FerretDB 1.24 refuses nested arrays.
    devices = []
    for line in _out(results).splitlines():
        parts = line.split("#")[0].split()
        if not parts or not _DEVICE.fullmatch(parts[0]):
            continue
        kind = parts[2] if len(parts) >= 3 and parts[1] == "-d" else "auto"
        if _DEVICE_TYPE.fullmatch(kind):
            devices.append({"device": parts[0], "type": kind})
    return {"smart_devices": devices[:MAX_SMART_DEVICES]}


def _smart_device_list(ctx: Ctx) -> list[tuple[str, str]]:
    return [(str(d["device"]), str(d["type"])) for d in ctx.facts.get("smart_devices") or []
            if isinstance(d, dict) and _DEVICE.fullmatch(str(d.get("device", "")))
            and _DEVICE_TYPE.fullmatch(str(d.get("type", "")))]


def _smart_commands(ctx: Ctx) -> list[Command]:
    return [Command(argv=("smartctl", "-H", "-A", "-l", "error", "-d", kind, device), root=True,
                    ok_exit=None)  # smartctl's exit status is a bit mask the parser reads
            for device, kind in _smart_device_list(ctx)]


def _smart_evidence(results: Results, ctx: Ctx) -> Mapping[str, Any]:
    found: list[hardware.Evidence] = []
    for (device, _kind), result in zip(_smart_device_list(ctx), results, strict=False):
        found.extend(hardware.parse_smartctl(result.stdout, device=device.removeprefix("/dev/")))
    return {"evidence_smart": [hardware.evidence_to_dict(e) for e in found]} if found else {}


def _linux(params: DiagnosticsParams) -> tuple[Step[DiagnosticsParams], ...]:
    return (
        Step(name="detect", title="Detect available diagnostic tools",
             precheck=lambda ctx: [sh(_DETECT, *_TOOLS)], learn=_detect),
        Step(name="system", title="Identify the operating system",
             precheck=lambda ctx: [Command(argv=("uname", "-a")),
                                   Command(argv=("cat", "/etc/os-release"),
                                           ok_exit=frozenset({0, 1}))]),
        Step(name="load", title="Check load and uptime",
             precheck=lambda ctx: [Command(argv=("cat", "/proc/loadavg")),
                                   Command(argv=("nproc",)), Command(argv=("uptime",))],
             learn=_load),
        Step(name="memory", title="Check memory",
             precheck=lambda ctx: [Command(argv=("cat", "/proc/meminfo"))], learn=_meminfo),
        Step(name="disks", title="Check disk space and inodes",
             precheck=lambda ctx: [Command(argv=("df", "-P", "-k")),
                                   Command(argv=("df", "-P", "-i"))], learn=_df),
        Step(name="failed_units", title="List failed services", requires=("flag:systemd",),
             precheck=lambda ctx: [Command(argv=("systemctl", "--failed", "--no-legend",
                                                 "--plain", "--no-pager"))],
             learn=_failed_units),
        Step(name="kernel_errors", title="Read recent kernel errors",
             requires=("root", "tool:dmesg"),
             precheck=lambda ctx: [Command(argv=("dmesg", "--level=emerg,alert,crit,err,warn"),
                                           root=True)],
             learn=_evidence("evidence_kernel", hardware.parse_kernel_log)),
        Step(name="journal_errors", title="Read this boot's journal errors",
             requires=("root", "tool:journalctl"),
             precheck=lambda ctx: [Command(argv=("journalctl", "-p", "err", "-b", "--no-pager",
                                                 "-q", "-n", "500"), root=True,
                                           ok_exit=frozenset({0, 1}))],
             learn=_evidence("evidence_journal",
                             lambda text: hardware.parse_kernel_log(text, source="journal"))),
        Step(name="smart_scan", title="Find disks with SMART", requires=("root", "tool:smartctl"),
             precheck=lambda ctx: [Command(argv=("smartctl", "--scan"), root=True)],
             learn=_smart_devices),
        Step(name="smart", title="Read SMART health of each disk",
             requires=("root", "tool:smartctl"), precheck=_smart_commands,
             learn=_smart_evidence),
        Step(name="raid", title="Check software RAID", requires=("flag:mdstat",),
             precheck=lambda ctx: [Command(argv=("cat", "/proc/mdstat"))],
             learn=_evidence("evidence_raid", hardware.parse_mdstat)),
        Step(name="ecc", title="Read ECC memory error counters", requires=("flag:edac",),
             precheck=lambda ctx: [Command(argv=(
                 "find", "/sys/devices/system/edac/mc", "-maxdepth", "3", "-type", "f", "(",
                 "-name", "*_count", "-o", "-name", "*label", ")", "-exec", "grep", "-H", ".",
                 "{}", "+"), ok_exit=frozenset({0, 1}))],
             learn=_evidence("evidence_ecc", hardware.parse_edac_counts)),
    )


_WIN_DISKS = ("Get-PhysicalDisk | ForEach-Object { \"FriendlyName : $($_.FriendlyName)\"; "
              "\"HealthStatus : $($_.HealthStatus)\"; "
              "\"OperationalStatus : $($_.OperationalStatus)\"; '' }")


def _windows(params: DiagnosticsParams) -> tuple[Step[DiagnosticsParams], ...]:
    return (
        Step(name="system", title="Identify the operating system",
             precheck=lambda ctx: [powershell(
                 "Get-CimInstance Win32_OperatingSystem | Format-List Caption,Version,"
                 "LastBootUpTime,FreePhysicalMemory,TotalVisibleMemorySize")]),
        Step(name="load", title="Check CPU load",
             precheck=lambda ctx: [powershell(
                 "Get-CimInstance Win32_Processor | Measure-Object -Property LoadPercentage "
                 "-Average | Format-List Average")]),
        Step(name="disks", title="Check disk space",
             precheck=lambda ctx: [powershell(
                 "Get-PSDrive -PSProvider FileSystem | Format-Table Name,Used,Free -AutoSize")]),
        Step(name="stopped_services", title="List automatic services that are not running",
             precheck=lambda ctx: [powershell(
                 "Get-CimInstance Win32_Service -Filter \"StartMode='Auto' AND "
                 "State<>'Running'\" | Format-Table Name,State -AutoSize")]),
        Step(name="event_errors", title="Read the last day's system errors",
             precheck=lambda ctx: [powershell(
                 "Get-WinEvent -FilterHashtable @{LogName='System'; Level=1,2; "
                 "StartTime=(Get-Date).AddDays(-1)} -MaxEvents 200 -ErrorAction "
                 "SilentlyContinue | Format-List TimeCreated,ProviderName,Id,Message")]),
        Step(name="disk_health", title="Read physical disk health",
             precheck=lambda ctx: [powershell(_WIN_DISKS)],
             learn=_evidence("evidence_disks", hardware.parse_windows_disks)),
    )


def _build(params: DiagnosticsParams, platform: Platform) -> tuple[Step[DiagnosticsParams], ...]:
    return _linux(params) if platform == "linux" else _windows(params)


DIAGNOSTICS: Runbook[DiagnosticsParams] = Runbook(
    name="diagnostics", category="diagnostics", title="OS diagnostics",
    platforms=frozenset({"linux", "windows"}), params=DiagnosticsParams, build=_build,
    needs_root=False,
)


def evidence(facts: Mapping[str, Any]) -> list[hardware.Evidence]:
    """Every piece of hardware evidence the run learnt, in step order."""
    found: list[hardware.Evidence] = []
    for key, value in facts.items():
        if key.startswith("evidence_") and isinstance(value, list):
            found.extend(hardware.evidence_from_dict(v) for v in value if isinstance(v, dict))
    return found


def findings(facts: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    for key, value in facts.items():
        if key.startswith("findings_") and isinstance(value, list):
            out.extend(str(v) for v in value)
    return out
