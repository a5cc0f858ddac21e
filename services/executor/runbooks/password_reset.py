"""Root/administrator password reset through a working admin login.

The customer gave a login that still works (with sudo rights on Linux, an administrator on
Windows) and lost the password of another account, ``root`` by default. The engine
generates a strong password, deposits it sealed to the customer's account before the
change, sets it with the password on stdin (``chpasswd`` reads ``user:password`` lines), and
verifies it by a fresh SSH login. The password never appears in a command line, the audit
trail, an event or a log: the redactor knows it from the moment it exists.

Re-runnable: an interrupted reset is simply done again with a new password, whose deposit
supersedes the earlier one once the server has it.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field

from services.executor.runbooks.model import (
    Command,
    Context,
    FreshLogin,
    Operation,
    ParameterError,
    Platform,
    Results,
    Runbook,
    Step,
    powershell,
    ps_quote,
)

# POSIX portable user names (useradd's default NAME_REGEX, plus a trailing "$" for Samba
# machine accounts), and Windows local account names without the characters it forbids.
LINUX_ACCOUNT = r"^[a-z_][a-z0-9_-]{0,31}\$?$"
WINDOWS_ACCOUNT = r'^[^"/\\\[\]:;|=,+*?<>@\x00-\x1f]{1,20}$'


class PasswordResetParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", strict=True)

    account: str = Field(default="root", min_length=1, max_length=32)


Ctx = Context[PasswordResetParams]


def _refuse_missing(results: Results, ctx: Ctx) -> str | None:
    if results and results[0].exit_status == 2:
        return f"there is no account named {ctx.params.account} on this server"
    return None


def _linux(params: PasswordResetParams) -> tuple[Step[PasswordResetParams], ...]:
    if not re.fullmatch(LINUX_ACCOUNT, params.account):
        raise ParameterError("root_password_reset", "account: not a valid Linux user name")
    account = params.account

    def change(ctx: Ctx) -> list[Operation]:
        return [Command(argv=("chpasswd",), root=True,
                        stdin=f"{account}:{ctx.secrets['new_password']}\n")]

    return (
        Step(name="account", title=f"Check that account {account} exists",
             precheck=lambda ctx: [Command(argv=("getent", "passwd", account),
                                           ok_exit=frozenset({0, 2}))],
             refuse=_refuse_missing),
        Step(name="set_password", title=f"Set a new password for {account}",
             issues_credential=lambda ctx: account, change=change,
             verify=lambda ctx: [FreshLogin(username=account,
                                            secret=ctx.secrets["new_password"])]),
    )


def _windows(params: PasswordResetParams) -> tuple[Step[PasswordResetParams], ...]:
    if not re.fullmatch(WINDOWS_ACCOUNT, params.account):
        raise ParameterError("root_password_reset", "account: not a valid Windows account name")
    account = "Administrator" if params.account == "root" else params.account
    name = ps_quote(account)

    def change(ctx: Ctx) -> list[Operation]:
        # The password arrives on stdin; the script itself holds no secret.
        return [powershell(
            "$p = [Console]::In.ReadLine(); "
            "$s = ConvertTo-SecureString -String $p -AsPlainText -Force; "
            f"Set-LocalUser -Name {name} -Password $s", root=True,
            stdin=ctx.secrets["new_password"] + "\n")]

    return (
        Step(name="account", title=f"Check that account {account} exists",
             precheck=lambda ctx: [powershell(
                 f"if (-not (Get-LocalUser -Name {name} -ErrorAction SilentlyContinue)) "
                 "{ exit 2 }", ok_exit=frozenset({0, 2}))],
             refuse=_refuse_missing),
        Step(name="set_password", title=f"Set a new password for {account}",
             issues_credential=lambda ctx: account, change=change,
             verify=lambda ctx: [FreshLogin(username=account,
                                            secret=ctx.secrets["new_password"])]),
    )


def _build(params: PasswordResetParams,
           platform: Platform) -> tuple[Step[PasswordResetParams], ...]:
    return _linux(params) if platform == "linux" else _windows(params)


ROOT_PASSWORD_RESET: Runbook[PasswordResetParams] = Runbook(
    name="root_password_reset", category="root_password_reset",
    title="Root/administrator password reset", platforms=frozenset({"linux", "windows"}),
    params=PasswordResetParams, build=_build,
)
