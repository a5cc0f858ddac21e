"""The runbook declarations: validated parameters, commands built from them, never text."""

from __future__ import annotations

import base64
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from executor_fakes import FakeHost, ok, rig

from services.executor.runbooks import RUNBOOKS
from services.executor.runbooks.model import (
    Command,
    CommandResult,
    Context,
    ParameterError,
    RunOptions,
    powershell,
    ps_quote,
)
from services.executor.runbooks.service_restart import config_check_for
from services.executor.ssh import SshSession


def ctx(runbook: str, params: dict[str, Any], platform: Any = "linux",
        **facts: Any) -> Context[Any]:
    book = RUNBOOKS[runbook]
    return Context(params=book.parse_params(params), platform=platform,
                   options=RunOptions(), facts=dict(facts))


@pytest.mark.parametrize(("runbook", "params"), [
    ("service_restart", {"unit": "nginx; rm -rf /"}),
    ("service_restart", {"unit": "$(reboot)"}),
    ("service_restart", {"unit": "../../bin/sh"}),
    ("service_restart", {"unit": "-h"}),
    ("service_restart", {"unit": "a\nb"}),
    ("service_restart", {}),
    ("service_restart", {"unit": 5}),
    ("software_installation", {"packages": ["htop", "--allow-unauthenticated"]}),
    ("software_installation", {"packages": ["ht op"]}),
    ("software_installation", {"packages": ["`id`"]}),
    ("software_installation", {"packages": []}),
    ("software_installation", {"packages": "htop"}),
    ("software_installation", {"packages": [f"p{i}" for i in range(21)]}),
])
def test_unsafe_or_malformed_parameters_are_refused(runbook: str, params: dict[str, Any]) -> None:
    with pytest.raises(ParameterError) as caught:
        RUNBOOKS[runbook].parse_params(params)
    # The message names the field, never echoes the value (it could be anything).
    for value in params.values():
        if isinstance(value, str) and len(value) > 3:
            assert value not in str(caught.value)


@pytest.mark.parametrize("account", ["root;id", "Root", "-x", "a b", "x" * 40, "$(id)"])
def test_password_reset_refuses_account_names_that_are_not_user_names(account: str) -> None:
    book = RUNBOOKS["root_password_reset"]
    with pytest.raises(ParameterError):
        book.steps(book.parse_params({"account": account}), "linux")


def test_every_runbook_declares_unique_step_names_per_platform() -> None:
    samples = {"diagnostics": {}, "service_restart": {"unit": "nginx"},
               "software_installation": {"packages": ["htop", "curl", "htop"]},
               "root_password_reset": {}}
    for name, book in RUNBOOKS.items():
        for platform in sorted(book.platforms):
            steps = book.steps(book.parse_params(samples[name]), platform)  # type: ignore[arg-type]
            assert steps
            assert len({s.name for s in steps}) == len(steps)


def test_packages_become_one_step_each_in_order_duplicates_once() -> None:
    book = RUNBOOKS["software_installation"]
    steps = book.steps(book.parse_params({"packages": ["htop", "curl", "htop"]}), "linux")
    assert [s.name for s in steps] == ["detect", "install:htop", "install:curl"]


def test_apt_install_commands_are_argument_lists_with_the_package_last() -> None:
    book = RUNBOOKS["software_installation"]
    params = book.parse_params({"packages": ["htop"]})
    step = book.steps(params, "linux")[1]
    c = ctx("software_installation", {"packages": ["htop"]}, package_manager="apt-get")
    assert step.precheck is not None
    assert step.change is not None
    assert step.simulate is not None
    [query] = step.precheck(c)
    [sim] = step.simulate(c)
    [install] = step.change(c)
    assert query.argv[-2:] == ("--", "htop")
    assert not query.root
    assert sim.argv[:2] == ("apt-get", "-s")
    assert install.root
    assert install.argv[-2:] == ("install", "htop")
    assert "DEBIAN_FRONTEND=noninteractive" in install.argv
    c_dnf = ctx("software_installation", {"packages": ["htop"]}, package_manager="dnf")
    assert step.change(c_dnf)[0].argv == ("dnf", "install", "-y", "htop")  # type: ignore[union-attr]


def test_service_restart_uses_the_detected_manager() -> None:
    book = RUNBOOKS["service_restart"]
    restart = next(s for s in book.steps(book.parse_params({"unit": "nginx.service"}), "linux")
                   if s.name == "restart")
    assert restart.change is not None
    sysd = ctx("service_restart", {"unit": "nginx.service"}, manager="systemd")
    sysv = ctx("service_restart", {"unit": "nginx.service"}, manager="sysv")
    assert restart.change(sysd)[0].argv == ("systemctl", "restart", "--", "nginx.service")  # type: ignore[union-attr]
    assert restart.change(sysv)[0].argv == ("service", "nginx", "restart")  # type: ignore[union-attr]
    assert restart.is_rerunnable(sysd)
    assert not restart.is_rerunnable(sysv)  # SysV cannot tell whether it restarted


