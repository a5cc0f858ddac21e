"""The shipped WHMCS hook, run in PHP, against a local HTTP server standing in for intake.

WHMCS itself cannot run here (it is licensed, ionCube-encoded software), so the PHP harness
below stands in for the parts the hook touches: ``add_hook``, ``localAPI`` (``GetTicket``,
``GetClientsDetails``), ``logActivity`` and ``WHMCS\\Database\\Capsule`` over the two
custom-field tables. Its fixture data follow WHMCS's developer documentation
(WHMCS/developer-docs: ``hooks-reference/ticket.md`` for the hook variables,
``api-reference/getticket.md`` and ``getclientsdetails.md`` for the API answers). What is
real: PHP running ``deploy/helpdesk/whmcs/os_intervention.php`` unchanged, its curl POST,
and on the Python side :mod:`services.intake.signing` and
:func:`services.intake.adapters.from_whmcs` reading what it sent.

Needs Debian's ``php-cli`` and ``php-curl``; without them these tests fail (never skip).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from schemas import parse_helpdesk_request
from services.intake import signing
from services.intake.adapters import from_whmcs
from services.intake.validation import check_request

HOOK = Path(__file__).resolve().parents[2] / "deploy" / "helpdesk" / "whmcs" / "os_intervention.php"
SECRET = "whmcs-integration-secret-7f3a"
INTEGRATION = "whmcs-main"
PATH = "/v1/webhooks/whmcs"
CANARY = "Canary-Whmcs-Hook-5150"
STATEMENT = "I authorize the provider's support to perform OS-level intervention on this server."

# The hooks' documented variables (hooks-reference/ticket.md).
TICKET_OPEN = {"ticketid": 1234, "ticketmask": "QWE-123456", "userid": 55, "deptid": 2,
               "deptname": "Technical Issues", "subject": "Cannot log in",
               "message": "I forgot the root password of my VPS.", "priority": "High"}
TICKET_USER_REPLY = {"ticketid": 1234, "replyid": 777, "userid": 55, "deptid": 2,
                     "deptname": "Technical Issues", "subject": "Cannot log in",
                     "message": "Still locked out after your reset link.", "priority": "High",
                     "status": "Customer-Reply"}
ADDED_BY_THE_HOOK = {"hook", "ticket", "client", "customfields"}

HARNESS = r"""<?php
// Stand-in for the parts of WHMCS the hook uses. argv: hook file, fixture file, hook name.
namespace WHMCS\Database {
    final class Query
    {
        public function __construct(private array $rows) {}

        public function where(string $column, $value): self
        {
            return new self(array_values(array_filter($this->rows,
                fn ($row) => (string) $row[$column] === (string) $value)));
        }

        public function whereIn(string $column, array $values): self
        {
            $values = array_map('strval', $values);
            return new self(array_values(array_filter($this->rows,
                fn ($row) => in_array((string) $row[$column], $values, true))));
        }

        public function get(array $columns): array
        {
            return array_map(fn ($row) => (object) array_intersect_key($row, array_flip($columns)),
                             $this->rows);
        }
    }

    final class Capsule
    {
        public static array $tables = [];

        public static function table(string $name): Query
        {
            return new Query(self::$tables[$name] ?? []);
        }
    }
}

namespace {
    define('WHMCS', true);
    $fixture = json_decode(file_get_contents($argv[2]), true, 512, JSON_THROW_ON_ERROR);
    \WHMCS\Database\Capsule::$tables = $fixture['tables'];
    $hooks = [];

    function add_hook(string $name, int $priority, callable $callback): void
    {
        $GLOBALS['hooks'][$name][] = $callback;
    }

    function localAPI(string $command, array $data, ?string $admin = null): array
    {
        $key = $command . ':' . ($data['ticketid'] ?? $data['clientid'] ?? '');
        return $GLOBALS['fixture']['api'][$key]
            ?? ['result' => 'error', 'message' => 'not found'];
    }

    function logActivity(string $message): void
    {
        file_put_contents(getenv('HARNESS_LOG'), $message . "\n", FILE_APPEND);
    }

