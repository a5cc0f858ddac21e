"""Hardware-fault parsing on real-format output: faults found, healthy output quiet."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.executor import hardware

SAMPLES = Path(__file__).resolve().parents[2] / "fixtures" / "hardware"


def sample(name: str) -> str:
    return (SAMPLES / name).read_text()


@pytest.mark.parametrize("name", [
    "smartctl_ata_healthy.txt", "smartctl_nvme_healthy.txt",
])
def test_healthy_smart_output_gives_no_evidence(name: str) -> None:
    assert hardware.parse_smartctl(sample(name), device="sda") == []


def test_reallocated_pending_and_uncorrectable_sectors_are_reported_per_disk() -> None:
    found = hardware.parse_smartctl(sample("smartctl_ata_reallocated.txt"), device="sdb")
    findings = {e.finding: e.severity for e in found}
    assert findings == {
        "344 reallocated sectors (Reallocated_Sector_Ct)": "warning",
        "3 reported uncorrectable errors (Reported_Uncorrect)": "warning",
        "16 sectors pending reallocation (Current_Pending_Sector)": "warning",
        "16 offline uncorrectable sectors (Offline_Uncorrectable)": "critical",
    }
    assert {e.device for e in found} == {"sdb"}
    assert {e.component for e in found} == {"disk"}


def test_failed_self_assessment_and_failing_attributes_are_critical() -> None:
    found = hardware.parse_smartctl(sample("smartctl_ata_failed.txt"), device="sda")
    critical = [e.finding for e in found if e.severity == "critical"]
    assert "SMART overall-health self-assessment: FAILED!" in critical
    assert any("Raw_Read_Error_Rate is failing now" in f for f in critical)
    assert any("Reallocated_Sector_Ct is failing now" in f for f in critical)
    assert "1998 reallocated sectors (Reallocated_Sector_Ct)" in [e.finding for e in found]


def test_nvme_critical_warning_spare_media_errors_and_wear() -> None:
    found = {e.finding: e.severity for e in hardware.parse_smartctl(
        sample("smartctl_nvme_failing.txt"), device="nvme0n1")}
    assert found["NVMe critical warning 0x09"] == "critical"
    assert found["NVMe available spare 4% below threshold 10%"] == "critical"
    assert found["1207 NVMe media and data integrity errors"] == "warning"
    assert found["NVMe endurance used 108%"] == "warning"


def test_healthy_kernel_log_gives_no_evidence() -> None:
    # Mentions of "I/O", EXT4-fs, EDAC and mce in normal boot messages are not faults.
    assert hardware.parse_kernel_log(sample("dmesg_healthy.txt")) == []


def test_disk_io_errors_are_counted_per_disk_not_per_partition() -> None:
    found = hardware.parse_kernel_log(sample("dmesg_disk_errors.txt"))
    by_what = {(e.device, e.finding.split(",")[0]) for e in found}
    assert ("sdb", "1 medium errors on sdb") in by_what
    assert ("sdb", "2 block I/O errors on sdb") in by_what
    assert ("sdb", "1 buffer I/O errors on sdb") in by_what  # sdb1 -> sdb
    assert ("sdb", "1 SCSI medium errors on sdb") in by_what
    assert ("nvme0n1", "1 block I/O errors on nvme0n1") in by_what
    assert ("nvme0", "1 NVMe I/O timeouts on nvme0") in by_what
    assert ("ata2", "1 ATA failed commands on ata2") in by_what
    assert all(e.component == "disk" for e in found)
    # Repeats are counted; the first one is quoted as the example.
    assert "I/O error, dev sdb, sector 2056 op" in next(
        e.finding for e in found if e.finding.startswith("2 block"))


def test_filesystem_errors_are_reported_on_the_filesystem_device() -> None:
    found = hardware.parse_kernel_log(sample("dmesg_fs_errors.txt"))
    assert {(e.device, e.severity) for e in found} == {
        ("sda3", "warning"), ("dm-2", "warning"), ("vdb1", "warning")}
    assert next(e for e in found if e.device == "sda3").finding.startswith(
        "2 ext4 filesystem errors on sda3")


def test_memory_and_machine_check_errors() -> None:
    found = hardware.parse_kernel_log(sample("dmesg_memory_errors.txt"))
    summary = {(e.component, e.device, e.severity, e.finding.split(",")[0]) for e in found}
    assert ("memory", "MC0", "warning", "2 corrected memory errors (EDAC) on MC0") in summary
    assert ("memory", "MC1", "critical", "1 uncorrectable memory errors (EDAC) on MC1") in summary
    assert ("cpu", None, "critical", "1 machine check exceptions") in summary
    assert ("cpu", None, "warning", "1 machine check events logged") in summary


def test_healthy_mdstat_gives_no_evidence() -> None:
    assert hardware.parse_mdstat(sample("mdstat_healthy.txt")) == []


def test_degraded_arrays_and_failed_members_are_critical() -> None:
    found = hardware.parse_mdstat(sample("mdstat_degraded.txt"))
    findings = [(e.device, e.severity, e.finding) for e in found]
    assert ("md1", "critical", "md1 has failed members: sdb2") in findings
    assert ("md1", "critical", "md1 (raid1) is degraded: 1 of 2 devices up [U_]") in findings
    assert ("md0", "critical", "md0 (raid1) is degraded: 1 of 2 devices up [U_]") in findings
    assert not [f for f in findings if f[0] == "md2"]  # the healthy raid5 beside them


def test_rebuilding_and_inactive_arrays() -> None:
    found = {(e.device, e.severity, e.finding) for e in
             hardware.parse_mdstat(sample("mdstat_recovering.txt"))}
    assert ("md1", "warning", "md1 recovery in progress at 12.6%") in found
    assert ("md1", "critical", "md1 (raid1) is degraded: 1 of 2 devices up [U_]") in found
    assert ("md3", "critical", "md3 is inactive") in found


def test_zero_edac_counters_give_no_evidence() -> None:
    assert hardware.parse_edac_counts(sample("edac_healthy.txt")) == []


def test_edac_counters_name_the_dimm_when_the_kernel_labels_it() -> None:
    found = hardware.parse_edac_counts(sample("edac_errors.txt"))
    assert [(e.device, e.severity, e.finding) for e in found] == [
        ("CPU_SrcID#0_Ha#0_Chan#1_DIMM#0", "warning",
         "17 corrected memory errors on CPU_SrcID#0_Ha#0_Chan#1_DIMM#0"),
        ("mc1/csrow0", "critical", "2 uncorrectable memory errors on mc1/csrow0"),
    ]


def test_windows_disk_health() -> None:
    text = ("FriendlyName : Samsung SSD 970\nHealthStatus : Healthy\nOperationalStatus : OK\n\n"
            "FriendlyName : ST4000NM0035\nHealthStatus : Warning\n"
            "OperationalStatus : Predictive Failure\n\n")
    found = hardware.parse_windows_disks(text)
    assert [(e.device, e.severity, e.finding) for e in found] == [
        ("ST4000NM0035", "warning", "health Warning, operational status Predictive Failure")]


def test_escalations_group_by_component_and_device_most_severe_first() -> None:
    evidence = (hardware.parse_smartctl(sample("smartctl_ata_reallocated.txt"), device="sdb")
                + hardware.parse_kernel_log(sample("dmesg_disk_errors.txt"))
                + hardware.parse_mdstat(sample("mdstat_degraded.txt")))
    grouped = hardware.escalations(evidence)
    sdb = next(e for e in grouped if e.device == "sdb")
    assert sdb.component == "disk"
    assert sdb.severity == "critical"
    assert sdb.evidence[0].startswith(("kernel log", "smartctl"))
    assert len(sdb.evidence) == len(set(sdb.evidence))
    assert grouped[0].severity == "critical"
    assert {e.device for e in grouped if e.component == "raid"} == {"md0", "md1"}


def test_evidence_survives_the_journal_round_trip() -> None:
    found = hardware.parse_mdstat(sample("mdstat_degraded.txt"))
    assert [hardware.evidence_from_dict(hardware.evidence_to_dict(e)) for e in found] == found


@pytest.mark.parametrize(("name", "disk"), [
    ("sda3", "sda"), ("nvme0n1p2", "nvme0n1"), ("nvme0n1", "nvme0n1"), ("vdb", "vdb"),
    ("mmcblk0p1", "mmcblk0"), ("md127", "md127"), ("dm-2", "dm-2"),
])
def test_partition_to_disk(name: str, disk: str) -> None:
    assert hardware.disk_of(name) == disk
