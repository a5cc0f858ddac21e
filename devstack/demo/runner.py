"""``intervene demo``: the whole procedure on this machine, from a fresh install to a table
of settled tickets.

In order: install what is missing (system packages for the demo servers, Synapse), start
what is not running (Kafka and FerretDB through the local stack), the topics and the dev key
set, a Synapse with an on-call room, the three demo servers, the customer's inventory and
vault key and the on-call engineer, then the four services (through the local stack, so
``intervene status`` and ``intervene down`` know them). Then every demo ticket is submitted
through its door and a live table follows each one until all have settled; the on-call
engineer acknowledges the hardware page from the Matrix room on the way.

Everything the demo starts or creates is recorded in ``var/demo/manifest.json`` as it
happens (:mod:`devstack.demo.manifest`). At the end, on Ctrl-C, on SIGTERM or on any error
the demo removes exactly those things — parts that were already running are left alone.
``--keep`` leaves them running; ``intervene demo --stop`` removes them later.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from devstack import localstack
from devstack.demo import DEFAULT_TIMEOUT_S, rescue_lab, targets
from devstack.demo.chat import OnCallRoom, open_on_call_room
from devstack.demo.estate import Estate, build_estate
from devstack.demo.helpdesk import post_ticket, publish_sealed
from devstack.demo.manifest import Manifest
from devstack.demo.operator import helpdesk_signer, set_up_customer
from devstack.demo.progress import BusRecorder
from devstack.demo.scenarios import SCENARIOS, Scenario
from devstack.demo.synapse import start_homeserver, synapse_installed
from devstack.demo.table import Display, Row
from schemas.events import EngineerAcknowledged, HardwareEscalated

# Service settings for the demo: a lock-out is given up on after 5 s (production: 15 s),
# a restarted service is watched for 1 s (production: 3 s).
SERVICE_ENV = {"EXECUTOR_CONNECT_TIMEOUT_S": "5", "EXECUTOR_SERVICE_SETTLE_S": "1",
               "NOTIFIER_DELIVERY_ROUND_DELAY_S": "1"}


class DemoError(RuntimeError):
    """The demo cannot go on; the message says why and what to do."""


def demo_dir() -> Path:
    return localstack.var_dir() / "demo"


def manifest_path() -> Path:
    return demo_dir() / "manifest.json"


@dataclass
class Demo:
    out: TextIO
    keep: bool
    timeout_s: float
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    manifest: Manifest = field(default_factory=lambda: Manifest(manifest_path()))
    began: float = field(default_factory=time.monotonic)

    def say(self, line: str = "") -> None:
        self.out.write(line + "\n")
        self.out.flush()

    @property
    def prefix(self) -> str:
        return os.environ.get("KAFKA_TOPIC_PREFIX", "")


# --- entry points ---------------------------------------------------------------------------


def run_demo(*, out: TextIO = sys.stdout, keep: bool = False,
             timeout_s: float = DEFAULT_TIMEOUT_S) -> int:
    with _single_demo():
        adopted = _stop_leftovers(out)
        demo = Demo(out=out, keep=keep, timeout_s=timeout_s)
        for entry in adopted:  # still running, and still the demo's to stop
            demo.manifest.add(**entry)
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        interrupted = False
        try:
            return _run(demo)
        except KeyboardInterrupt:
            interrupted = True
            demo.say("\ninterrupted: stopping everything the demo started")
            return 130
        except (DemoError, localstack.StackError, RuntimeError, OSError,
                subprocess.SubprocessError) as exc:
            demo.say(f"\ndemo failed: {exc}")
            return 2
        finally:
            signal.signal(signal.SIGTERM, previous)
            if interrupted or not keep or sys.exc_info()[0] is not None:
                _tear_down(demo)
            else:
                _kept(demo)


def _stop_leftovers(out: TextIO) -> list[dict[str, Any]]:
    """Stop what an earlier ``--keep`` demo left, except the Kafka and FerretDB it started:
    those are taken over by this run (restarting them would only cost time). Services are
    restarted, since they were configured for the earlier demo's chat."""
    leftovers = Manifest(manifest_path())
    if not leftovers.entries:
        return []
    infrastructure = {c.name for c in localstack.infrastructure()}
    adopted = [e for e in leftovers.entries
               if e["kind"] == "component" and e["name"] in infrastructure]
    leftovers.entries = [e for e in leftovers.entries if e not in adopted]
    out.write("an earlier demo left parts running; stopping them first:\n")
    for line in leftovers.undo():
        out.write(f"  {line}\n")
    return adopted