def test_systemd_restart_is_recognised_as_done_by_its_invocation_id() -> None:
    book = RUNBOOKS["service_restart"]
    restart = next(s for s in book.steps(book.parse_params({"unit": "nginx"}), "linux")
                   if s.name == "restart")
    c = ctx("service_restart", {"unit": "nginx"}, manager="systemd",
            invocation_before="aaa")
    c.resuming = True
    status = (CommandResult(exit_status=0, stdout="ActiveState=active\nInvocationID=bbb\n"),)
    c.facts.update(restart.learn(status, c))  # type: ignore[misc]
    assert not restart.needed(status, c)  # restarted before the crash: not again
    same = (CommandResult(exit_status=0, stdout="ActiveState=active\nInvocationID=aaa\n"),)
    c.facts.update(restart.learn(same, c))  # type: ignore[misc]
    assert restart.needed(same, c)


@pytest.mark.parametrize(("unit", "check"), [
    ("nginx", ("nginx", "-t")), ("ssh", ("sshd", "-t")), ("php8.2-fpm", ("php-fpm8.2", "-t")),
    ("mystery", None),
])
def test_known_daemons_have_a_configuration_check(unit: str, check: Any) -> None:
    assert config_check_for(unit) == check


def test_password_reset_sends_the_password_on_stdin_only() -> None:
    book = RUNBOOKS["root_password_reset"]
    step = book.steps(book.parse_params({"account": "admin2"}), "linux")[1]
    c = ctx("root_password_reset", {"account": "admin2"})
    c.secrets["new_password"] = "S3cret-Value-xyz"
    assert step.change is not None
    [chpasswd] = step.change(c)
    assert isinstance(chpasswd, Command)
    assert chpasswd.argv == ("chpasswd",)
    assert chpasswd.stdin == "admin2:S3cret-Value-xyz\n"
    assert "S3cret" not in chpasswd.display()
    assert "S3cret" not in repr(chpasswd)


def test_windows_password_reset_reads_the_password_from_stdin() -> None:
    book = RUNBOOKS["root_password_reset"]
    step = book.steps(book.parse_params({}), "windows")[1]
    c = ctx("root_password_reset", {}, platform="windows")
    c.secrets["new_password"] = "S3cret-Value-xyz"
    [command] = step.change(c)  # type: ignore[misc]
    assert isinstance(command, Command)
    script = base64.b64decode(command.argv[-1]).decode("utf-16-le")
    assert "S3cret" not in script
    assert "Set-LocalUser -Name 'Administrator'" in script
    assert command.stdin == "S3cret-Value-xyz\n"


def test_powershell_values_are_single_quoted_literals() -> None:
    assert ps_quote("it's") == "'it''s'"
    command = powershell(f"Get-Service -Name {ps_quote('x; Stop-Computer')}")
    script = base64.b64decode(command.argv[-1]).decode("utf-16-le")
    assert script == "Get-Service -Name 'x; Stop-Computer'"
    assert all(" " not in arg for arg in command.argv)  # safe for cmd.exe and POSIX alike


def test_sudo_password_goes_to_stdin_never_the_command_line() -> None:
    session = SshSession.__new__(SshSession)
    session.platform = "linux"
    session.privilege = "sudo_password"
    session._credential = type("C", (), {"password": "hunter2-pass"})()  # type: ignore[assignment]
    line, stdin = session.command_line(Command(argv=("chpasswd",), root=True, stdin="u:p\n"))
    assert line == "sudo -k -S -p '' -- chpasswd"
    assert stdin == "hunter2-pass\nu:p\n"
    line, stdin = session.command_line(Command(argv=("echo", "a b; c")))
    assert shlex.split(line)[-2:] == ["echo", "a b; c"]
    assert stdin is None
    session.privilege = "sudo_nopasswd"
    assert session.command_line(Command(argv=("id",), root=True)) == ("sudo -n -- id", None)
    session.privilege = "none"
    with pytest.raises(PermissionError):
        session.command_line(Command(argv=("id",), root=True))


FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "hardware"
SMART_FAILED = (FIXTURES / "smartctl_ata_failed.txt").read_text()
MDSTAT_DEGRADED = (FIXTURES / "mdstat_degraded.txt").read_text()
DMESG_HEALTHY = (FIXTURES / "dmesg_healthy.txt").read_text()