    require $argv[1];
    foreach ($hooks[$argv[3]] ?? [] as $callback) {
        $callback($fixture['vars']);
    }
}
"""


def whmcs_fixture(vars_: dict[str, Any], *, account: str = "ACC-1001",
                  userid: int = 55) -> dict[str, Any]:
    """What WHMCS would hold for ticket #1234 of client 55 in department 2."""
    fields = [  # tblcustomfields: name, fieldtype, department (relid)
        (11, "intervention_server_ip|Server IP address", "text", 2, "203.0.113.10"),
        (12, "intervention_category|What is wrong?", "dropdown", 2,
         "root_password_reset|I cannot log in as root"),
        (13, "intervention_os_username", "text", 2, "root"),
        (14, "intervention_os_password|Root password", "password", 2, CANARY),
        (15, "intervention_authorization|Written authorization", "textarea", 2, STATEMENT),
        (16, "intervention_accepts_backup|I keep my own backups", "tickbox", 2, "on"),
        (17, "intervention_accepts_interruption", "tickbox", 2, "on"),
        (18, "intervention_accepts_data_loss", "tickbox", 2, "on"),
        (19, "intervention_account|Your account number", "text", 2, account),
        (20, "intervention_language", "dropdown", 2, "en|English"),
        (31, "intervention_server_ip", "text", 3, "198.51.100.99"),  # another department's
    ]
    tblcustomfields = [
        {"id": fid, "type": "support", "relid": dept, "fieldname": name, "fieldtype": kind,
         "description": "", "fieldoptions": "", "regexpr": "", "adminonly": "",
         "required": "on", "showorder": "", "showinvoice": "", "sortorder": 0}
        for fid, name, kind, dept, _ in fields
    ] + [{"id": 40, "type": "client", "relid": 0, "fieldname": "intervention_account",
          "fieldtype": "text", "adminonly": ""}]
    tblcustomfieldsvalues = [
        {"fieldid": fid, "relid": 1234, "value": value} for fid, _, _, _, value in fields
    ] + [{"fieldid": 11, "relid": 1235, "value": "192.0.2.1"},   # another ticket's value
         {"fieldid": 40, "relid": 55, "value": "ACC-3003"}]     # a client field's value
    return {
        "vars": vars_,
        "tables": {"tblcustomfields": tblcustomfields,
                   "tblcustomfieldsvalues": tblcustomfieldsvalues},
        "api": {
            "GetTicket:1234": {  # api-reference/getticket.md, example response's shape
                "result": "success", "ticketid": 1234, "tid": "QWE-123456", "c": "KPqH7yG3",
                "deptid": 2, "deptname": "Technical Issues", "userid": userid,
                "contactid": 0, "name": "Jane Doe", "email": "jane@example.com",
                "requestor_name": "Jane Doe", "requestor_type": "Owner",
                "requestor_email": "jane@example.com", "cc": "",
                "date": "2026-11-22 09:58:00", "subject": "Cannot log in",
                "status": "Customer-Reply", "priority": "High", "admin": "",
                "lastreply": "2026-11-22 10:04:00", "flag": 0, "service": "S88",
                "replies": {"reply": [{"replyid": "0", "userid": userid, "contactid": "0",
                                       "name": "Jane Doe", "email": "jane@example.com",
                                       "date": "2026-11-22 09:58:00",
                                       "message": "I forgot the root password of my VPS.",
                                       "attachment": "", "admin": ""}]},
                "notes": "",
            },
            f"GetClientsDetails:{userid}": {  # api-reference/getclientsdetails.md
                "result": "success",
                "client": {"client_id": userid, "owner_user_id": 9, "userid": userid,
                           "id": userid, "uuid": "f08ea4d1-c578-441a-9b0a-aa3aff8b1acf",
                           "firstname": "Jane", "lastname": "Doe", "fullname": "Jane Doe",
                           "companyname": "", "email": "jane@example.com"},
                "firstname": "Jane", "lastname": "Doe",
            },
        },
    }


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class IntakeStandIn:
    """A local HTTP server in intake's place: records each request, answers ``answer``."""

    url: str
    requests: list[Received] = field(default_factory=list)
    answer: tuple[int, dict[str, Any]] = (202, {"status": "submitted"})


