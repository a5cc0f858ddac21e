"""A broker of its own (``localstack.start_kafka_broker``) is stopped by process group; a group
whose leader was already reaped must never be signalled: its id may belong to someone else."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devstack import localstack


def _leader(code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code], start_new_session=True)


def test_a_reaped_leader_s_group_is_not_signalled(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    gone = _leader("pass")
    gone.wait()  # reaped: its pid (and group id) is free for reuse from now on
    signalled: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "killpg", lambda pgid, sig: signalled.append((pgid, sig)))
    localstack.KafkaBrokerProcess(process=gone, directory=tmp_path).stop(timeout=1)
    assert signalled == []


def test_a_running_group_is_stopped_with_its_children(tmp_path: Path) -> None:
    # The leader exits on SIGTERM; its child ignores SIGTERM and stays in the group, so
    # only the final SIGKILL sweep of the group stops it.
    leader = _leader(
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)'])\n"
        "time.sleep(60)\n")
    broker = localstack.KafkaBrokerProcess(process=leader, directory=tmp_path)
    child = None
    children = Path(f"/proc/{leader.pid}/task/{leader.pid}/children")
    try:
        for _ in range(100):  # the leader has started its child
            text = children.read_text().split() if children.exists() else []
            if text:
                child = int(text[0])
                break
            time.sleep(0.05)
        assert child is not None
        broker.stop(timeout=5)
        assert leader.poll() is not None
        time.sleep(0.2)
        state = Path(f"/proc/{child}/stat")
        assert not state.exists() or state.read_text().split()[2] == "Z"
    finally:
        if leader.poll() is None:
            leader.kill()


def test_a_kafka_cluster_id_never_reads_as_an_option() -> None:
    # URL-safe base64 may begin with "-", which the storage tool takes for an option: 1 in 64
    # fresh formats used to fail.
    ids = [localstack._kafka_uuid() for _ in range(3000)]
    assert not [i for i in ids if i.startswith("-")]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 22 for i in ids)