async def test_diagnostics_skip_what_the_host_lacks_and_collect_evidence() -> None:
    def host(command: Command) -> CommandResult:
        argv = command.argv
        if argv[:2] == ("sh", "-c"):
            return ok("tool:dmesg\ntool:smartctl\nflag:mdstat\n")
        if argv == ("smartctl", "--scan"):
            return ok("/dev/sda -d sat # /dev/sda [SAT], ATA device\n"
                      "/dev/`reboot` -d sat # hostile\n")
        if argv[0] == "smartctl":
            return ok(SMART_FAILED, exit_status=8)
        if argv == ("cat", "/proc/mdstat"):
            return ok(MDSTAT_DEGRADED)
        if argv[0] == "dmesg":
            return ok(DMESG_HEALTHY)
        if argv == ("cat", "/proc/loadavg"):
            return ok("0.10 0.20 0.30 1/100 1234\n")
        if argv == ("nproc",):
            return ok("4\n")
        if argv[:2] == ("df", "-P"):
            return ok("Filesystem 1024-blocks Used Available Capacity Mounted on\n"
                      "/dev/sda2 100 95 5 95% /\n")
        return ok("")

    r = rig(FakeHost(host))
    book = RUNBOOKS["diagnostics"]
    result = await r.engine.run(book, book.parse_params({}))
    by_name = {s.name: s.result for s in result.steps}
    assert by_name["failed_units"] == "skipped"  # no systemd
    assert by_name["journal_errors"] == "skipped"  # no journalctl
    assert by_name["ecc"] == "skipped"
    assert by_name["smart"] == "ok"
    smart_commands = [c.argv for c in r.host.ran if c.argv[0] == "smartctl" and "-H" in c.argv]
    assert smart_commands == [("smartctl", "-H", "-A", "-l", "error", "-d", "sat", "/dev/sda")]
    from services.executor.runbooks.diagnostics import evidence, findings

    components = {(e.component, e.device) for e in evidence(result.facts)}
    assert ("disk", "sda") in components
    assert ("raid", "md1") in components
    assert any("/ uses 95%" in f for f in findings(result.facts))
    assert not any(c.root for c in r.host.ran if c.argv[0] in ("cat", "df", "uname"))


@pytest.mark.parametrize("unit", ["poweroff.target", "reboot.target", "ctrl-alt-del.target",
                                  "sshd.socket", "data.mount", "apt-daily.timer",
                                  "user.slice", "getty@.service"])
def test_service_restart_refuses_units_that_are_not_services(unit: str) -> None:
    # "systemctl restart poweroff.target" would power the customer's server off.
    with pytest.raises(ParameterError):
        RUNBOOKS["service_restart"].parse_params({"unit": unit})


@pytest.mark.parametrize("unit", ["nginx", "nginx.service", "php8.2-fpm", "getty@tty1.service",
                                  "systemd-resolved"])
def test_service_restart_accepts_service_units(unit: str) -> None:
    assert RUNBOOKS["service_restart"].parse_params({"unit": unit}).unit == unit


@pytest.mark.parametrize("platform", ["linux", "windows"])
def test_account_names_with_a_trailing_newline_are_refused(platform: str) -> None:
    # re.match with "$" accepts "root\n"; every check is a fullmatch.
    book = RUNBOOKS["root_password_reset"]
    with pytest.raises(ParameterError):
        book.steps(book.parse_params({"account": "admin\n"}), platform)  # type: ignore[arg-type]


@pytest.mark.parametrize("quote", ["'", "\u2018", "\u2019", "\u201a", "\u201b"])
def test_powershell_quoting_doubles_every_single_quote_form(quote: str) -> None:
    # PowerShell ends a single-quoted string at any of the five; doubled, it is one literal
    # character, so "x<q>; Stop-Computer; <q>" cannot break out.
    value = f"x{quote}; Stop-Computer; {quote}"
    assert ps_quote(value) == f"'x{quote}{quote}; Stop-Computer; {quote}{quote}'"


def test_ssh_output_is_redacted_before_it_is_cut() -> None:
    from services.executor.ssh import MAX_STDERR_CHARS, tail
    from services.runtime.redaction import Redactor

    redactor = Redactor()
    secret = "Cust0mer-Passw0rd-value"
    redactor.add(secret)
    output = ("x" * MAX_STDERR_CHARS + secret + "y" * (MAX_STDERR_CHARS - 10)).encode()
    kept = tail(output, MAX_STDERR_CHARS, redactor)
    assert secret[-10:] not in kept
    assert "[REDACTED]" in kept