@pytest.fixture
def intake() -> Iterator[IntakeStandIn]:
    stand_in = IntakeStandIn(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            stand_in.requests.append(Received(self.command, self.path, dict(self.headers),
                                              body))
            status, answer = stand_in.answer
            payload = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    stand_in.url = f"http://127.0.0.1:{server.server_port}{PATH}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield stand_in
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def php() -> str:
    found = shutil.which("php")
    if found is None:
        pytest.fail("php-cli is not installed: these tests run the shipped WHMCS hook "
                    "(apt-get install -y php-cli php-curl)")
    modules = subprocess.run([found, "-m"], capture_output=True, text=True, check=True).stdout
    if "curl" not in modules.split():
        pytest.fail("PHP's curl extension is missing (apt-get install -y php-curl)")
    return found


@dataclass
class Run:
    log: str


def run_hook(php: str, tmp_path: Path, intake: IntakeStandIn, hook: str,
             fixture: dict[str, Any], *, departments: str = "2") -> Run:
    secret_file = tmp_path / "whmcs.secret"
    secret_file.write_text(SECRET + "\n")
    secret_file.chmod(0o400)
    config = tmp_path / "whmcs.ini"
    config.write_text(f'url = "{intake.url}"\nintegration = "{INTEGRATION}"\n'
                      f'secret_file = "{secret_file}"\ndepartments = "{departments}"\n'
                      "timeout = 5\n")
    harness = tmp_path / "harness.php"
    harness.write_text(HARNESS)
    data = tmp_path / f"{hook}.json"
    data.write_text(json.dumps(fixture))
    log = tmp_path / "activity.log"
    log.touch()
    subprocess.run(
        [php, str(harness), str(HOOK), str(data), hook],
        env={"PATH": "/usr/bin:/bin", "OS_INTERVENTION_WHMCS_CONFIG": str(config),
             "HARNESS_LOG": str(log)},
        check=True, timeout=60, capture_output=True,
    )
    return Run(log=log.read_text())


def verified(received: Received) -> dict[str, Any]:
    """The body, once the integration signature checks out as intake checks it."""
    assert (received.method, received.path) == ("POST", PATH)
    request = signing.read_headers(received.headers)
    signing.check_fresh(request, now=time.time())
    signing.verify(request, SECRET, method="POST", path=received.path, body=received.body)
    with pytest.raises(signing.SignatureRefused):
        signing.verify(request, "another secret", method="POST", path=received.path,
                       body=received.body)
    assert (request.integration, request.customer) == (INTEGRATION, "client:55")
    body = json.loads(received.body)
    assert isinstance(body, dict)
    return body


def test_shipped_hook_passes_php_lint(php: str) -> None:
    lint = subprocess.run([php, "-l", str(HOOK)], capture_output=True, text=True, check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_shipped_hook_in_stand_in_whmcs_harness_files_open_and_reply_under_one_signed_mask(
        php: str, tmp_path: Path, intake: IntakeStandIn) -> None:
    run_hook(php, tmp_path, intake, "TicketOpen", whmcs_fixture(TICKET_OPEN))
    run_hook(php, tmp_path, intake, "TicketUserReply", whmcs_fixture(TICKET_USER_REPLY))
    assert len(intake.requests) == 2
    opened, replied = (verified(r) for r in intake.requests)
    assert len({signing.read_headers(r.headers).nonce for r in intake.requests}) == 2
    assert set(replied) == set(TICKET_USER_REPLY) | ADDED_BY_THE_HOOK  # no ticketmask
    assert set(opened) == set(TICKET_OPEN) | ADDED_BY_THE_HOOK
    # Only this department's fields, only this ticket's values.
    assert {f["value"] for f in opened["customfields"]}.isdisjoint(
        {"198.51.100.99", "192.0.2.1", "ACC-3003"})

    received = datetime.now(UTC)
    first, reply = (from_whmcs(body, received_at=received) for body in (opened, replied))
    assert first.ticket_id == reply.ticket_id == "QWE-123456"
    assert (first.delivery, reply.delivery) == ("ticket:1234", "reply:777")
    assert first.customers == reply.customers == ("client:55",)
    request = parse_helpdesk_request({**first.with_revision(1), "account_id": "ACC-1001"})
    assert (request.category, str(request.server.ip)) == ("root_password_reset",
                                                          "203.0.113.10")
    assert request.authorization.signed_by == "Jane Doe"
    assert check_request(request, edge="http", now=received) == []
    assert "Still locked out" in reply.document["description"]


def test_stand_in_whmcs_reply_whose_form_names_another_account_yields_only_a_stated_account(
        php: str, tmp_path: Path, intake: IntakeStandIn) -> None:
    run_hook(php, tmp_path, intake, "TicketUserReply",
             whmcs_fixture(TICKET_USER_REPLY, account="ACC-2002"))
    mapped = from_whmcs(verified(intake.requests[0]), received_at=datetime.now(UTC))
    assert mapped.stated_account == "ACC-2002"
    assert mapped.customers == ("client:55",)
    assert "account_id" not in mapped.document


def test_stand_in_whmcs_guest_ticket_and_other_departments_are_not_forwarded(
        php: str, tmp_path: Path, intake: IntakeStandIn) -> None:
    guest = run_hook(php, tmp_path, intake, "TicketOpen",
                     whmcs_fixture({**TICKET_OPEN, "userid": 0}, userid=0))
    run_hook(php, tmp_path, intake, "TicketOpen", whmcs_fixture(TICKET_OPEN), departments="3")
    assert intake.requests == []
    assert "TicketOpen of ticket #1234 not forwarded: not opened by a logged-in client" in (
        guest.log)


def test_stand_in_whmcs_logs_intake_refusal_without_secret_or_field_values(
        php: str, tmp_path: Path, intake: IntakeStandIn) -> None:
    intake.answer = (422, {"errors": [{"field": "account_id", "code": "account_mismatch",
                                       "message": "is not the account of this customer"}]})
    run = run_hook(php, tmp_path, intake, "TicketOpen", whmcs_fixture(TICKET_OPEN))
    assert len(intake.requests) == 1
    assert "TicketOpen of ticket #1234 refused by intake (HTTP 422): account_id:" \
           "account_mismatch" in run.log
    for secret in (SECRET, CANARY, "203.0.113.10"):
        assert secret not in run.log


def test_stand_in_whmcs_ticket_survives_an_unreachable_intake(php: str, tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    nowhere = IntakeStandIn(url=f"http://127.0.0.1:{closed}{PATH}")
    run = run_hook(php, tmp_path, nowhere, "TicketOpen", whmcs_fixture(TICKET_OPEN))  # exit 0
    assert "TicketOpen of ticket #1234 not delivered:" in run.log
    assert SECRET not in run.log
