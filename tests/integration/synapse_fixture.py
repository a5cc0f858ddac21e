"""One real Synapse homeserver for the whole test session (SQLite, loopback, no federation).

Use it from a test module with ``from synapse_fixture import synapse_homeserver_fixture``
(which provides the fixture ``synapse_homeserver``; the
module's folder is on ``sys.path`` in pytest's default import mode; tests/ has no
``__init__.py``). The homeserver starts at its first use and stops at the end of the session;
a process-wide singleton keeps it to one even if several modules import the fixture.

The runner itself — base config made once in ``var/synapse/base``, a fresh run directory
per start with ``deploy/local/synapse/homeserver.overrides.yaml`` merged in, readiness on
``/_matrix/client/versions``, users through the shared-secret admin API — is
:mod:`devstack.demo.synapse`, which ``intervene demo`` uses too.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devstack.demo.synapse import Homeserver, MatrixUser, start_homeserver

__all__ = ["Homeserver", "MatrixUser", "start_homeserver", "synapse_homeserver_fixture"]

_RUNNING: list[Homeserver] = []


@pytest.fixture(scope="session", name="synapse_homeserver")
def synapse_homeserver_fixture() -> Iterator[Homeserver]:
    """The session's Synapse (started at first use, stopped when the session ends)."""
    first = not _RUNNING
    if first:
        _RUNNING.append(start_homeserver())
    yield _RUNNING[0]
    if first:
        _RUNNING.pop().stop()
