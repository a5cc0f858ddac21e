"""Root password reset in rescue mode: no login works, so the new password is written
straight into the customer's root filesystem.

``chpasswd -R`` applies the change inside the mounted root with the customer's own
configuration (``login.defs``: the hash method; PAM), so the hash is the one the customer's
system would have made itself. The password arrives on stdin and never appears on a
command line; the engine generates it, deposits it sealed to the customer's account before
the change, and the redactor knows it from the moment it exists. ``/etc/shadow`` is copied
to the backup directory first. Verification recomputes the hash with the system's
``crypt()`` (Perl's, which is libxcrypt's: yescrypt, SHA-512 and the rest) from the
password on stdin; after boot-back the executor also logs in with it from outside.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field

from services.executor.rescue.runbooks.common import (
    MNT,
    RescueParams,
    backup_step,
    check_root_fs,
    find_root,
    mount_root,
    out,
    read_host_keys,
    unmount_root,
)
from services.executor.runbooks.model import (
    Command,
    Context,
    Operation,
    Platform,
    Results,
    Runbook,
    Step,
    sh,
)
from services.executor.runbooks.password_reset import LINUX_ACCOUNT


class RescuePasswordParams(RescueParams):
    account: str = Field(default="root", pattern=LINUX_ACCOUNT)


Ctx = Context[RescuePasswordParams]

# Exit 0: the password matches the account's hash; 1: it does not; 2: no such account.
CRYPT_CHECK = r"""
my ($file, $user) = @ARGV;
my $pw = <STDIN>; chomp $pw;
open(my $fh, "<", $file) or die "cannot read $file\n";
while (my $line = <$fh>) {
    my @f = split /:/, $line;
    next unless $f[0] eq $user;
    my $hash = $f[1];
    my $got = crypt($pw, $hash);
    exit(defined $got && $got eq $hash ? 0 : 1);
}
exit 2;
"""

_ACCOUNT = r"""awk -F: -v a="$2" '$1 == a { found = 1 } END { exit !found }' "$1/etc/passwd" """

# What sshd would do with a password login of the account: the customer may have chosen
# to forbid root password logins, which the verification from outside must respect.
_SSH_POLICY = r"""
chroot "$1" /usr/sbin/sshd -T -f /etc/ssh/sshd_config -C "user=$2,host=rescue,addr=192.0.2.1" \
    2>/dev/null | grep -iE '^(permitrootlogin|passwordauthentication) '
exit 0
"""


def _learn_policy(results: Results, ctx: Ctx) -> Mapping[str, Any]:
    values = dict(line.split(None, 1) for line in out(results).lower().splitlines()
                  if len(line.split(None, 1)) == 2)
    allowed = values.get("passwordauthentication", "yes") == "yes"
    if ctx.params.account == "root":
        allowed = allowed and values.get("permitrootlogin", "yes") == "yes"
    facts: dict[str, Any] = {"ssh_password_login": allowed}
    if not allowed:
        facts["findings_ssh_policy"] = [
            f"Your SSH configuration does not accept password logins for "
            f"{ctx.params.account} (PermitRootLogin/PasswordAuthentication), which was left "
            "as it is: the new password works on the console and for su/sudo."]
    return facts


def _steps(params: RescuePasswordParams,
           platform: Platform) -> tuple[Step[RescuePasswordParams], ...]:
    account = params.account

    def change(ctx: Ctx) -> list[Operation]:
        return [Command(argv=("chpasswd", "-R", MNT), root=True,
                        stdin=f"{account}:{ctx.secrets['new_password']}\n")]

    def verify(ctx: Ctx) -> list[Operation]:
        return [Command(argv=("perl", "-e", CRYPT_CHECK, f"{MNT}/etc/shadow", account),
                        root=True, stdin=ctx.secrets["new_password"] + "\n")]

    return (
        find_root(), check_root_fs(), mount_root(),
        Step(name="account", title=f"Check that account {account} exists on the server",
             precheck=lambda ctx: [sh(_ACCOUNT, MNT, account, root=True,
                                      ok_exit=frozenset({0, 1}))],
             refuse=lambda results, ctx: (
                 f"there is no account named {account} in the server's /etc/passwd"
                 if results and results[0].exit_status == 1 else None)),
        backup_step("backup_shadow", "Back up /etc/shadow", ("etc/shadow",),
                    f"the password reset of {account}"),
        Step(name="set_password", title=f"Set a new password for {account} on the server's disk",
             issues_credential=lambda ctx: account, change=change, verify=verify),
        Step(name="ssh_policy", title="Read whether SSH accepts password logins for "
                                      f"{account}",
             precheck=lambda ctx: [sh(_SSH_POLICY, MNT, account, root=True)],
             learn=_learn_policy, blocking=False),
        read_host_keys(), unmount_root(),
    )


RESCUE_PASSWORD_RESET: Runbook[RescuePasswordParams] = Runbook(
    name="rescue.root_password_reset", category="root_password_reset",
    title="Root password reset in rescue mode", platforms=frozenset({"linux"}),
    params=RescuePasswordParams, build=_steps)
