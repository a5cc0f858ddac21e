"""``intervene seal`` and ``intervene submit``: the helpdesk's side of intake.

``seal`` prints credentials sealed to the executor's public key - the only form the
``helpdesk.ticket-requests`` topic accepts. The secret is read from a prompt without echo,
from standard input or from a key file, never from the command line (where ``ps`` and
shell history would keep it), and is never printed.

``submit FILE`` sends a §4.1 request document: to intake's HTTP API (default; plaintext
credentials are fine there, intake seals them), or with ``--via kafka`` straight onto the
helpdesk topic, sealing plaintext credentials first. Either way it is signed as a registered
integration (``--integration`` or ``$INTAKE_INTEGRATION``; the secret from
``$INTAKE_INTEGRATION_SECRET`` or ``--secret-file``, never the command line) acting for the
helpdesk customer ``--customer`` (``$INTAKE_CUSTOMER``), whom the integration's account map
must map to the request's ``account_id``.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from services.intake.signing import Signer

if TYPE_CHECKING:
    from services.runtime.settings import RuntimeSettings

EXIT_OK, EXIT_REFUSED, EXIT_ERROR = 0, 1, 2


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    seal = sub.add_parser(
        "seal", help="seal OS credentials (or a request's) for the helpdesk topic",
        description=(
            "Seal credentials to the executor's public key and print the JSON to use as a "
            "request's `credentials`. The secret comes from a no-echo prompt, from stdin "
            "(--password-stdin) or from --private-key-file; it is never printed."
        ),
    )
    seal.add_argument("--username", help="OS username (prompted for when omitted)")
    secret = seal.add_mutually_exclusive_group()
    secret.add_argument("--password-stdin", action="store_true",
                        help="read the password from standard input (one line)")
    secret.add_argument("--private-key-file", type=Path,
                        help="seal this OpenSSH private key file instead of a password")
    secret.add_argument("--request", type=Path, metavar="FILE",
                        help="seal the plaintext credentials inside this request document "
                             "and print the whole request")
    seal.add_argument("--public-key", type=Path,
                      help="the executor's public sealing key file (default: "
                           "executor-sealing.pub in $INTERVENTION_KEYS_DIR or var/keys)")
    seal.set_defaults(func=_cmd_seal)

    submit = sub.add_parser(
        "submit", help="submit a ticket request (JSON file) to intake",
        description="Send a helpdesk request document to intake's HTTP API, or seal and "
                    "publish it on the helpdesk topic (--via kafka).",
    )
    submit.add_argument("file", type=Path, help="the request document (JSON, §4.1); - for stdin")
    submit.add_argument("--via", choices=("http", "kafka"), default="http")
    submit.add_argument("--url", help="intake's base URL (default: $INTAKE_URL, else "
                                      "http://$INTAKE_HTTP_HOST:$INTAKE_HTTP_PORT)")
    submit.add_argument("--public-key", type=Path, help="for --via kafka: the public "
                        "sealing key file (default as for `intervene seal`)")
    submit.add_argument("--integration", default=os.environ.get("INTAKE_INTEGRATION"),
                        help="the integration to sign as (default: $INTAKE_INTEGRATION)")
    submit.add_argument("--secret-file", type=Path, help="file holding the integration's "
                        "secret (default: $INTAKE_INTEGRATION_SECRET)")
    submit.add_argument("--customer", default=os.environ.get("INTAKE_CUSTOMER", ""),
                        help="the helpdesk's authenticated customer identity, e.g. client:17 "
                             "(default: $INTAKE_CUSTOMER)")
    submit.set_defaults(func=_cmd_submit)


# --- seal ------------------------------------------------------------------------------


def _read_secret_line(stream: TextIO) -> str:
    line = stream.readline()
    return line[:-1] if line.endswith("\n") else line


def _cmd_seal(args: argparse.Namespace) -> int:
    from services.intake.sealing import load_recipient, seal_credentials, seal_request
    from services.runtime.keys import KeyFileError

    try:
        recipient = load_recipient(args.public_key)
        if args.request is not None:
            document = _load_document(args.request)
            print(json.dumps(seal_request(document, recipient=recipient), indent=2,
                             ensure_ascii=False))
            return EXIT_OK
        username = args.username or input("OS username: ").strip()
        if args.private_key_file is not None:
            sealed = seal_credentials(username, private_key=args.private_key_file.read_text(
                encoding="utf-8"), recipient=recipient)
        else:
            if args.password_stdin or not sys.stdin.isatty():
                password = _read_secret_line(sys.stdin)
            else:
                password = getpass.getpass("OS password (not echoed): ")
            sealed = seal_credentials(username, password=password, recipient=recipient)
    except (KeyFileError, ValueError, OSError) as exc:
        # These messages name files and fields, never the secret (see sealing.py).
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(json.dumps(sealed.model_dump(mode="json"), indent=2))
    return EXIT_OK


# --- submit ----------------------------------------------------------------------------


def _load_document(path: Path) -> dict[str, Any]:
    text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    document = json.loads(text)
    if not isinstance(document, dict):
        raise ValueError(f"{path}: must hold one JSON object (a ticket request)")
    return document


def intake_url() -> str:
    configured = os.environ.get("INTAKE_URL", "").strip()
    if configured:
        return configured.rstrip("/")
    host = os.environ.get("INTAKE_HTTP_HOST", "127.0.0.1")
    port = os.environ.get("INTAKE_HTTP_PORT", "8080")
    return f"http://{host}:{port}"


def _signer(args: argparse.Namespace) -> Signer:
    if not args.integration:
        raise ValueError("name the integration to sign as: --integration or "
                         "$INTAKE_INTEGRATION (see `intervene integrations add`)")
    if args.secret_file is not None:
        secret = args.secret_file.read_text(encoding="utf-8").strip()
    else:
        secret = os.environ.get("INTAKE_INTEGRATION_SECRET", "").strip()
    if not secret:
        raise ValueError("the integration's secret is needed: $INTAKE_INTEGRATION_SECRET or "
                         "--secret-file (never on the command line)")
    return Signer(integration=args.integration, secret=secret, customer=args.customer)


def _cmd_submit(args: argparse.Namespace) -> int:
    try:
        document = _load_document(args.file)
        signer = _signer(args)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if args.via == "kafka":
        return _submit_kafka(document, args.public_key, signer)
    return _submit_http(document, args.url or intake_url(), signer)


def _submit_http(document: dict[str, Any], url: str, signer: Signer) -> int:
    # The standard library's client: the CLI needs no HTTP dependency beyond the server's.
    payload = json.dumps(document).encode()
    request = urllib.request.Request(  # noqa: S310 - the URL is the operator's own intake
        f"{url}/v1/tickets", data=payload, method="POST",
        headers={"Content-Type": "application/json",
                 **signer.headers("POST", "/v1/tickets", payload)},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"error: intake at {url} did not answer: {type(reason).__name__}", file=sys.stderr)
        return EXIT_ERROR
    try:
        body: Any = json.loads(raw)
    except ValueError:
        body = {"errors": [{"field": "$", "message": f"HTTP {status}"}]}
    if status == 202:
        duplicate = " (duplicate: already accepted)" if body.get("duplicate") else ""
        print(f"accepted: ticket {body['ticket_id']} revision {body['revision']}, "
              f"{body['category']} ({body['scope']}, {body['confidence']} confidence)"
              f"{duplicate}")
        return EXIT_OK
    print(f"refused (HTTP {status}):", file=sys.stderr)
    for error in body.get("errors", []) if isinstance(body, dict) else []:
        print(f"  {error.get('field')}: {error.get('message')}", file=sys.stderr)
    return EXIT_REFUSED if 400 <= status < 500 else EXIT_ERROR


def _submit_kafka(document: dict[str, Any], public_key: Path | None, signer: Signer) -> int:
    from services.intake.sealing import load_recipient, seal_request
    from services.runtime.kafka_security import KafkaConnectError
    from services.runtime.keys import KeyFileError
    from services.runtime.settings import RuntimeSettings, SettingsError

    try:
        # KAFKA_BOOTSTRAP_SERVERS and the TLS/SASL variables, validated like a service's.
        settings = RuntimeSettings()
    except (SettingsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    try:
        sealed = seal_request(document, recipient=load_recipient(public_key))
    except (KeyFileError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    try:
        topic = asyncio.run(publish_request(sealed, settings=settings, signer=signer))
    except KafkaConnectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(f"published ticket {sealed.get('ticket_id')} revision {sealed.get('revision')} "
          f"to {topic}; intake answers on intervention.ticket-submitted / -rejected")
    return EXIT_OK


async def publish_request(document: dict[str, Any], *, bootstrap: str | None = None,
                          prefix: str | None = None,
                          settings: RuntimeSettings | None = None,
                          signer: Signer | None = None) -> str:
    """Publish a (sealed) request document on the helpdesk topic, keyed by its ticket id,
    signed by ``signer`` in Kafka headers (intake dead-letters unsigned messages).

    ``settings`` (default: from the environment) give the bootstrap servers and the Kafka
    TLS/SASL options; ``bootstrap`` overrides the servers only.
    """
    from aiokafka import AIOKafkaProducer

    from schemas.topics import HELPDESK_REQUESTS, physical
    from services.runtime.kafka_security import kafka_client_options, start_client
    from services.runtime.settings import RuntimeSettings

    settings = settings if settings is not None else RuntimeSettings()
    options = kafka_client_options(settings)
    if bootstrap:
        options["bootstrap_servers"] = bootstrap
    topic = physical(HELPDESK_REQUESTS, prefix)
    producer = AIOKafkaProducer(**options, enable_idempotence=True)
    await start_client(producer.start, producer.stop, options["bootstrap_servers"], settings)
    try:
        key = str(document.get("ticket_id", "")).encode("utf-8", "surrogatepass")
        body = json.dumps(document).encode()
        headers = [] if signer is None else signer.kafka_headers(HELPDESK_REQUESTS, body)
        await producer.send_and_wait(topic, body, key=key, headers=headers)
    finally:
        await producer.stop()
    return topic
