"""The provider's one-time set-up for the demo customer, done with the operator's own
commands (``intervene servers import``, ``executor vault-key``, ``engineers add``,
``integrations add``, ``accounts import``) run as subprocesses with the target configuration
in their environment — what a person would type.

The demo's helpdesk is a registered integration (``portal-<account>``), the customer portal
whose login is the provider's account: its account map says ``portal:<account>`` is that
account. Its secret, printed once by ``integrations add``, is kept as the helpdesk would keep
it, in a 0600 file in the run's work folder (:func:`helpdesk_signer` reads it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from devstack.demo.chat import OnCallRoom
from devstack.demo.estate import Estate
from services.intake.signing import Signer

VAULT_PRIVATE = "customer-vault.key"
HELPDESK_SECRET = "helpdesk-integration.secret"  # noqa: S105 - a file name


class OperatorError(RuntimeError):
    """An operator command failed; the message holds the command and its output."""


def intervene(args: Sequence[str], env: Mapping[str, str], *, timeout: float = 60.0
              ) -> subprocess.CompletedProcess[str]:
    """Run ``intervene ARGS`` (this interpreter's CLI) with ``env`` over the environment."""
    return subprocess.run([sys.executable, "-m", "services.cli.main", *args],
                          env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=timeout, check=False)


def _checked(args: Sequence[str], env: Mapping[str, str]) -> str:
    done = intervene(args, env)
    if done.returncode != 0:
        raise OperatorError(f"`intervene {' '.join(args)}` failed ({done.returncode}):\n"
                            f"{done.stdout}{done.stderr}")
    return done.stdout.strip()


def set_up_customer(estate: Estate, env: Mapping[str, str], *, workdir: Path,
                    on_call: OnCallRoom | None = None) -> list[str]:
    """Inventory, the account's credential-vault key, and the on-call engineer.

    The vault key pair stands in for the customer's account area: the private half stays in
    ``workdir`` (the area would keep it), new passwords are sealed to the public half.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    inventory = workdir / "inventory.json"
    inventory.write_text(json.dumps(estate.inventory(), indent=2))
    lines = [_checked(["servers", "import", str(inventory)], env)]
    vault = workdir / "customer-vault"
    if not (vault / VAULT_PRIVATE).exists():
        _checked(["executor", "vault-key", "init", str(vault)], env)
    lines.append(_checked(["executor", "vault-key", "register", estate.account_id,
                           str(vault / "customer-vault.pub")], env))
    lines.extend(_register_helpdesk(estate, env, workdir))
    if on_call is not None:
        lines.append(_checked(["engineers", "add", on_call.engineer_id,
                               "--name", on_call.engineer_name, "--tier", "1",
                               "--matrix", on_call.engineer.user_id], env))
    return lines


def integration_name(estate: Estate) -> str:
    return f"portal-{estate.account_id.lower()}"


def portal_customer(estate: Estate) -> str:
    return f"portal:{estate.account_id}"


def _register_helpdesk(estate: Estate, env: Mapping[str, str], workdir: Path) -> list[str]:
    secret_file = workdir / HELPDESK_SECRET
    name = integration_name(estate)
    lines = []
    if not secret_file.exists():
        printed = _checked(["integrations", "add", name, "--kind", "api",
                            "--scopes", "submit,read"], env)
        secret = printed.splitlines()[-1].strip()
        fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(secret + "\n")
        lines.append(f"registered integration {name} (secret kept in {secret_file})")
    accounts = workdir / "account-map.csv"
    accounts.write_text(f"customer,account_id\n{portal_customer(estate)},{estate.account_id}\n")
    lines.append(_checked(["accounts", "import", str(accounts), "--integration", name], env))
    return lines


def helpdesk_signer(estate: Estate, workdir: Path) -> Signer:
    """How the demo's helpdesk signs: as its integration, for the demo customer."""
    secret = (workdir / HELPDESK_SECRET).read_text(encoding="utf-8").strip()
    return Signer(integration=integration_name(estate), secret=secret,
                  customer=portal_customer(estate))