def stop_demo(*, out: TextIO = sys.stdout) -> int:
    with _single_demo():
        manifest = Manifest(manifest_path())
        if not manifest.entries:
            out.write("no demo is running (nothing recorded in "
                      f"{manifest_path()})\n")
            return 0
        for line in manifest.undo():
            out.write(f"  {line}\n")
        out.write("demo stopped\n")
        return 0


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _single_demo() -> Iterator[None]:
    """One demo at a time on a machine: a second would stop the first one's parts."""
    lock_path = demo_dir() / "lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DemoError("another `intervene demo` is running on this machine") from None
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# --- the run ----------------------------------------------------------------------------------


def _run(demo: Demo) -> int:
    demo.say(f"OS Intervention demo {demo.run}: the whole procedure on this machine")
    demo.say("\n== prerequisites")
    _ensure_prerequisites(demo)
    demo.say("\n== local stack")
    bootstrap = _start_infrastructure(demo)
    demo.say(localstack.ensure_dev_keys())
    demo.say("\n== chat: Synapse with an on-call room")
    on_call = _start_chat(demo)
    demo.say("\n== the customer's servers")
    _ensure_lab_image(demo)
    estate = build_estate(demo.manifest, run=demo.run, account_id=f"ACC-DEMO-{demo.run}")
    for server in estate.servers.values():
        demo.say(f"  {server.service_name:<8} {server.service_id:<18} "
                 f"{server.host}:{server.port:<6} {server.note}")
    demo.say(f"  customer admin login: {estate.admin.name} (password only in the tickets)")
    demo.say("\n== the provider's records")
    workdir = demo_dir() / f"run-{demo.run}"
    demo.manifest.add("path", path=str(workdir))
    for line in set_up_customer(estate, {}, workdir=workdir, on_call=on_call):
        demo.say(f"  {line}")
    demo.say("\n== services")
    os.environ.update(SERVICE_ENV)
    # Secrets only where they are used: the provider API's token to the executor alone, the
    # chat bot's password to the notifier alone (not to this process or its other children).
    _start_services(demo, {"executor": estate.executor_env(),
                           "notifier": on_call.notifier_env()})
    demo.say("\n== tickets")
    return asyncio.run(_tickets(demo, estate, on_call, bootstrap))


def _ensure_prerequisites(demo: Demo) -> None:
    if os.geteuid() != 0:
        raise DemoError("the demo needs root: it creates throwaway users, sshd processes and "
                        "a network namespace for the demo servers (run it with sudo)")
    installed = targets.install_missing_packages()
    if installed:
        demo.say(f"  installed {', '.join(installed)} (apt-get)")
    if not synapse_installed():
        demo.say("  installing matrix-synapse (pip) for the on-call chat")
        done = subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                               "matrix-synapse>=1.120"], capture_output=True, text=True,
                              check=False)
        if done.returncode != 0:
            raise DemoError(f"pip install matrix-synapse failed: {done.stderr.strip()[-500:]}")
    reason = targets.available(netns=True) or rescue_lab.available()
    if reason is not None:
        raise DemoError(f"the demo servers cannot run here: {reason}")
    demo.say("  system packages and Synapse present")


def _ensure_lab_image(demo: Demo) -> None:
    """edge-01's disk: built once from this machine's packages, then copied per run."""
    if rescue_lab.image_path().exists():
        return
    demo.say(f"  building the rescue lab's disk image (first run only; kept in "
             f"{rescue_lab.cache_dir()})")
    began = time.monotonic()
    rescue_lab.base_image()
    demo.say(f"  disk image built in {time.monotonic() - began:.0f}s")


def _start_infrastructure(demo: Demo) -> str:
    for comp in localstack.infrastructure():
        rec = comp.record()
        if rec is not None:
            demo.say(f"{comp.name}: already running (pid {rec.pid}), left as it is")
        elif comp.ready():
            demo.say(f"{comp.name}: answering (not started by `intervene`), used as it is")
        else:
            demo.say(comp.start())
            demo.manifest.add("component", name=comp.name)
    bootstrap = localstack.kafka_bootstrap()
    from services.runtime.kafka_admin import ensure_topics

    created = asyncio.run(ensure_topics(bootstrap, prefix=demo.prefix))
    demo.say(f"topics: {len(created)} created" if created else "topics: all present")
    return bootstrap


