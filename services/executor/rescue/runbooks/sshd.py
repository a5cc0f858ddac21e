"""SSH service restoration in rescue mode: host keys, configuration, enablement.

In a chroot of the customer's system, with the customer's own ``sshd`` and ``ssh-keygen``:

- host keys are generated only where one is missing — those the configuration names
  (``HostKey``), or the distribution defaults (rsa, ecdsa, ed25519) when it names none;
  existing keys are never replaced, so clients keep trusting the server;
- the configuration is validated with ``sshd -t``; every line it rejects is commented out
  with a marker naming this intervention (the smallest change that makes it load), until
  ``sshd -t`` passes. The original files are in the backup directory first; a fix that
  does not validate puts them back;
- the service is unmasked and enabled for the next boot (systemd's unit symlinks).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from services.executor.rescue.runbooks.common import (
    MNT,
    RescueParams,
    backup_step,
    check_root_fs,
    find_root,
    mount_root,
    read_host_keys,
    restore_from_backup,
    tagged,
    unmount_root,
)
from services.executor.runbooks.model import (
    Command,
    Context,
    Platform,
    Results,
    Runbook,
    Step,
    sh,
)

Ctx = Context[RescueParams]
KEY_PATH = re.compile(r"^/etc/ssh/[A-Za-z0-9_.-]{1,100}$")
UNITS = ("ssh.service", "sshd.service")
DEFAULT_KEYS = tuple(f"/etc/ssh/ssh_host_{t}_key" for t in ("rsa", "ecdsa", "ed25519"))

_INSPECT = r"""
mnt=$1
[ -x "$mnt/usr/sbin/sshd" ] && echo sshd:present
keys=$(cat "$mnt/etc/ssh/sshd_config" "$mnt"/etc/ssh/sshd_config.d/*.conf 2>/dev/null \
    | awk 'tolower($1) == "hostkey" { print $2 }')
[ -n "$keys" ] || keys=$(printf '/etc/ssh/ssh_host_%s_key ' rsa ecdsa ed25519)
for k in $keys; do [ -f "$mnt$k" ] && echo "key:$k" || echo "missingkey:$k"; done
wants=$mnt/etc/systemd/system
for u in ssh.service sshd.service; do
    for d in "$mnt/lib/systemd/system" "$mnt/usr/lib/systemd/system"; do
        [ -f "$d/$u" ] && { echo "unit:$u ${d#$mnt}"; break; }
    done
    [ -L "$wants/multi-user.target.wants/$u" ] && echo "enabled:$u"
    [ "$(readlink "$wants/$u")" = /dev/null ] && echo "masked:$u"
done
exit 0
"""


def _validate(ctx: Ctx) -> list[Command]:
    return [Command(argv=("chroot", MNT, "/usr/sbin/sshd", "-t", "-f", "/etc/ssh/sshd_config"),
                    root=True, ok_exit=None)]


def _learn(results: Results, ctx: Ctx) -> Mapping[str, Any]:
    tags = tagged(results)
    missing = [k for k in tags.get("missingkey", []) if KEY_PATH.fullmatch(k)]
    units = [u.split() for u in tags.get("unit", []) if len(u.split()) == 2]
    unit = next(([name, where] for name, where in units if name in UNITS), None)
    enabled = set(tags.get("enabled", []))
    masked = [u for u in tags.get("masked", []) if u in UNITS]
    check = results[1] if len(results) > 1 else None
    valid = check is not None and check.exit_status == 0
    facts: dict[str, Any] = {
        "sshd_present": bool(tags.get("sshd")), "missing_host_keys": missing,
        "ssh_unit": unit, "ssh_masked": masked,
        "ssh_enabled": unit is not None and unit[0] in enabled and not masked,
        "config_valid": valid,
        "config_errors": [] if check is None or valid else
        [line.strip() for line in check.stderr.splitlines() if line.strip()][:20],
    }
    facts["ssh_needs_change"] = bool(missing or not valid
                                     or (unit is not None and not facts["ssh_enabled"]))
    if unit is None:
        facts["findings_ssh_unit"] = [
            "No systemd unit for sshd was found; its enablement at boot was not checked."]
    return facts


def _refuse(results: Results, ctx: Ctx) -> str | None:
    if not ctx.facts.get("sshd_present"):
        return "the OpenSSH server is not installed on the customer's system"
    return None


def _keygen(ctx: Ctx) -> list[Command]:
    commands = []
    for path in ctx.facts.get("missing_host_keys") or []:
        kind = next((t for t in ("ed25519", "ecdsa", "rsa") if t in path.rsplit("/", 1)[1]),
                    "ed25519")
        bits = ("-b", "3072") if kind == "rsa" else ()
        commands.append(Command(argv=("chroot", MNT, "ssh-keygen", "-q", "-t", kind, *bits,
                                      "-N", "", "-C", "", "-f", path), root=True, stdin=""))
    return commands


_KEYS_PRESENT = r"""
mnt=$1; shift
for k; do [ -s "$mnt$k" ] && [ -s "$mnt$k.pub" ] || { echo "$k missing" >&2; exit 1; }; done
"""

# Comment out every line sshd -t rejects, until it loads. Only files under /etc/ssh are
# edited; an error sshd does not place on a line ends the attempt.
_FIX = r"""
mnt=$1 tag=$2
n=0
while [ "$n" -lt 10 ]; do
    err=$(chroot "$mnt" /usr/sbin/sshd -t -f /etc/ssh/sshd_config 2>&1) && exit 0
    places=$(printf '%s\n' "$err" \
        | sed -n 's#^\(/etc/ssh/[^ :]*\):\{0,1\} line \([0-9][0-9]*\):.*#\1 \2#p' | sort -u)
    [ -n "$places" ] || { printf '%s\n' "$err" >&2; exit 3; }
    printf '%s\n' "$places" | while read -r file line; do
        sed -i "${line}s|^|# [OS intervention $tag: rejected by sshd -t, disabled] |" "$mnt$file"
        echo "disabled $file line $line"
    done
    n=$((n + 1))
done
exit 3
"""

_ENABLE = r"""
set -e
mnt=$1 unit=$2 dir=$3
wants=$mnt/etc/systemd/system
for u in ssh.service sshd.service; do
    if [ "$(readlink "$wants/$u")" = /dev/null ]; then rm -f "$wants/$u"; echo "unmasked $u"; fi
done
mkdir -p "$wants/multi-user.target.wants"
if chroot "$mnt" sh -c 'command -v systemctl' >/dev/null 2>&1; then
    chroot "$mnt" systemctl enable "$unit"
else
    ln -sfn "$dir/$unit" "$wants/multi-user.target.wants/$unit"
fi
echo "enabled $unit"
"""

_ENABLED = r"""
wants=$1/etc/systemd/system
[ -L "$wants/multi-user.target.wants/$2" ] && [ "$(readlink "$wants/$2")" != /dev/null ]
"""


def _unit(ctx: Ctx) -> tuple[str, str]:
    name, where = ctx.facts["ssh_unit"]
    return str(name), str(where)


def _steps(params: RescueParams, platform: Platform) -> tuple[Step[RescueParams], ...]:
    return (
        find_root(), check_root_fs(), mount_root(),
        Step(name="inspect_ssh", title="Inspect sshd: configuration, host keys, enablement",
             requires=("fact:root_device",),
             precheck=lambda ctx: [sh(_INSPECT, MNT, root=True), *_validate(ctx)],
             learn=_learn, refuse=_refuse),
        backup_step("backup_ssh", "Back up the sshd configuration",
                    ("etc/ssh/sshd_config", "etc/ssh/sshd_config.d"),
                    "the SSH restoration", when="ssh_needs_change"),
        Step(name="host_keys", title="Generate the missing SSH host keys (only those)",
             needed=lambda results, ctx: bool(ctx.facts.get("missing_host_keys")),
             change=_keygen,
             verify=lambda ctx: [sh(_KEYS_PRESENT, MNT,
                                    *(ctx.facts.get("missing_host_keys") or ()), root=True)]),
        Step(name="fix_config", title="Fix the sshd configuration (disable rejected lines)",
             precheck=_validate,
             needed=lambda results, ctx: bool(results) and results[0].exit_status != 0,
             change=lambda ctx: [sh(_FIX, MNT, ctx.params.backup_tag, root=True)],
             verify=lambda ctx: [Command(argv=("chroot", MNT, "/usr/sbin/sshd", "-t", "-f",
                                               "/etc/ssh/sshd_config"), root=True)],
             rollback=lambda ctx: restore_from_backup(ctx, "etc/ssh/sshd_config")),
        Step(name="enable_ssh", title="Enable the SSH service at boot",
             requires=("fact:ssh_unit",),
             precheck=lambda ctx: [sh(_ENABLED, MNT, _unit(ctx)[0], root=True,
                                      ok_exit=frozenset({0, 1}))],
             needed=lambda results, ctx: bool(results) and results[0].exit_status != 0,
             change=lambda ctx: [sh(_ENABLE, MNT, *_unit(ctx), root=True)],
             verify=lambda ctx: [sh(_ENABLED, MNT, _unit(ctx)[0], root=True)]),
        read_host_keys(), unmount_root(),
    )


RESCUE_SSH_RESTORATION: Runbook[RescueParams] = Runbook(
    name="rescue.remote_access_restoration", category="remote_access_restoration",
    title="SSH restoration in rescue mode", platforms=frozenset({"linux"}),
    params=RescueParams, build=_steps)
