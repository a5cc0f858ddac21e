"""Critical service restart: find the service manager, check the configuration, restart,
confirm the service stayed up, and read its log.

The service manager is detected, not assumed, and named in the action summary:
systemd when it is running (``/run/systemd/system`` exists — the check ``sd_booted()``
makes), else a SysV init script run through ``service``, else OpenRC. A host with
``systemctl`` installed but systemd not running as init (containers, chroots) is SysV.

The configuration check runs before the restart, so a broken configuration never turns a
running-but-misbehaving service into a stopped one. Known daemons have their own check
(``nginx -t``, ``sshd -t``, ...); a SysV script that offers a ``configtest`` action gets
that; anything else is restarted without one, and the summary says so.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.executor.runbooks.model import (
    Command,
    Context,
    Platform,
    Results,
    Runbook,
    Step,
    powershell,
    ps_quote,
    sh,
)

# systemd unit names: letters, digits and ":-_.\@" (systemd.unit(5)); a template instance
# may add "@instance". No "/" and no leading "-" or ".": the name is also an init script path.
UNIT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9@._:+-]{0,127}$"
# Unit types other than services (systemd.unit(5)). systemctl acts on a name with one of
# these suffixes as that unit: "restart poweroff.target" powers the server off, and
# "restart reboot.target" reboots it. A name without a known suffix is a service to systemd
# ("php8.2-fpm" is php8.2-fpm.service), so only these suffixes are refused.
NON_SERVICE_UNIT_TYPES = frozenset({
    "socket", "target", "device", "mount", "automount", "swap", "timer", "path", "slice",
    "scope"})


class ServiceParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", strict=True)

    unit: str = Field(pattern=UNIT_PATTERN, description="Service to restart, e.g. nginx.")

    @field_validator("unit")
    @classmethod
    def _no_dots_only(cls, value: str) -> str:
        if ".." in value:
            raise ValueError("must not contain '..'")
        suffix = value.rpartition(".")[2] if "." in value else ""
        if suffix in NON_SERVICE_UNIT_TYPES:
            raise ValueError(f"must be a service, not a .{suffix} unit")
        if value.endswith("@.service") or value.endswith("@"):
            raise ValueError("must be a service, not a template without an instance")
        return value

    @property
    def base(self) -> str:
        """The name without ``.service``: what SysV and OpenRC call it."""
        return self.unit.removesuffix(".service")


Ctx = Context[ServiceParams]

# Configuration checks of common daemons: read-only, exit 0 when the configuration loads.
CONFIG_CHECKS: Mapping[str, tuple[str, ...]] = {
    "nginx": ("nginx", "-t"),
    "apache2": ("apache2ctl", "configtest"),
    "httpd": ("apachectl", "configtest"),
    "ssh": ("sshd", "-t"),
    "sshd": ("sshd", "-t"),
    "haproxy": ("haproxy", "-c", "-f", "/etc/haproxy/haproxy.cfg"),
    "postfix": ("postfix", "check"),
    "named": ("named-checkconf",),
    "bind9": ("named-checkconf",),
    "unbound": ("unbound-checkconf",),
    "squid": ("squid", "-k", "parse"),
    "dovecot": ("doveconf", "-n"),
    "exim4": ("exim4", "-bV"),
    "varnish": ("varnishd", "-C", "-f", "/etc/varnish/default.vcl"),
}
_PHP_FPM = re.compile(r"^php(\d+\.\d+)-fpm$")


def config_check_for(base: str) -> tuple[str, ...] | None:
    """The configuration check of a known daemon, or None."""
    if base in CONFIG_CHECKS:
        return CONFIG_CHECKS[base]
    match = _PHP_FPM.fullmatch(base)
    return (f"php-fpm{match.group(1)}", "-t") if match else None


_DETECT = (
    'u="$1"; b="$2"; '
    "if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then "
    "  echo manager:systemd; "
    '  [ "$(systemctl show -p LoadState --value -- "$u" 2>/dev/null)" = loaded ] '
    "    && echo unit:found || echo unit:missing; "
    "elif command -v rc-service >/dev/null 2>&1; then "
    '  echo manager:openrc; rc-service -e "$b" && echo unit:found || echo unit:missing; '
    "elif command -v service >/dev/null 2>&1; then "
    "  echo manager:sysv; "
    '  if [ -x "/etc/init.d/$b" ]; then echo unit:found; '
    '    grep -q "configtest)" "/etc/init.d/$b" && echo configtest:yes; '
    "  else echo unit:missing; fi; "
    "else echo manager:none; fi; "
    'shift 2; for t in "$@"; do command -v "$t" >/dev/null 2>&1 && echo "tool:$t"; done; '
    "exit 0"
)


def _detect(ctx: Ctx) -> list[Command]:
    check = config_check_for(ctx.params.base)
    return [sh(_DETECT, ctx.params.unit, ctx.params.base, *((check[0],) if check else ()))]


def _learn_manager(results: Results, ctx: Ctx) -> Mapping[str, Any]:
    lines = results[0].stdout.split() if results else []
    facts: dict[str, Any] = {"manager": "none", "unit_found": False}
    for line in lines:
        key, _, value = line.partition(":")
        if key == "manager":
            facts["manager"] = value
        elif key == "unit":
            facts["unit_found"] = value == "found"
    check = config_check_for(ctx.params.base)
    if check is not None and f"tool:{check[0]}" in lines:
        facts["config_check"] = list(check)
    elif facts["manager"] == "sysv" and "configtest:yes" in lines:
        facts["config_check"] = ["service", ctx.params.base, "configtest"]
    return facts


def _refuse_unknown(results: Results, ctx: Ctx) -> str | None:
    if ctx.facts.get("manager") == "none":
        return "no supported service manager (systemd, SysV init, OpenRC) found"
    if not ctx.facts.get("unit_found"):
        return f"service {ctx.params.unit} not found on this server"
    return None


def _status(ctx: Ctx) -> list[Command]:
    manager, unit, base = ctx.fact("manager"), ctx.params.unit, ctx.params.base
    if manager == "systemd":
        return [Command(argv=("systemctl", "show", "-p", "ActiveState", "-p", "SubState",
                              "-p", "MainPID", "-p", "InvocationID", "-p", "NRestarts", "--",
                              unit))]
    if manager == "openrc":
        return [Command(argv=("rc-service", base, "status"), root=True, ok_exit=None)]
    return [Command(argv=("service", base, "status"), root=True, ok_exit=None)]


def _properties(results: Results) -> dict[str, str]:
    text = results[0].stdout if results else ""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def _running(results: Results, ctx: Ctx) -> bool:
    if not results or results[0].exit_status is None:
        return False
    if ctx.fact("manager") == "systemd":
        return _properties(results).get("ActiveState") == "active"
    return results[0].exit_status == 0  # LSB: 0 running, 3 not running


def _learn_status(results: Results, ctx: Ctx) -> Mapping[str, Any]:
    props = _properties(results) if ctx.fact("manager") == "systemd" else {}
    now = {"running": _running(results, ctx), "invocation": props.get("InvocationID", "")}
    # Resuming: keep what was seen before the interrupted restart; it tells whether the
    # restart happened (systemd gives every start a new InvocationID).
    if ctx.resuming and "invocation_before" in ctx.facts:
        return {"invocation_now": now["invocation"]}
    return {"running_before": now["running"], "invocation_before": now["invocation"]}


def _restart_needed(results: Results, ctx: Ctx) -> bool:
    if ctx.resuming and ctx.fact("manager") == "systemd":
        return ctx.fact("invocation_now") == ctx.fact("invocation_before")
    return True  # the customer asked for the restart


def _restart(ctx: Ctx) -> list[Command]:
    manager, unit, base = ctx.fact("manager"), ctx.params.unit, ctx.params.base
    if manager == "systemd":
        return [Command(argv=("systemctl", "restart", "--", unit), root=True)]
    if manager == "openrc":
        return [Command(argv=("rc-service", base, "restart"), root=True)]
    return [Command(argv=("service", base, "restart"), root=True)]


def _restarted(results: Results, ctx: Ctx) -> bool:
    if not _running(results, ctx):
        return False
    if ctx.fact("manager") == "systemd":
        return _properties(results).get("InvocationID", "") != ctx.fact("invocation_before")
    return True


_SYSV_LOGS = (
    'b="$1"; for f in "/var/log/$b.log" "/var/log/$b/"*.log; do '
    '[ -r "$f" ] && { echo "== $f"; tail -n 50 -- "$f"; }; done; '
    'for f in /var/log/syslog /var/log/messages; do '
    '[ -r "$f" ] && { echo "== $f"; grep -h -F -- "$b" "$f" | tail -n 50; }; done; exit 0'
)


def _log_tail(ctx: Ctx) -> list[Command]:
    if ctx.fact("manager") == "systemd":
        unit = ctx.params.unit
        return [Command(argv=("systemctl", "status", "--no-pager", "-n", "0", "--", unit),
                        ok_exit=None),
                Command(argv=("journalctl", "-u", unit, "-n", "50", "--no-pager", "-q"),
                        root=True, ok_exit=frozenset({0, 1}))]
    return [sh(_SYSV_LOGS, ctx.params.base, root=True, ok_exit=None)]


def _manual(params: ServiceParams) -> tuple[str, ...]:
    return (
        f"Check whether service {params.unit} is running and when it was last started "
        f"(e.g. `service {params.base} status` or `systemctl status {params.unit}`).",
        "If it was not restarted after the executor stopped, restart it once and check its log.",
    )


def _linux(params: ServiceParams) -> tuple[Step[ServiceParams], ...]:
    return (
        Step(name="detect", title=f"Find service {params.unit} and its service manager",
             precheck=_detect, learn=_learn_manager, refuse=_refuse_unknown),
        Step(name="config_check", title=f"Check the configuration of {params.unit}",
             requires=("fact:config_check",),
             precheck=lambda ctx: [Command(argv=tuple(ctx.facts["config_check"]), root=True)]),
        Step(name="restart", title=f"Restart {params.unit}",
             precheck=_status, learn=_learn_status, needed=_restart_needed,
             change=_restart, settle=lambda ctx: ctx.options.service_settle_s,
             verify=_status, verified=_restarted,
             # Only systemd tells a restart that happened from one that did not
             # (InvocationID); elsewhere an interrupted restart goes to an engineer.
             rerunnable=lambda ctx: ctx.fact("manager") == "systemd",
             manual_instructions=_manual(params)),
        Step(name="log_tail", title=f"Read the recent log of {params.unit}",
             precheck=_log_tail, blocking=False),
    )


def _windows(params: ServiceParams) -> tuple[Step[ServiceParams], ...]:
    name = ps_quote(params.base)
    exists = f"if (-not (Get-Service -Name {name} -ErrorAction SilentlyContinue)) {{ exit 3 }}"
    status = (f"$s = Get-Service -Name {name}; \"Status=$($s.Status)\"; "
              "if ($s.Status -ne 'Running') { exit 3 }")
    return (
        Step(name="detect", title=f"Find service {params.unit}",
             precheck=lambda ctx: [powershell(exists, ok_exit=frozenset({0, 3}))],
             refuse=lambda results, ctx: (f"service {params.unit} not found on this server"
                                          if results and results[0].exit_status == 3 else None)),
        Step(name="restart", title=f"Restart {params.unit}",
             precheck=lambda ctx: [powershell(status, ok_exit=frozenset({0, 3}))],
             change=lambda ctx: [powershell(f"Restart-Service -Name {name} -Force", root=True)],
             settle=lambda ctx: ctx.options.service_settle_s,
             verify=lambda ctx: [powershell(status)], rerunnable=False,
             manual_instructions=_manual(params)),
        Step(name="log_tail", title=f"Read recent events of {params.unit}", blocking=False,
             precheck=lambda ctx: [powershell(
                 "Get-WinEvent -FilterHashtable @{LogName='System'; "
                 "ProviderName='Service Control Manager'} -MaxEvents 50 -ErrorAction "
                 f"SilentlyContinue | Where-Object {{ $_.Message -like ('*' + {name} + '*') }} "
                 "| Format-List TimeCreated,Id,Message", ok_exit=None)]),
    )


def _build(params: ServiceParams, platform: Platform) -> tuple[Step[ServiceParams], ...]:
    return _linux(params) if platform == "linux" else _windows(params)


SERVICE_RESTART: Runbook[ServiceParams] = Runbook(
    name="service_restart", category="service_restart", title="Critical service restart",
    platforms=frozenset({"linux", "windows"}), params=ServiceParams, build=_build,
)