def _start_chat(demo: Demo) -> OnCallRoom:
    homeserver = start_homeserver(new_session=True)
    demo.manifest.process("synapse", homeserver.process.pid, workdir=homeserver.directory)
    on_call = open_on_call_room(homeserver, run=demo.run)
    demo.say(f"  Synapse {homeserver.url}, room {on_call.room_id}")
    demo.say(f"  bot {on_call.bot.user_id}; engineer {on_call.engineer_name} "
             f"{on_call.engineer.user_id}")
    return on_call


def _start_services(demo: Demo, env: dict[str, dict[str, str]]) -> None:
    """Start the services that are not running, each with its own part of ``env``
    (service name -> settings) on top of this process's environment."""
    for comp in localstack.service_components():
        rec = comp.record()
        if rec is not None:
            # Not ours to restart: it keeps the settings it was started with (it may have no
            # chat, for one), and the demo never stops it.
            demo.say(f"{comp.name}: already running (pid {rec.pid}), used with its own "
                     "settings" + _NOT_THIS_DEMOS.get(comp.name, ""))
            continue
        comp.env.update(env.get(comp.name, {}))
        demo.say(comp.start())
        demo.manifest.add("component", name=comp.name)


# What a service started before the demo misses (`intervene down` first for the full demo).
_NOT_THIS_DEMOS = {
    "notifier": "; it does not page this demo's on-call room (`intervene down` first for the "
                "full demo)",
    "executor": "; it does not know this demo's rescue provider, so edge-01 goes to the "
                "console (`intervene down` first for the full demo)",
}


# --- the tickets -------------------------------------------------------------------------------


async def _tickets(demo: Demo, estate: Estate, on_call: OnCallRoom, bootstrap: str) -> int:
    from services.runtime.keys import default_keys_dir, load_sealing_public

    recorder = BusRecorder(bootstrap, demo.prefix, from_beginning=False)
    await recorder.start()
    try:
        recipient = load_sealing_public(default_keys_dir() / "executor-sealing.pub")
        signer = helpdesk_signer(estate, demo_dir() / f"run-{demo.run}")
        intake = f"http://127.0.0.1:{localstack.INTAKE_API_PORT}"
        rows: list[Row] = []
        scenarios: dict[str, Scenario] = {}
        for scenario in SCENARIOS:
            request = scenario.request(estate)
            ticket = str(request["ticket_id"])
            if scenario.door == "http":
                answer = await post_ticket(intake, request, signer=signer)
                door = f"POST /v1/tickets -> {answer.status}"
            else:
                await publish_sealed(request, recipient=recipient, bootstrap=bootstrap,
                                     prefix=demo.prefix, signer=signer)
                door = "sealed, on helpdesk.ticket-requests"
            demo.say(f"  {ticket:<24} {scenario.title:<38} {door}")
            rows.append(Row(ticket_id=ticket, scenario=scenario.title,
                            submitted_at=time.monotonic()))
            scenarios[ticket] = scenario
        demo.say("")
        engineer = Engineer(on_call)
        stalled = await _follow(demo, recorder, rows, scenarios, engineer)
        return await _summary(demo, recorder, rows, scenarios, stalled, engineer, estate)
    finally:
        await recorder.stop()


async def _follow(demo: Demo, recorder: BusRecorder, rows: list[Row],
                  scenarios: dict[str, Scenario], engineer: Engineer) -> list[str]:
    """Redraw until every ticket settled (and the engineer's ack is in), or the timeout."""
    display = Display(demo.out)
    deadline = time.monotonic() + demo.timeout_s
    while True:
        now = time.monotonic()
        for row in rows:
            progress = recorder.ticket(row.ticket_id)
            if row.settled_at is None and progress.settled():
                row.settled_at = now
            if progress.of(HardwareEscalated):
                await engineer.take_hardware_page(row.ticket_id)
        display.update(rows, recorder.tickets)
        waiting_ack = engineer.waiting(recorder)
        pending = [r.ticket_id for r in rows if r.settled_at is None]
        if (not pending and not waiting_ack) or now > deadline:
            for row in rows:
                progress = recorder.ticket(row.ticket_id)
                row.verdict = ("as expected" if row.settled_at is not None and
                               scenarios[row.ticket_id].met(progress.phase, progress.outcome)
                               else "NOT AS EXPECTED")
            display.final(rows, recorder.tickets)
            return pending + waiting_ack
        recorder.arrived.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(recorder.arrived.wait(), 0.5)


