"""What signing and checking a signed fact costs per event, in this process.

Prints the median and best of 5 rounds of N calls, in microseconds per event, of:
- ``sign_fact`` (canonical JSON of every field but the signature, Ed25519 sign, copy), what
  the notifier adds to each EngineerAcknowledged / ManualStepCompleted it publishes;
- ``verify_fact`` (canonical JSON again, Ed25519 verify), what the executor and the notifier
  add to each one they consume;
- ``parse_event`` of the same message, the decode every consumer already does, for scale;
- the same three for a TicketSubmitted (intake signs, auth verifies), a larger event.

Usage: ``python bench/bench_facts.py [N]`` (no broker or store needed).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a plain script
sys.path.insert(0, str(ROOT / "tests" / "unit" / "auth"))  # the tests' ticket factory

from auth_factories import ticket  # noqa: E402

from schemas.events import ManualStepCompleted, SignedEvent  # noqa: E402
from schemas.registry import encode, parse_event  # noqa: E402
from services.runtime.crypto import SigningKey, build_keyring  # noqa: E402
from services.runtime.facts import sign_fact, verify_fact  # noqa: E402


def per_call_us(call: Callable[[], object], n: int, rounds: int = 5) -> tuple[float, float]:
    """(median, best) over ``rounds`` of ``n`` calls, in microseconds per call."""
    results = []
    for _ in range(rounds):
        began = time.perf_counter()
        for _ in range(n):
            call()
        results.append((time.perf_counter() - began) / n * 1e6)
    return statistics.median(results), min(results)


def measure(event: SignedEvent, n: int) -> None:
    key = SigningKey.generate(key_id_prefix=event.producer)
    trusted = build_keyring([key.verify_key])
    signed = sign_fact(event, key)
    raw = encode(signed)
    model = type(event)
    print(f"{event.EVENT_TYPE}: {len(raw)} bytes on the wire, {len(signed.signed_bytes())} "
          f"signed; {n} calls x 5 rounds")
    for name, call in (("sign_fact", lambda: sign_fact(event, key)),
                       ("verify_fact", lambda: verify_fact(signed, trusted)),
                       ("parse_event (for scale)", lambda: parse_event(raw, model))):
        median, best = per_call_us(call, n)
        print(f"  {name:<24} median {median:7.1f} us/event   best {best:7.1f} us/event")


def main(n: int) -> None:
    measure(ManualStepCompleted.new(
        ticket_id="T-1001", revision=1, occurred_at=datetime.now(UTC), step_id="r1-review",
        status="done", notes="checked with the account owner " * 6, engineer_id="eng-marta",
        display_name="Marta Rossi", channel="matrix"), n)
    measure(ticket(ticket_id="HD-BENCH-1", at=datetime.now(UTC), account_id="ACC-1",
                   server={"service_id": "SRV-0001"}), n)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5000)
