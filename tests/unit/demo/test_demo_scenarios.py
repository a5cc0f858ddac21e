"""The demo tickets are valid helpdesk requests for the scenario each one stands for, and
the manifest undoes what it recorded, newest first, even from another process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devstack.demo import targets
from devstack.demo.estate import DemoServer, Estate
from devstack.demo.manifest import Manifest
from devstack.demo.rescue_lab import LabServer, ProviderApi
from devstack.demo.scenarios import SCENARIOS
from schemas.request import parse_helpdesk_request
from schemas.scope import scope_of


@pytest.fixture
def estate() -> Estate:
    """An estate's values only (nothing is started: requests are built from names)."""
    servers = {key: DemoServer(key=key, service_id=f"SRV-abc123-{key}", service_name=key,
                               host="127.1.2.3", port=2200, host_key_line="ssh-ed25519 AAAA",
                               rescue=True, note="") for key in
               ("healthy", "failing_disk", "locked_out")}
    return Estate(run="abc123", account_id="ACC-DEMO-abc123",
                  admin=targets.ThrowawayUser(name="ivdadmin", password="Pw-admin-secret"),
                  reset_account=targets.ThrowawayUser(name="ivdlost", password="x"),
                  service=targets.SysvService(name="ivdsvc", state=Path("/nonexistent")),
                  repo=targets.AptRepo(name="ivdrepo", directory=Path("/nonexistent"),
                                       packages=["ivdrepo-probe0", "ivdrepo-probe1"],
                                       marker_dir=Path("/nonexistent")),
                  lab=LabServer(service_id="SRV-abc123-locked_out", netns="ivdns",
                                host_if="ivdnsh", address="10.213.0.2", gateway="10.213.0.1",
                                prefix=30, workdir=Path("/nonexistent"),
                                image=Path("/nonexistent/disk.img")),
                  rescue_api=ProviderApi(url="http://127.0.0.1:9", token="t"),
                  servers=servers, sshds={})  # type: ignore[arg-type]


def test_every_demo_ticket_is_a_valid_request_for_its_server(estate: Estate) -> None:
    ids = set()
    for scenario in SCENARIOS:
        request = parse_helpdesk_request(scenario.request(estate))
        ids.add(request.ticket_id)
        assert request.server.service_id == estate.server(scenario.server).service_id
        assert request.credentials.username == estate.admin.name
    assert len(ids) == len(SCENARIOS)


def test_the_scenarios_cover_the_procedure(estate: Estate) -> None:
    categories = {s.key: s.request(estate)["category"] for s in SCENARIOS}
    assert {"diagnostics", "service_restart", "software_installation", "root_password_reset",
            "network_recovery"} <= set(categories.values())
    assert scope_of(categories["paid"]) == "not_included"
    noauth = next(s for s in SCENARIOS if s.key == "noauth").request(estate)
    assert not noauth["authorization"]["accepts_data_loss_disclaimer"]
    assert {s.door for s in SCENARIOS} == {"http", "helpdesk_topic"}


def test_expectations_name_reachable_states() -> None:
    for scenario in SCENARIOS:
        assert scenario.expected
        assert scenario.met(*next(iter(scenario.expected)))
    restart = next(s for s in SCENARIOS if s.key == "restart")
    assert not restart.met("completed", "unresolved")


def test_manifest_undoes_newest_first_and_survives_a_restart(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.write_text("x")
    path = tmp_path / "manifest.json"
    manifest = Manifest(path)
    manifest.add("path", path=str(first))
    manifest.add("path", path=str(second))
    assert len(json.loads(path.read_text())) == 2
    later = Manifest(path)  # e.g. `intervene demo --stop` in another process
    lines = list(later.undo())
    assert lines == [f"{second}: removed", f"{first}: removed"]
    assert not first.exists()
    assert not second.exists()
    assert not path.exists()
    with pytest.raises(ValueError, match="no way to undo"):
        manifest.add("volcano", name="x")
