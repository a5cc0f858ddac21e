"""When may another executor take a claim over at once, without waiting for the lease?"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace

from services.executor.claims import Owner


def test_a_live_owner_is_never_gone() -> None:
    assert not Owner.this_process().is_gone_locally()


def test_an_exited_process_on_this_machine_is_gone() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    me = Owner.this_process()
    dead = replace(me, pid=child.pid, started="1")
    assert dead.is_gone_locally()


def test_a_reused_pid_is_told_apart_by_its_start_time() -> None:
    me = Owner.this_process()
    assert replace(me, started="0").is_gone_locally()  # same pid, other process


def test_owners_elsewhere_wait_for_their_lease() -> None:
    me = replace(Owner.this_process(), pid=2**22 - 1)
    assert me.is_gone_locally()
    assert not replace(me, boot_id="another-boot").is_gone_locally()  # other machine/boot
    assert not replace(me, pid_ns="pid:[1]").is_gone_locally()  # another container
    assert not replace(me, host="other-host").is_gone_locally()
    assert not replace(me, boot_id="").is_gone_locally()  # not Linux: no proof


def test_owner_round_trips_through_the_store() -> None:
    me = Owner.this_process()
    assert Owner.from_doc(me.to_doc()) == me
    assert me.pid == os.getpid()
