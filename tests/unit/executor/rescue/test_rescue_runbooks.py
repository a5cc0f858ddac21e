"""The rescue runbooks as data: what they learn from real outputs, and what they refuse."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.executor.rescue.runbooks import (
    INCIDENTAL_STEPS,
    RESCUE_RUNBOOKS,
    backup_tag,
    rescue_params,
)
from services.executor.rescue.runbooks.common import (
    MNT,
    RescueParams,
    backup_step,
    learn_filesystems,
    refuse_without_root,
)
from services.executor.rescue.runbooks.filesystem import (
    _learn_after,
    _learn_before,
    _learn_health,
    _refuse_failing,
)
from services.executor.rescue.runbooks.grub import _learn_boot
from services.executor.rescue.runbooks.grub import _refuse as grub_refuse
from services.executor.rescue.runbooks.password import RescuePasswordParams, _learn_policy
from services.executor.rescue.runbooks.sshd import _learn as sshd_learn
from services.executor.runbooks.model import (
    Command,
    CommandResult,
    Context,
    ParameterError,
    RunOptions,
)

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures"
PARAMS = {"backup_tag": "HD-7-r2", "server_ip": "203.0.113.10", "ssh_port": 22}


def ctx(facts: dict[str, Any] | None = None, params: Any = None) -> Context[Any]:
    return Context(params=params or RescueParams(**PARAMS), platform="linux",
                   options=RunOptions(), facts=dict(facts or {}))


def done(stdout: str = "", exit_status: int = 0, stderr: str = "") -> CommandResult:
    return CommandResult(exit_status=exit_status, stdout=stdout, stderr=stderr)


FOUND = ("fs:/dev/sda1 ext4 sda\nroot:/dev/sda1\nfs:/dev/sda2 xfs sda\n"
         "fs:/dev/sdb1 ext4 sdb\nunmountable:/dev/sdb1\n")


def test_the_root_filesystem_and_its_disk_are_found() -> None:
    facts = learn_filesystems((done(FOUND),), ctx())
    assert facts["root_device"] == "/dev/sda1"
    assert facts["disk"] == "/dev/sda"
    assert facts["root_is_ext"] is True
    assert facts["unmountable"] == ["/dev/sdb1"]
    assert all(isinstance(f, dict) for f in facts["filesystems"])  # no nested arrays


@pytest.mark.parametrize(("output", "reason"), [
    ("fs:/dev/sda1 ext4 sda\n", "no Linux root filesystem"),
    ("fs:/dev/sda1 ext4 sda\nroot:/dev/sda1\nfs:/dev/sdb1 ext4 sdb\nroot:/dev/sdb1\n",
     "more than one"),
])
def test_no_root_or_two_roots_are_refused(output: str, reason: str) -> None:
    c = ctx()
    c.facts.update(learn_filesystems((done(output),), c))
    assert reason in (refuse_without_root((), c) or "")


def test_device_names_from_the_rescue_system_are_validated() -> None:
    facts = learn_filesystems((done("fs:/dev/sda1;reboot ext4 sda\nfs:/dev/../x ext4 -\n"),),
                              ctx())
    assert facts["filesystems"] == []


def fsck_ctx() -> Context[Any]:
    return ctx({"filesystems": [{"device": "/dev/sda1", "type": "ext4", "disk": "/dev/sda"}]})


def test_the_before_summary_counts_problems_and_plans_the_repair() -> None:
    c = fsck_ctx()
    text = (FIXTURES / "rescue" / "e2fsck_errors.txt").read_text()
    facts = _learn_before((done(text, exit_status=4),), c)
    before = facts["fsck_before"]["/dev/sda1"]
    assert before["exit"] == 4
    assert before["problems"] >= 5
    assert before["summary"].startswith("cloudimg-rootfs: ")
    assert facts["fsck_to_repair"] == ["/dev/sda1"]
    assert "evidence_fsck" not in facts  # corruption is not a hardware fault
    c.facts.update(facts)
    clean = (FIXTURES / "rescue" / "e2fsck_clean.txt").read_text()
    after = _learn_after((done(clean),), c)
    [line] = after["findings_fsck"]
    assert "before the repair errors found, left uncorrected" in line
    assert "after: clean" in line


def test_read_errors_during_the_check_are_disk_evidence() -> None:
    c = fsck_ctx()
    text = ("Error reading block 1234 (Attempt to read block from filesystem resulted in "
            "short read) while getting next inode from scan.  Ignore error? no\n")
    facts = _learn_before((done(text, exit_status=8),), c)
    [evidence] = facts["evidence_fsck"]
    assert (evidence["component"], evidence["device"], evidence["severity"]) == (
        "disk", "sda", "critical")
    c.facts.update(facts)
    assert "signs of hardware failure" in (_refuse_failing((), c) or "")


def test_a_failing_smart_self_assessment_stops_the_repair() -> None:
    c = fsck_ctx()
    smart = (FIXTURES / "hardware" / "smartctl_ata_failed.txt").read_text()
    c.facts.update(_learn_health(
        (done(f"== smartctl /dev/sda\n{smart}== kernel log /dev/sda\n"),), c))
    assert c.facts["evidence_smart"]
    assert "not repaired" in (_refuse_failing((), c) or "")
    healthy = (FIXTURES / "hardware" / "smartctl_ata_healthy.txt").read_text()
    c2 = fsck_ctx()
    c2.facts.update(_learn_health(
        (done(f"== smartctl /dev/sda\n{healthy}== kernel log /dev/sda\n"),), c2))
    assert _refuse_failing((), c2) is None


def test_kernel_io_errors_on_the_disk_count_but_other_disks_do_not() -> None:
    c = fsck_ctx()
    log = ("[ 12.3] blk_update_request: I/O error, dev sda, sector 2048 op 0x0:(READ)\n"
           "[ 12.4] I/O error, dev sdc, sector 99 op 0x0:(READ)\n")
    facts = _learn_health((done(f"== kernel log /dev/sda\n{log}"),), c)
    assert [e["device"] for e in facts["evidence_kernel"]] == ["sda"]


BOOT = ("firmware:bios\ntool:grub-install\ntool:grub-mkconfig\ntool:grub-fstest\n"
        "platform:i386-pc\nmbr:none\nmissing:grub/grub.cfg\npresent:default-grub\n"
        "kernel:yes\npttype:dos\nbootdev:\n")


def test_grub_learns_what_is_broken_and_how_grub_names_the_partition() -> None:
    c = ctx({"root_device": "/dev/sda1", "disk": "/dev/sda"})
    c.facts.update(_learn_boot((done(BOOT),), c))
    assert c.facts["mbr_grub"] is False
    assert c.facts["grub_partition"] == "msdos1"
    assert c.facts["grub_prefix"] == "/boot"
    assert grub_refuse((), c) is None


@pytest.mark.parametrize(("change", "reason"), [
    ("firmware:bios", "UEFI"),  # replaced by efi below
    ("tool:grub-install\n", "GRUB is not installed"),
    ("platform:i386-pc\n", "i386-pc"),
    ("kernel:yes", "no kernel"),
])
def test_grub_refuses_what_it_cannot_repair(change: str, reason: str) -> None:
    replacement = {"firmware:bios": "firmware:efi", "kernel:yes": "kernel:no"}.get(change, "")
    c = ctx({"root_device": "/dev/sda1", "disk": "/dev/sda"})
    c.facts.update(_learn_boot((done(BOOT.replace(change, replacement)),), c))
    assert reason in (grub_refuse((), c) or "")


def test_sshd_learns_missing_keys_invalid_config_and_enablement() -> None:
    inspect = ("sshd:present\nmissingkey:/etc/ssh/ssh_host_ed25519_key\n"
               "key:/etc/ssh/ssh_host_rsa_key\nunit:ssh.service /lib/systemd/system\n"
               "masked:ssh.service\nmissingkey:/etc/ssh/../../etc/shadow\n")
    check = done(exit_status=255, stderr="/etc/ssh/sshd_config: line 6: Bad configuration "
                                          "option: PermitRootLogn\n")
    facts = sshd_learn((done(inspect), check), ctx())
    assert facts["missing_host_keys"] == ["/etc/ssh/ssh_host_ed25519_key"]
    assert facts["ssh_unit"] == ["ssh.service", "/lib/systemd/system"]
    assert facts["ssh_masked"] == ["ssh.service"]
    assert facts["ssh_enabled"] is False
    assert facts["config_valid"] is False
    assert facts["config_errors"][0].endswith("PermitRootLogn")
    assert facts["ssh_needs_change"] is True


def test_a_root_password_that_ssh_will_not_accept_is_a_finding() -> None:
    params = RescuePasswordParams(**PARAMS)
    facts = _learn_policy((done("permitrootlogin without-password\n"
                                "passwordauthentication yes\n"),), ctx(params=params))
    assert facts["ssh_password_login"] is False
    assert "PermitRootLogin" in facts["findings_ssh_policy"][0]
    facts = _learn_policy((done("permitrootlogin yes\npasswordauthentication yes\n"),),
                          ctx(params=params))
    assert facts == {"ssh_password_login": True}


def test_backup_steps_note_each_copy_with_its_location() -> None:
    step = backup_step("backup_x", "Back up", ("etc/shadow", "etc/missing"), "the change")
    c = ctx()
    assert step.learn is not None
    c.facts.update(step.learn((done("pending:etc/shadow\n"),), c))
    assert step.backups is not None
    [note] = step.backups(c)
    assert note.location == "/root/os-intervention/HD-7-r2/etc/shadow (on the server's disk)"
    assert note.description == "copy of /etc/shadow before the change"
    assert step.needed((done("saved:etc/shadow\n"),), c) is False  # never overwritten


def test_every_rescue_runbook_builds_with_unique_steps_and_safe_commands() -> None:
    for runbook in RESCUE_RUNBOOKS.values():
        params = runbook.parse_params({**PARAMS, "account": "root"})
        steps = runbook.steps(params, "linux")
        assert steps[0].name in ("find_root", "find_filesystems")
        assert any(s.name == "unmount_root" for s in steps)
        changes = [s for s in steps if s.change is not None]
        assert changes
        with pytest.raises(ValueError, match="no windows variant"):
            runbook.steps(params, "windows")


def test_rescue_parameters_come_from_the_verdict_not_free_text() -> None:
    with pytest.raises(ParameterError):
        RESCUE_RUNBOOKS["rescue.root_password_reset"].parse_params(
            {**PARAMS, "account": "root; rm -rf /"})
    with pytest.raises(ParameterError):
        RESCUE_RUNBOOKS["rescue.boot_repair"].parse_params({**PARAMS, "backup_tag": "../x"})
    assert backup_tag("HD-1", 3) == "HD-1-r3"


def test_the_new_password_travels_on_stdin_only() -> None:
    runbook = RESCUE_RUNBOOKS["rescue.root_password_reset"]
    steps = runbook.steps(runbook.parse_params(PARAMS), "linux")
    [setter] = [s for s in steps if s.issues_credential is not None]
    c = ctx({"root_device": "/dev/sda1"}, params=runbook.parse_params(PARAMS))
    c.secrets["new_password"] = "S3cret-value!"
    assert setter.change is not None
    assert setter.verify is not None
    for op in (*setter.change(c), *setter.verify(c)):
        assert isinstance(op, Command)
        assert "S3cret-value!" not in " ".join(op.argv)
        assert op.stdin is not None
        assert "S3cret-value!" in op.stdin
    [chpasswd] = setter.change(c)
    assert isinstance(chpasswd, Command)
    assert chpasswd.argv == ("chpasswd", "-R", MNT)


def test_getting_in_and_out_and_backups_are_incidental_changes() -> None:
    assert {"mount_root", "rescue_boot_rescue", "backup_shadow", "backup_firewall"} <= \
        INCIDENTAL_STEPS
    assert not {"set_password", "repair", "reinstall_grub", "fix_config", "allow_ssh"} & \
        INCIDENTAL_STEPS


def test_rescue_params_merge_ticket_parameters_under_the_executors() -> None:
    from types import SimpleNamespace

    event = SimpleNamespace(
        ticket_id="HD-9", revision=2,
        ticket=SimpleNamespace(parameters={"account": "admin", "backup_tag": "evil"}),
        server=SimpleNamespace(ip="203.0.113.5", ssh_port=2222))
    raw = rescue_params(event)  # type: ignore[arg-type]
    assert raw == {"account": "admin", "backup_tag": "HD-9-r2", "server_ip": "203.0.113.5",
                   "ssh_port": 2222, "management_sources": ()}


def test_a_ticket_cannot_set_the_management_network() -> None:
    from types import SimpleNamespace

    event = SimpleNamespace(
        ticket_id="HD-9", revision=2,
        ticket=SimpleNamespace(parameters={"management_sources": ("0.0.0.0/0",)}),
        server=SimpleNamespace(ip="203.0.113.5", ssh_port=22))
    raw = rescue_params(event, ("192.0.2.0/28",))  # type: ignore[arg-type]
    assert raw["management_sources"] == ("192.0.2.0/28",)
