"""The provider's one-time set-up for the demo customer, done with the operator's own
commands (``intervene servers import``, ``executor vault-key``, ``engineers add``) run as
subprocesses with the target configuration in their environment — what a person would type.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from services.demo.chat import OnCallRoom
from services.demo.estate import Estate

VAULT_PRIVATE = "customer-vault.key"


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
    if on_call is not None:
        lines.append(_checked(["engineers", "add", on_call.engineer_id,
                               "--name", on_call.engineer_name, "--tier", "1",
                               "--matrix", on_call.engineer.user_id], env))
    return lines
