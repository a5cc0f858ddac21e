"""A durable list of everything the demo (or a test session) created, to undo exactly that.

Each thing is recorded the moment it exists — before the next one is made — in a JSON file
(or only in memory). :meth:`Manifest.undo` removes the things in reverse order and drops
each entry once it is gone, so Ctrl-C, a crash half-way, or ``intervene demo --stop`` in a
later process all end in the same place: nothing of the demo left, and nothing else touched.
Processes are recorded with their kernel start time and are signalled only while that still
matches, so a pid reused by an unrelated process is never killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from devstack.demo import targets
from devstack.demo.rescue_lab import LabServer

Entry = dict[str, Any]


def _undo_process(entry: Entry) -> str:
    stopped = targets.stop_process_group(int(entry["pid"]), entry.get("started"))
    if entry.get("workdir"):
        shutil.rmtree(entry["workdir"], ignore_errors=True)
    return f"{entry['label']}: {'stopped' if stopped else 'already gone'} (pid {entry['pid']})"


def _undo_user(entry: Entry) -> str:
    targets.ThrowawayUser(name=entry["name"], password="").remove()
    return f"user {entry['name']}: removed"


def _undo_netns(entry: Entry) -> str:
    # Recorded by demos before edge-01 became a rescue lab server (a `--keep` run's leftovers).
    name = str(entry["name"])
    subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    subprocess.run(["ip", "link", "del", f"{name}h"[:15]], capture_output=True, check=False)
    return f"network namespace {name}: removed"


def _undo_sysv(entry: Entry) -> str:
    targets.SysvService(name=entry["name"], state=Path(entry["state"])).remove()
    return f"service {entry['name']}: removed"


def _undo_apt_repo(entry: Entry) -> str:
    targets.AptRepo(name=entry["name"], directory=Path(entry["directory"]),
                    packages=list(entry["packages"]), marker_dir=Path(entry["marker_dir"])
                    ).remove()
    return f"apt repository {entry['name']} and its packages: removed"


def _undo_path(entry: Entry) -> str:
    path = Path(entry["path"])
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
    return f"{path}: removed"


def _undo_lab_server(entry: Entry) -> str:
    server = LabServer.from_record(entry["server"])
    server.close()
    return (f"{entry['label']}: powered off; network namespace {server.netns}, its loop "
            f"device and disk image copy ({server.workdir}): removed")


def _undo_component(entry: Entry) -> str:
    # Imported here: the local stack pulls in Kafka's admin client, which the estate alone
    # (tests, benchmarks) does not need.
    from devstack import localstack

    for comp in [*localstack.service_components(), *localstack.infrastructure()]:
        if comp.name == entry["name"]:
            return comp.stop()
    return f"{entry['name']}: unknown component, nothing to stop"


UNDO: dict[str, Callable[[Entry], str]] = {
    "process": _undo_process,
    "user": _undo_user,
    "netns": _undo_netns,
    "sysv": _undo_sysv,
    "apt_repo": _undo_apt_repo,
    "path": _undo_path,
    "lab_server": _undo_lab_server,
    "component": _undo_component,
}


class Manifest:
    """Entries in creation order; written to ``path`` after every change when given."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.entries: list[Entry] = []
        if path is not None and path.exists():
            with contextlib.suppress(OSError, ValueError):
                loaded = json.loads(path.read_text())
                if isinstance(loaded, list):
                    self.entries = [e for e in loaded if isinstance(e, dict)]

    def add(self, kind: str, **fields: Any) -> None:
        if kind not in UNDO:
            raise ValueError(f"no way to undo a {kind!r}")
        self.entries.append({"kind": kind, **fields})
        self._save()

    def process(self, label: str, pid: int, *, workdir: Path | None = None) -> None:
        self.add("process", label=label, pid=pid, started=targets.process_start_time(pid),
                 workdir=str(workdir) if workdir else None)

    def user(self, user: targets.ThrowawayUser) -> None:
        self.add("user", name=user.name)

    def sshd(self, label: str, sshd: targets.Sshd) -> None:
        if sshd.pid is not None:
            self.add("process", label=label, pid=sshd.pid, started=sshd.started,
                     workdir=str(sshd.workdir))

    def lab_server(self, label: str, server: LabServer) -> None:
        """A rescue lab server, recorded before its disk, loop device and namespace exist:
        its undo finds them by name (and the loop device by its backing file)."""
        self.add("lab_server", label=label, server=server.record())

    def sysv(self, service: targets.SysvService) -> None:
        self.add("sysv", name=service.name, state=str(service.state))

    def apt_repo(self, repo: targets.AptRepo) -> None:
        self.add("apt_repo", name=repo.name, directory=str(repo.directory),
                 packages=repo.packages, marker_dir=str(repo.marker_dir))

    def undo(self) -> Iterator[str]:
        """Remove every recorded thing, newest first, yielding one line per thing."""
        while self.entries:
            entry = self.entries[-1]
            try:
                line = UNDO[entry["kind"]](entry)
            except Exception as exc:  # noqa: BLE001 - the rest must still be undone
                line = f"{entry.get('kind')}: could not be undone ({type(exc).__name__}: {exc})"
            self.entries.pop()
            self._save()
            yield line
        if self.path is not None:
            self.path.unlink(missing_ok=True)

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.entries, indent=1))
        os.replace(tmp, self.path)
