"""A SIMULATED failing-disk signature for the demo's ``db-01`` server.

No disk on this machine is failing: these stand-ins for ``smartctl`` and ``dmesg`` print
what a dying SATA disk looks like (output modelled on smartmontools 7.3 and a Linux 6.1
kernel log), so the executor's diagnostics runbook has real evidence to parse and escalate.
They are installed only in ``db-01``'s private mount namespace (see
:mod:`devstack.demo.targets`), and every one of them says that it is a simulation — in a
comment, in the device model and in the first kernel line — so nobody mistakes the demo's
hardware escalation for a real one.
"""

from __future__ import annotations

from pathlib import Path

SIMULATED = "SIMULATED by the OS Intervention demo"

_SMART_REPORT = f"""\
smartctl 7.3 2022-02-28 r5338 [x86_64-linux] ({SIMULATED})

=== START OF INFORMATION SECTION ===
Device Model:     DEMO-SIMULATED-FAILING-DISK
Serial Number:    DEMO0000SIMULATED

=== START OF READ SMART DATA SECTION ===
SMART overall-health self-assessment test result: FAILED!
Drive failure expected in less than 24 hours. SAVE ALL DATA.
See vendor-specific Attribute list for failed Attributes.

SMART Attributes Data Structure revision number: 16
Vendor Specific SMART Attributes with Thresholds:
ID# ATTRIBUTE_NAME          FLAG     VALUE WORST THRESH TYPE      UPDATED  WHEN_FAILED RAW_VALUE
  1 Raw_Read_Error_Rate     0x002f   001   001   051    Pre-fail  Always   FAILING_NOW 48112
  5 Reallocated_Sector_Ct   0x0033   140   140   140    Pre-fail  Always   FAILING_NOW 1998
  9 Power_On_Hours          0x0032   031   031   000    Old_age   Always       -       50517
197 Current_Pending_Sector  0x0032   200   195   000    Old_age   Always       -       87
198 Offline_Uncorrectable   0x0030   100   253   000    Old_age   Offline      -       0

SMART Error Log Version: 1
No Errors Logged
"""

_KERNEL_LOG = f"""\
[    0.000000] {SIMULATED}: kernel messages of a failing disk (not this machine's)
[1204611.208370] ata1.00: failed command: READ FPDMA QUEUED
[1204611.208384] ata1.00: status: {{ DRDY ERR }}
[1204611.208387] ata1.00: error: {{ UNC }}
[1204611.210165] sd 0:0:0:0: [sda] tag#20 Sense Key : Medium Error [current]
[1204611.210169] sd 0:0:0:0: [sda] tag#20 Add. Sense: Unrecovered read error
[1204611.210177] critical medium error, dev sda, sector 2048 op 0x0:(READ) flags 0x80700
[1204614.552318] I/O error, dev sda, sector 2056 op 0x0:(READ) flags 0x0 phys_seg 1
[1204614.552350] Buffer I/O error on dev sda1, logical block 1, async page read
"""

SMARTCTL = f"""\
#!/bin/sh
# {SIMULATED}: stands in for smartctl on the demo server db-01 only,
# printing a failing disk's report so the diagnostics runbook finds hardware evidence.
case " $* " in
    *" --scan "*)
        echo "/dev/sda -d sat # /dev/sda [SAT], ATA device ({SIMULATED})"
        exit 0 ;;
esac
cat <<'REPORT'
{_SMART_REPORT}REPORT
# smartctl's exit status is a bit mask: bit 3 = "SMART status check returned DISK FAILING".
exit 8
"""

DMESG = f"""\
#!/bin/sh
# {SIMULATED}: stands in for dmesg on the demo server db-01 only.
cat <<'LOG'
{_KERNEL_LOG}LOG
"""


def write_failing_disk_tools(directory: Path) -> None:
    """Write the stand-ins into ``directory`` (mounted over /usr/local/sbin for db-01)."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    for name, script in (("smartctl", SMARTCTL), ("dmesg", DMESG)):
        path = directory / name
        path.write_text(script)
        path.chmod(0o755)