class Engineer:
    """The on-call engineer, acknowledging hardware pages from the room as a person would:
    once the bot's page is there, ``ack <ticket>`` in the room."""

    ACK_WAIT_S = 30.0  # after this the demo stops waiting for the acknowledgement

    def __init__(self, on_call: OnCallRoom) -> None:
        self.on_call = on_call
        self.sent: dict[str, float] = {}
        self._looked: dict[str, float] = {}

    async def take_hardware_page(self, ticket_id: str) -> None:
        now = time.monotonic()
        if ticket_id in self.sent or now - self._looked.get(ticket_id, 0.0) < 1.0:
            return
        self._looked[ticket_id] = now  # reading the room is an HTTP call: once a second
        if await asyncio.to_thread(self.on_call.hardware_page_posted, ticket_id):
            await asyncio.to_thread(self.on_call.say, f"ack {ticket_id}")
            self.sent[ticket_id] = time.monotonic()

    def waiting(self, recorder: BusRecorder) -> list[str]:
        """Acks sent whose EngineerAcknowledged has not arrived (and is still worth a wait)."""
        now = time.monotonic()
        return [t for t, at in self.sent.items()
                if not recorder.ticket(t).of(EngineerAcknowledged) and now - at < self.ACK_WAIT_S]


# Which part to look at when a ticket stops in a phase.
_STALL_HINTS = {
    "waiting": "intake never published TicketSubmitted/TicketRejected: see var/log/intake.log",
    "submitted": "auth never decided: see var/log/auth.log",
    "authorized": "the executor never started: see var/log/executor.log and "
                  "`intervene executor claims`",
    "started": "the runbook is still running or stuck: see var/log/executor.log and "
               "`intervene executor claims`",
    "rescue": "the rescue boot, repair or boot back is still running or stuck: see "
              "var/log/executor.log, `intervene executor claims` and the provider stand-in's "
              "log",
}


async def _summary(demo: Demo, recorder: BusRecorder, rows: list[Row],
                   scenarios: dict[str, Scenario], stalled: list[str],
                   engineer: Engineer, estate: Estate) -> int:
    unexpected = []
    for row in rows:
        progress = recorder.ticket(row.ticket_id)
        if row.ticket_id in stalled:
            continue
        if not scenarios[row.ticket_id].met(progress.phase, progress.outcome):
            unexpected.append(row.ticket_id)
    if stalled:
        demo.say(f"\n{len(stalled)} ticket(s) did not settle within {demo.timeout_s:.0f}s:")
        for ticket in stalled:
            progress = recorder.ticket(ticket)
            quiet = time.monotonic() - (progress.changed or time.monotonic())
            if progress.untold():
                why = ("the notifier has not told the customer about "
                       f"{', '.join(e.event_type for e in progress.untold())}: "
                       "see var/log/notifier.log")
            elif progress.of(HardwareEscalated) and not progress.of(EngineerAcknowledged):
                why = ("the notifier never paged the room about the hardware escalation, or "
                       "did not answer the engineer's ack: see var/log/notifier.log")
            else:
                why = _STALL_HINTS.get(progress.phase, "see the service logs in var/log")
            demo.say(f"  {ticket}: {progress.label()} (last event {progress.last_event()}, "
                     f"{quiet:.0f}s ago): {why}")
    for ticket in unexpected:
        progress = recorder.ticket(ticket)
        demo.say(f"  {ticket}: ended as '{progress.label()}', expected "
                 f"{scenarios[ticket].expectation_text()}")
    for ticket in engineer.sent:
        acks = recorder.ticket(ticket).of(EngineerAcknowledged)
        if acks:
            demo.say(f"chat: {acks[0].display_name} acknowledged the hardware page of {ticket} "
                     f"from the Matrix room (EngineerAcknowledged)")
        else:
            demo.say(f"chat: the engineer's `ack {ticket}` brought no EngineerAcknowledged "
                     "(see var/log/notifier.log)")
    audit = await _verify_audit([r.ticket_id for r in rows])
    demo.say(f"\naudit: {audit}")
    _where_to_look(demo, rows, engineer.on_call, estate)
    demo.say(f"\ndemo finished in {time.monotonic() - demo.began:.0f}s: {len(rows)} tickets, "
             f"{len(rows) - len(stalled) - len(unexpected)} as expected")
    return 0 if not stalled and not unexpected else 1


