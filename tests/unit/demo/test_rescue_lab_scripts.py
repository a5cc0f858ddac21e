"""The rescue lab's boot and rescue-system scripts are real shell files, checked by
shellcheck (Debian's package; deploy/local/bootstrap.sh installs it), and are what the lab's
sandbox runs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from devstack.demo.rescue_lab import sandbox

SCRIPTS = sorted(Path(sandbox.__file__).parent.glob("*.sh"))


def test_the_lab_runs_its_script_files() -> None:
    assert [p.name for p in SCRIPTS] == ["boot.sh", "rescue.sh"]
    assert SCRIPTS[0].read_text() == sandbox.BOOT_SCRIPT
    assert SCRIPTS[1].read_text() == sandbox.RESCUE_SCRIPT
    boot = sandbox.boot_command("ns", disk="/dev/loop9", part="/dev/loop9p1",
                                root=Path("/r"), nic="eth0")
    assert boot[boot.index("-c") + 1:] == [sandbox.BOOT_SCRIPT, "boot", sandbox.BOUNDING,
                                           "/dev/loop9", "/dev/loop9p1", "/r", "eth0"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck_finds_nothing_in(script: Path) -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.fail("shellcheck is missing: apt-get install shellcheck "
                    "(deploy/local/bootstrap.sh installs it)")
    result = subprocess.run([shellcheck, "--shell=sh", "--severity=style", str(script)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout
