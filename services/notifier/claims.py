"""Fire-once claims: the compare-and-set every "exactly once" in the notifier rests on.

A claim is a document whose ``_id`` names the thing done once (an alert, an acknowledgement,
a chat post). Inserting it is the compare-and-set: the store's unique ``_id`` lets exactly
one inserter win, across tasks and processes.

Why an insert and not a conditional update: on FerretDB 1.24 (SQLite) a conditional
``update_one({"_id": x, "state": "open"}, ...)`` is a read, then a write, with no lock in
between; measured with 16 concurrent writers, 1 to 12 of them "won" the same document, and
concurrent ``$push`` lost elements. A duplicate ``_id`` insert is refused by SQLite's primary
key every time (30 of 30 trials: exactly one winner). ``_id`` equality is also the only
filter FerretDB pushes down to SQL, so every read here is an index lookup.

A winner that dies before finishing leaves its claim ``claimed``; after ``lease`` anyone may
take it over and finish the work. The take-over is an insert too: every claim state carries
a random ``nonce``, and the takers of a stale claim race to insert
``notifier_claim_takeovers`` ``_id = "<collection>|<key>|<nonce they read>"``; exactly one
inserts it and proceeds (measured: 20 concurrent takers, one winner), and it gives the claim
a new nonce, so a later take-over races for another document. Work done under a claim still
uses ids derived from the claim's key (event ids, Matrix transaction ids): a take-over from
an owner that was slow rather than dead repeats the *same* effect, which downstream
consumers drop as a duplicate (Slack and Telegram posts have no such id, which is why the
take-over itself must have one winner).

Finishing is an insert too (issue 17): :meth:`Claims.complete` inserts
``<collection>_done`` ``_id = key`` with what the work produced, instead of updating the
claim. The claim collections grow with every alert, acknowledgement and chat post, and on
FerretDB an update scans its whole collection while holding the store's single write lock;
an insert costs the same at any size (and rides with the others of its moment,
:mod:`services.runtime.group_commit`). The first completion wins; a claim whose own document
says ``done`` (inserted finished, or completed by a notifier before this) still counts.
Only the rare paths read the ``_done`` document: a claim found taken, :meth:`Claims.get`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from uuid import uuid4

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from services.runtime.group_commit import GroupInsert

ClaimState = Literal["claimed", "done"]
Outcome = Literal["won", "taken_over", "done", "held"]

TAKEOVERS = "notifier_claim_takeovers"
@dataclass(frozen=True, kw_only=True)
class Claim:
    key: str
    outcome: Outcome
    """``won`` (first), ``taken_over`` (the owner's lease ran out), ``done`` (someone finished
    it), ``held`` (someone is doing it now)."""
    data: Mapping[str, Any]

    @property
    def mine(self) -> bool:
        return self.outcome in ("won", "taken_over")


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class Claims:
    def __init__(self, db: AsyncDatabase[dict[str, Any]], collection: str, *,
                 lease: timedelta = timedelta(seconds=60)) -> None:
        self._coll = db[collection]
        # Claims made at once (a burst's page closures, a sweep's alerts) share a round
        # trip; each is still its own insert-wins test-and-set.
        self._inserts = GroupInsert(self._coll)
        self._done = GroupInsert(db[f"{collection}_done"])
        self._takeovers = db[TAKEOVERS]
        self._name = collection
        self.lease = lease

    async def claim(self, key: str, *, now: datetime, data: Mapping[str, Any] | None = None,
                    owner: str = "", done: bool = False) -> Claim:
        """Try to take ``key``. ``data`` is stored with a new claim (who, what for).

        ``done``: a winner has nothing left that a take-over would redo, so the claim is
        inserted finished (one round trip instead of a claim and a :meth:`complete`)."""
        doc = {"_id": key, "state": "done" if done else "claimed", "claimed_at": now,
               "owner": owner, "nonce": uuid4().hex, **(data or {})}
        try:
            await self._inserts.insert(doc)
        except DuplicateKeyError:
            pass
        else:
            return Claim(key=key, outcome="won", data=doc)
        existing = await self.get(key)
        if existing is None:  # released between our insert and read: try once more
            return await self.claim(key, now=now, data=data, owner=owner, done=done)
        if existing.get("state") == "done":
            return Claim(key=key, outcome="done", data=existing)
        claimed_at = existing.get("claimed_at")
        if isinstance(claimed_at, datetime) and now - _aware(claimed_at) >= self.lease:
            # The state we read, by its nonce (claims from before nonces: by time and owner).
            seen = (existing.get("nonce")
                    or f"{_aware(claimed_at).isoformat()}/{existing.get('owner')}")
            try:
                await self._takeovers.insert_one({"_id": f"{self._name}|{key}|{seen}",
                                                  "owner": owner, "taken_at": now})
            except DuplicateKeyError:
                return Claim(key=key, outcome="held", data=existing)  # another taker won
            # Only the winner writes. A whole-document write: it can only race the slow
            # previous owner's own complete/release (module doc: same derived ids).
            await self._coll.update_one({"_id": key}, {"$set": {
                "claimed_at": now, "owner": owner, "nonce": uuid4().hex}})
            return Claim(key=key, outcome="taken_over", data=existing)
        return Claim(key=key, outcome="held", data=existing)

    async def complete(self, key: str, **data: Any) -> None:
        """Mark the work done, with what it produced (``data``): an insert (module doc)."""
        with contextlib.suppress(DuplicateKeyError):  # finished already: the first stays
            await self._done.insert({"_id": key, **data})

    async def release(self, key: str) -> None:
        """Give the work up so a later attempt can claim it afresh.

        Conditional, so not atomic on FerretDB; acceptable: only the claim's holder releases
        it, and a released key is simply claimed afresh. (A holder so slow that its lease
        ran out and was taken over may delete the taker's claim: the same slow-owner case
        the lease already accepts, where the slow owner itself repeats the effect.) A
        finished claim is kept: its document still says ``claimed`` (finishing inserts the
        ``_done`` record), so that record is looked at first."""
        if await self._done.coll.find_one({"_id": key}) is None:
            await self._coll.delete_one({"_id": key, "state": "claimed"})

    async def get(self, key: str) -> dict[str, Any] | None:
        """The claim as it stands: its document, with what :meth:`complete` recorded and
        ``state: done`` once it is finished."""
        doc = await self._coll.find_one({"_id": key})
        if doc is None or doc.get("state") == "done":
            return doc
        finished = await self._done.coll.find_one({"_id": key})
        if finished is None:
            return doc
        return {**doc, **finished, "state": "done"}