async def _verify_audit(tickets: list[str]) -> str:
    from pymongo import AsyncMongoClient

    from services.runtime.audit import verify_chain
    from services.runtime.settings import RuntimeSettings

    settings = RuntimeSettings()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(localstack.mongodb_uri(),
                                                                tz_aware=True)
    try:
        db = client[settings.mongodb_database]
        reports = [await verify_chain(db, t) for t in tickets]
    finally:
        await client.close()
    records = sum(r.records_checked for r in reports)
    broken = [str(b) for r in reports for b in r.broken]
    if broken:
        return f"hash chain BROKEN: {'; '.join(broken)}"
    return f"hash chains intact for {len(tickets)} tickets ({records} records)"


def intervene_command() -> str:
    """How the reader types ``intervene``: the bare name when it is this one on PATH (an
    activated virtual environment), else this environment's script: ``make run`` starts
    ``.venv/bin/intervene`` without activating ``.venv``."""
    script = Path(sys.prefix) / "bin" / "intervene"
    found = shutil.which("intervene")
    if not script.exists() or (found is not None and Path(found).resolve() == script.resolve()):
        return "intervene"
    with contextlib.suppress(ValueError):
        return str(script.relative_to(Path.cwd()))
    return str(script)


def _where_to_look(demo: Demo, rows: list[Row], on_call: OnCallRoom, estate: Estate) -> None:
    env = " ".join(f"{k}={os.environ[k]}" for k in ("MONGODB_DATABASE", "KAFKA_TOPIC_PREFIX")
                   if os.environ.get(k))
    run = f"{env} {intervene_command()}" if env else intervene_command()
    first = rows[0].ticket_id
    disk = next((r.ticket_id for r in rows if r.ticket_id.endswith("-disk")), first)
    lockout = next((r.ticket_id for r in rows if r.ticket_id.endswith("-lockout")), first)
    logs = localstack.var_dir() / "log"
    demo.say("\nwhere to look")
    demo.say(f"  {run} status {first:<26} the ticket's timeline (from the audit log)")
    demo.say(f"  {run} trace {disk:<27} one trace: four services, every SSH step")
    demo.say(f"  {run} status {lockout:<26} edge-01 in rescue: the firewall repaired on its "
             "disk, the host key read from it and pinned")
    demo.say(f"  {run} audit verify {'':<20} every ticket's hash chain")
    demo.say(f"  {run} executor claims {'':<17} claims handed over to rescue or an engineer")
    demo.say(f"  logs: {logs}/{{intake,auth,executor,notifier}}.log; "
             f"Synapse: {on_call.homeserver.log_path}")
    demo.say(f"  edge-01: {estate.lab.workdir}/{{console,rescue,provider}}.log (its boots, the "
             "rescue system, the provider API stand-in)")
    demo.say(f"  chat: {on_call.homeserver.url} room {on_call.room_id}, log in as "
             f"{on_call.engineer.user_id} / {on_call.engineer.password} (demo-only account)")
    if not demo.keep:
        demo.say("  (Synapse, edge-01 and their logs are removed when the demo stops; "
                 "`intervene demo --keep` leaves them to look at)")


# --- the end ---------------------------------------------------------------------------------


def _tear_down(demo: Demo) -> None:
    if not demo.manifest.entries:
        return
    demo.say("\n== stopping what the demo started")
    # Signals while tearing down would leave half of it behind: finish first.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        for line in demo.manifest.undo():
            demo.say(f"  {line}")
    finally:
        signal.signal(signal.SIGINT, previous)


def _kept(demo: Demo) -> None:
    demo.say("\n--keep: the stack, Synapse, the demo servers and edge-01's rescue provider "
             "stand-in stay up; "
             "`intervene demo --stop` removes what the demo started")
