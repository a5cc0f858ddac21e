"""Every panel of the Grafana dashboard shows data after the demo's scenarios ran (issue 10).

A real Prometheus (:mod:`prometheus_server`) scrapes the four service processes every second
from before the scenarios are submitted, with deploy/prometheus/prometheus.yml's jobs and
deploy/prometheus/rules loaded. Then each panel's own PromQL (every target of
deploy/grafana/dashboards/*.json, read by tests/metrics_catalogue.py) is evaluated over the
run the way Grafana draws it (``query_range``, one point a second) and must have shown a
finite, non-zero value at some point; and every series selector in it must have matched a
series with a non-zero value. Gauges that fall back to zero once the system is idle (open
tickets, pages waiting, consumer lag) are so judged by their peak during the run.

A run of the demo alone does not make every panel's event happen, so a few more are made
to, through the system's own doors only (intake's HTTP API, the helpdesk topic, the
operator's commands, the on-call Matrix room):

- two servers without rescue mode, whose SSH does not answer, are added to the customer's
  inventory with ``intervene servers import``: one dedicated with IP-KVM (console work on the
  complex timeline), one without (on-site data-centre work). The session's notifier gives the
  data-centre timeline 15 s (``NOTIFIER_SLA_DATACENTER_MIN`` in conftest.py; no demo ticket
  has that timeline), so its SLA warning, breach and overdue gauge happen for real;
- diagnostics tickets for them: one data-centre ticket, left waiting; two console tickets
  that the engineer acknowledges in the Matrix room and reports done, one after the other —
  Prometheus's ``increase()`` and ``rate()`` cannot see a series' first sample, so each label
  set a panel sums must occur twice (a second complex completion after the lock-out's, a
  second acknowledgement of each page kind, a second start and completion of the console
  kind);
- the second console ticket comes through the helpdesk topic, published twice with the same
  bytes (a helpdesk integration's retry): intake drops the copy as a duplicate;
- one sealed request on the helpdesk topic that names no ticket (an integration's bug):
  intake dead-letters it.

Runs first in this directory (file order): its Prometheus must be up before ``submitted``.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka import AIOKafkaProducer
from e2e_system import Submitted, System
from prometheus_server import PrometheusServer, Series, running

from devstack.demo import targets as demo_targets
from devstack.demo.chat import OnCallRoom
from devstack.demo.estate import Estate
from devstack.demo.helpdesk import post_ticket
from devstack.demo.operator import intervene
from devstack.demo.progress import BusRecorder
from devstack.demo.scenarios import AUTHORIZES
from schemas.events import EngineerAcknowledged, InterventionCompleted, ManualStepRequested
from schemas.topics import HELPDESK_REQUESTS, physical
from services.cli.commands_intake import publish_request
from services.intake.sealing import seal_request
from services.runtime.keys import load_sealing_public

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import metrics_catalogue as catalogue
from polling import eventually

# The first test also brings the whole session up (services, Synapse, demo servers, the
# scenarios and the additions above): more than the default 300 s on a slow machine.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

SERVICES = {"intake", "auth", "executor", "notifier"}
# Panels whose metric is rightly zero in a healthy run. Their query must still return
# finite values — it matches what the services export, the panel draws 0 and not "No data" —
# only no non-zero one is required:
# - handler errors: a handler fails only when a dependency is down (the store, the broker) or
#   on a bug. Bad input never reaches a handler: the decoder dead-letters it (the "Dead-
#   lettered messages" panel, which the unnamed helpdesk request makes non-zero). The series
#   start at zero for every consumed topic (services/runtime/metrics.py).
# - SLA breaches of the initial response and of standard and complex interventions: the
#   compliance panels divide met clocks by met + breached ones, and a healthy run meets them
#   (only the data-centre clock is made to breach, below).
# - intake's outbox: an accepted ticket is published within milliseconds when Kafka is up, so
#   its oldest entry's age is 0 at (almost) every scrape.
# - the executors' queue: a healthy run never saturates them (the capacity panel still shows
#   the running interventions and the concurrency), so nothing waits for a worker.
# - consumer lag: the scenarios' natural burst made it 3 at some scrape in most runs, but a
#   consumer that keeps up between two 1 s scrapes rightly shows 0, and one CI rehearsal saw
#   exactly that (the metrics scrape test treats it the same: ZERO_AT_REST).
ZERO_IN_A_HEALTHY_RUN = frozenset({"Handler errors per second",
                                   "Waiting at a hand-off (oldest, seconds)",
                                   "Consumer lag",
                                   "Executor capacity: queued and running interventions"})
# Every panel selector also carries the dashboard's job and instance variables, at "All".
_ALL = (("job", "=~", ".+"), ("instance", "=~", ".+"))
ZERO_SELECTORS = frozenset({
    ("intervention_messages_handled_total", (*_ALL, ("outcome", "=", "error"))),
    ("intervention_sla_breaches_total", (*_ALL, ("clock", "=", "initial_response"))),
    *(("intervention_sla_breaches_total",
       (*_ALL, ("clock", "=", "intervention"), ("timeline", "=", timeline)))
      for timeline in ("standard", "complex")),
    ("intake_outbox_oldest_age_seconds", _ALL),
    ("intervention_consumer_lag", _ALL),
    ("intervention_executor_queued", _ALL),
    ("intervention_executor_oldest_queued_age_seconds", _ALL),
})
SETTLE_S = 120.0  # after the additions, for every panel to show its values
WAIT_S = 60.0  # for each step of the additions
STEP_S = 1.0

TARGETS = catalogue.dashboard_targets()
SELECTORS = catalogue.dashboard_selectors()


def selector_text(selector: catalogue.Selector) -> str:
    inner = ",".join(f"{m.label}{m.op}{json.dumps(m.value)}" for m in selector.matchers)
    return f"{selector.name}{{{inner}}}"


def selector_key(selector: catalogue.Selector) -> tuple[str, tuple[tuple[str, str, str], ...]]:
    return selector.name, tuple((m.label, m.op, m.value) for m in selector.matchers)


def peak(series: list[Series]) -> float:
    """The largest finite value any series had, NaN if none had one (a panel shows data
    when this is above zero: a series only ever negative does not count)."""
    values = [v for s in series for _, v in s.values if math.isfinite(v)]
    return max(values) if values else math.nan


def shows_data(series: list[Series], *, zero_allowed: bool) -> bool:
    if zero_allowed:
        return bool(series) and not math.isnan(peak(series))
    return peak(series) > 0


@dataclass
class Observed:
    """What Prometheus answered for each panel query and selector, over the whole run."""

    panels: dict[catalogue.Target, list[Series]] = field(default_factory=dict)
    selectors: dict[str, list[Series]] = field(default_factory=dict)
    targets: list[dict[str, Any]] = field(default_factory=list)
    rule_groups: list[dict[str, Any]] = field(default_factory=list)

    def missing(self) -> list[str]:
        out = [f"{t.panel} / {t.ref}: {t.expr}" for t in TARGETS
               if not shows_data(self.panels.get(t, []),
                                 zero_allowed=t.panel in ZERO_IN_A_HEALTHY_RUN)]
        out += [f"{selector_text(s)} ({t.panel})" for t, s in SELECTORS
                if not shows_data(self.selectors.get(selector_text(s), []),
                                  zero_allowed=selector_key(s) in ZERO_SELECTORS)]
        return out

    def table(self) -> str:
        lines = ["panel / query | series | peak"]
        for target in TARGETS:
            series = self.panels.get(target, [])
            lines.append(f"{target.panel} / {target.ref} | {len(series)} | {peak(series):.6g}")
        lines.append("")
        lines.append("selector (panel) | series | peak")
        seen: set[str] = set()
        for target, selector in SELECTORS:
            text = selector_text(selector)
            if text in seen:
                continue
            seen.add(text)
            series = self.selectors.get(text, [])
            lines.append(f"{text} ({target.panel}) | {len(series)} | {peak(series):.6g}")
        return "\n".join(lines)


# --- Prometheus, from before the scenarios ---------------------------------------------------


@pytest.fixture(scope="session")
def prometheus(system: System, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[PrometheusServer]:
    """Session-scoped so that it starts before ``submitted`` (a session fixture too)."""
    jobs = {s.name: f"127.0.0.1:{s.health_port}" for s in system.services}
    with running(tmp_path_factory.mktemp("prometheus"), jobs) as server:
        deadline = time.monotonic() + 30
        while True:  # every target scraped once: the run's first events are all seen
            active = server.targets()
            if len(active) == len(jobs) and all(t["health"] == "up" for t in active):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"Prometheus does not scrape all four services: {active}\n"
                            f"{server.log()[-2000:]}")
            time.sleep(0.5)
        yield server


# --- what the demo does not make happen ------------------------------------------------------


def _request(estate: Estate, ticket_id: str, service_id: str) -> dict[str, Any]:
    signed_at = datetime.now(UTC) - timedelta(minutes=2)
    return {
        "ticket_id": ticket_id, "revision": 1, "account_id": estate.account_id,
        "department": "technical_issues", "channel": "client_area", "language": "en",
        "server": {"service_id": service_id}, "category": "diagnostics",
        "description": "The server does not answer any more; please run a health check.",
        "error_messages": [],
        "credentials": {"username": estate.admin.name, "password": estate.admin.password},
        "authorization": {
            "statement": AUTHORIZES, "accepts_backup_responsibility": True,
            "accepts_service_interruption": True, "accepts_data_loss_disclaimer": True,
            "signed_by": "Dana Demo",
            "signed_at": signed_at.isoformat().replace("+00:00", "Z"),
        },
    }


def _unreachable_servers(estate: Estate) -> list[dict[str, Any]]:
    """Inventory rows (``intervene servers import``) for two servers without rescue mode whose
    SSH port refuses connections: console work (IP-KVM) and data-centre work."""
    rows = []
    for key, ipkvm in (("kvm", True), ("dc", False)):
        host = demo_targets.loopback_address()
        rows.append({
            "service_id": f"SRV-{estate.run}-{key}", "service_name": f"{key}-01",
            "ips": [host], "account_id": estate.account_id, "authorized_contacts": [],
            "type": "dedicated", "os_family": "linux", "ipkvm": ipkvm, "rescue": False,
            "ssh_port": demo_targets.free_port(host), "datacenter": "local-demo",
        })
    return rows


class Additions:
    """The additions of the module docstring, each through a door of the system."""

    def __init__(self, system: System, estate: Estate, bus: BusRecorder, on_call: OnCallRoom,
                 prometheus: PrometheusServer) -> None:
        self.system, self.estate, self.bus = system, estate, bus
        self.on_call, self.prometheus = on_call, prometheus
        run = estate.run
        self.datacenter = f"HD-{run}-metrics-dc"
        self.consoles = [f"HD-{run}-metrics-kvm1", f"HD-{run}-metrics-kvm2"]

    async def prometheus_has(self, expr: str, count: int = 1) -> bool:
        return len(await asyncio.to_thread(self.prometheus.query, expr)) >= count

    async def import_servers(self) -> None:
        inventory = self.system.workdir / "inventory-unreachable.json"
        inventory.write_text(json.dumps(_unreachable_servers(self.estate)), encoding="utf-8")
        done = await asyncio.to_thread(intervene, ["servers", "import", str(inventory)],
                                       self.system.env)
        assert done.returncode == 0, done.stdout + done.stderr

    def sealed(self, ticket: str, server: str) -> dict[str, Any]:
        recipient = load_sealing_public(
            Path(self.system.env["INTERVENTION_KEYS_DIR"]) / "executor-sealing.pub")
        return seal_request(_request(self.estate, ticket, f"SRV-{self.estate.run}-{server}"),
                            recipient=recipient)

    async def dead_letter(self) -> None:
        """A helpdesk integration's bug: a sealed request that names no ticket. Intake cannot
        answer it on any ticket, so it dead-letters it."""
        unnamed = self.sealed(f"HD-{self.estate.run}-metrics-unnamed", "kvm")
        key = unnamed.pop("ticket_id").encode()
        producer = AIOKafkaProducer(bootstrap_servers=self.system.bootstrap)
        await producer.start()
        try:
            body = json.dumps(unnamed).encode()
            await producer.send_and_wait(physical(HELPDESK_REQUESTS, self.system.prefix),
                                         body, key=key, headers=self.system.signer.kafka_headers(
                                             HELPDESK_REQUESTS, body))
        finally:
            await producer.stop()

    async def post(self, ticket: str, server: str, *, service_id: str | None = None) -> None:
        answer = await post_ticket(self.system.intake_url, _request(
            self.estate, ticket, service_id or f"SRV-{self.estate.run}-{server}"),
            signer=self.system.signer)
        assert answer.status == 202, answer.body

    async def diagnose_again(self) -> None:
        """The scenarios run the diagnostics runbook on two servers at once, so each step's
        series is first scraped at 2 and rate() over it shows nothing: one more run, once
        Prometheus has the first ones, on db-01 (two earlier tickets: no review asked)."""
        steps = 'intervention_runbook_step_duration_seconds_count{runbook="diagnostics"} > 0'
        await eventually(lambda: self.prometheus_has(steps), WAIT_S, interval=0.3,
                         what="the scenarios' diagnostics steps scraped")
        ticket = f"HD-{self.estate.run}-metrics-diag"
        await self.post(ticket, "db", service_id=self.estate.server("failing_disk").service_id)
        progress = self.bus.ticket(ticket)
        await eventually(lambda: bool(progress.of(InterventionCompleted)), WAIT_S, interval=0.3,
                         what=f"{ticket} diagnosed over SSH ({progress.label()})")

    async def publish_twice(self, ticket: str, server: str) -> None:
        sealed = self.sealed(ticket, server)
        for _ in range(2):  # the same bytes twice: a helpdesk integration's retry
            await publish_request(sealed, bootstrap=self.system.bootstrap,
                                  prefix=self.system.prefix, signer=self.system.signer)

    async def step_of(self, ticket: str) -> str:
        progress = self.bus.ticket(ticket)
        await eventually(lambda: bool(progress.of(ManualStepRequested)), WAIT_S, interval=0.3,
                         what=f"{ticket} asks an engineer for a console step "
                              f"({progress.label()})")
        step: str = progress.of(ManualStepRequested)[0].step_id
        # Both of its pages are in the room before the engineer acknowledges them.
        posted = (f"🆕 New ticket {ticket} ", f"🛠 Manual step {step} on {ticket} ")

        def paged() -> bool:
            texts = self.on_call.bot_texts()
            return all(any(t.startswith(p) for t in texts) for p in posted)

        await eventually(lambda: asyncio.to_thread(paged), WAIT_S, interval=0.3,
                         what=f"{ticket}'s pages posted in the on-call room")
        return step

    async def acknowledge(self, ticket: str) -> None:
        progress = self.bus.ticket(ticket)
        await asyncio.to_thread(self.on_call.say, f"ack {ticket}")
        await eventually(lambda: len(progress.of(EngineerAcknowledged)) >= 2, WAIT_S,
                         interval=0.3, what=f"the engineer's ack of {ticket}'s two pages")

    async def report_done(self, ticket: str, step: str) -> None:
        progress = self.bus.ticket(ticket)
        await asyncio.to_thread(self.on_call.say, f"done {ticket} {step} checked on the console")
        await eventually(lambda: bool(progress.of(InterventionCompleted)), WAIT_S, interval=0.3,
                         what=f"{ticket} completed after the engineer's report "
                              f"({progress.label()})")

    async def run(self) -> None:
        first, second = self.consoles
        await self.import_servers()
        await self.dead_letter()
        await self.post(self.datacenter, "dc")
        await self.post(first, "kvm")
        first_step = await self.step_of(first)
        # Each second occurrence only once Prometheus scraped the first.
        started = 'intervention_interventions_started_total{access_method="ipkvm"} > 0'
        await eventually(lambda: self.prometheus_has(started), WAIT_S, interval=0.3,
                         what="the first console start scraped")
        await self.publish_twice(second, "kvm")
        second_step = await self.step_of(second)
        await self.acknowledge(first)
        acks = 'intervention_acknowledgements_total{page_kind=~"new_ticket|manual_step"} > 0'
        await eventually(lambda: self.prometheus_has(acks, 2), WAIT_S, interval=0.3,
                         what="the first acknowledgements scraped")
        await self.acknowledge(second)
        await self.report_done(first, first_step)
        completed = 'intervention_interventions_completed_total{access_method="ipkvm"} > 0'
        await eventually(lambda: self.prometheus_has(completed), WAIT_S, interval=0.3,
                         what="the first console completion scraped")
        await self.report_done(second, second_step)
        await self.diagnose_again()


def _observe(prometheus: PrometheusServer, start: float) -> Observed:
    end = time.time()
    observed = Observed()
    for target in TARGETS:
        observed.panels[target] = prometheus.query_range(target.expr, start=start, end=end,
                                                         step=STEP_S)
    for _, selector in SELECTORS:
        text = selector_text(selector)
        if text not in observed.selectors:
            observed.selectors[text] = prometheus.query_range(text, start=start, end=end,
                                                              step=STEP_S)
    observed.targets = prometheus.targets()
    observed.rule_groups = prometheus.rule_groups()
    return observed


@pytest.fixture(scope="module")
async def observed(prometheus: PrometheusServer, submitted: Submitted, bus: BusRecorder,
                   system: System, estate: Estate, on_call: OnCallRoom) -> Observed:
    """The scenarios settled, the additions made; then every panel over the whole run, once
    all show data (or :data:`SETTLE_S` passed: the tests then name what is missing)."""
    first = min((r.timestamp_ms / 1000 for r in bus.records
                 if r.key is not None and r.key.decode(errors="replace")
                 in {submitted.ticket(k) for k in submitted.scenarios}), default=math.inf)
    if first < prometheus.started_at:
        pytest.fail("the scenarios were submitted before Prometheus started: run this module "
                    "first (as in file order), or alone")
    began = time.monotonic()
    await Additions(system, estate, bus, on_call, prometheus).run()
    deadline = time.monotonic() + SETTLE_S
    while True:
        result = await asyncio.to_thread(_observe, prometheus, prometheus.started_at)
        if not result.missing() or time.monotonic() > deadline:
            break
        await asyncio.sleep(2)
    table = result.table()
    (system.workdir / "dashboard-panels.txt").write_text(table, encoding="utf-8")
    print(f"\nadditions and settling took {time.monotonic() - began:.0f}s\n{table}")
    return result


# --- the tests ---------------------------------------------------------------------------------


def test_prometheus_scrapes_the_four_services_and_evaluates_the_rules(
        observed: Observed) -> None:
    assert {t["labels"]["job"] for t in observed.targets} == SERVICES
    for target in observed.targets:
        assert target["health"] == "up", target
    groups = {g["name"]: g for g in observed.rule_groups}
    for file in sorted(catalogue.RULES.glob("*.yml")):
        for group in yaml.safe_load(file.read_text(encoding="utf-8"))["groups"]:
            assert group["name"] in groups, (file.name, group["name"], sorted(groups))
            for rule in groups[group["name"]]["rules"]:
                assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
    assert "intervention:sla_error_ratio:rate1h" in catalogue.recording_rules()


@pytest.mark.parametrize("target", TARGETS, ids=[f"{t.panel}/{t.ref}" for t in TARGETS])
def test_every_panel_query_shows_a_nonzero_value(observed: Observed,
                                                 target: catalogue.Target) -> None:
    series = observed.panels[target]
    assert series, f"no data: {target.expr}"
    if target.panel in ZERO_IN_A_HEALTHY_RUN:
        assert shows_data(series, zero_allowed=True), f"only NaN: {target.expr}"
        return
    assert peak(series) > 0, (
        f"{target.panel}: only zero or NaN over the run: {target.expr}\n"
        f"{[(s.labels, s.peak()) for s in series]}")


@pytest.mark.parametrize(("target", "selector"), SELECTORS,
                         ids=[f"{t.panel}/{selector_text(s)}" for t, s in SELECTORS])
def test_every_panel_metric_has_a_nonzero_series(observed: Observed, target: catalogue.Target,
                                                 selector: catalogue.Selector) -> None:
    series = observed.selectors[selector_text(selector)]
    assert series, f"{target.panel}: no series matches {selector_text(selector)}"
    if selector_key(selector) in ZERO_SELECTORS:
        assert shows_data(series, zero_allowed=True), selector_text(selector)
        return
    assert peak(series) > 0, (
        f"{target.panel}: every series of {selector_text(selector)} stayed at zero: "
        f"{[(s.labels, s.peak()) for s in series]}")
