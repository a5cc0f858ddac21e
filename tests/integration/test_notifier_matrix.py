"""The Matrix bot against a real Synapse homeserver (SQLite, loopback; one per session):
pages reach the on-call room, engineers acknowledge by reaction and by command, a second ack
changes nothing, the bot edits its page to show who acknowledged, and a manual step is
reported from the room — each event published once through the real broker."""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from mautrix.api import Method
from mautrix.api import Path as MxPath
from mautrix.client import ClientAPI
from mautrix.types import EventType, MessageType, RoomID, TextMessageEventContent, UserID

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent / "notifier_support"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "notifier"))

from notifier_factories import manual_step, submitted
from notifier_harness import Stack, module_topics, notifier_stack, settings_for
from polling import eventually
from synapse_fixture import Homeserver, MatrixUser, synapse_homeserver_fixture  # noqa: F401

from schemas import EngineerAcknowledged, ManualStepCompleted, TicketUpdated
from services.notifier.acks import Engineer
from services.notifier.bots.matrix import MatrixBot

pytestmark = pytest.mark.integration


@dataclass
class Room:
    room_id: str
    bot: MatrixUser
    alice: ClientAPI
    bob: ClientAPI
    carol: ClientAPI  # in the room, but not an engineer


@pytest.fixture(scope="module")
async def room(synapse_homeserver: Homeserver) -> AsyncIterator[Room]:
    hs = synapse_homeserver
    run = uuid.uuid4().hex[:6]
    bot = hs.register(f"notifier-{run}")
    alice, bob, carol = (hs.register(f"{name}-{run}") for name in ("alice", "bob", "carol"))
    room_id = hs.create_room(alice, invite=[bot, bob, carol])
    hs.join(bob, room_id)
    hs.join(carol, room_id)
    clients = [ClientAPI(mxid=UserID(u.user_id), base_url=hs.url, token=u.access_token)
               for u in (alice, bob, carol)]
    yield Room(room_id=room_id, bot=bot, alice=clients[0], bob=clients[1], carol=clients[2])
    for client in clients:
        await client.api.session.close()


@pytest.fixture(scope="module")
async def stack(kafka_bootstrap: str, topic_prefix: str, real_parts: Any, database_name: str,
                synapse_homeserver: Homeserver, room: Room) -> AsyncIterator[Stack]:
    async with module_topics(kafka_bootstrap, topic_prefix) as prefix:
        settings = settings_for(
            kafka_bootstrap, real_parts.mongodb_uri, prefix, f"{database_name}_notifier_matrix",
            matrix_homeserver_url=synapse_homeserver.url, matrix_user_id=room.bot.user_id,
            matrix_password=room.bot.password, matrix_room_id=room.room_id)
        async with notifier_stack(settings) as running:
            directory = running.service.directory
            await directory.register(Engineer(engineer_id="ENG-A", display_name="Alice",
                                              tier=1, identities={"matrix": room.alice.mxid}))
            await directory.register(Engineer(engineer_id="ENG-B", display_name="Bob", tier=2,
                                              identities={"matrix": room.bob.mxid}))
            yield running


async def timeline(client: ClientAPI, room_id: str) -> list[dict[str, Any]]:
    answer = await client.api.request(Method.GET, MxPath.v3.rooms[room_id].messages,
                                      query_params={"dir": "b", "limit": "200"})
    return list(reversed(answer["chunk"]))


async def bot_message(room: Room, needle: str, *, reply_to: str | None = None
                      ) -> dict[str, Any]:
    """The first message of the bot containing ``needle`` (optionally replying to an event)."""
    found: list[dict[str, Any]] = []

    async def arrived() -> bool:
        found.clear()
        for event in await timeline(room.alice, room.room_id):
            content = event.get("content", {})
            relates = content.get("m.relates_to", {})
            if (event["sender"] == room.bot.user_id and event["type"] == "m.room.message"
                    and needle in content.get("body", "")
                    and relates.get("rel_type") != "m.replace"
                    and (reply_to is None
                         or relates.get("m.in_reply_to", {}).get("event_id") == reply_to)):
                found.append(event)
        return bool(found)

    await eventually(arrived, timeout=20)
    return found[0]


async def edits_of(room: Room, event_id: str) -> list[str]:
    answer = await room.alice.api.request(
        Method.GET, MxPath.v1.rooms[room.room_id].relations[event_id]["m.replace"])
    return [e["content"]["m.new_content"]["body"] for e in answer["chunk"]]


async def say(client: ClientAPI, room_id: str, text: str) -> str:
    return str(await client.send_message_event(
        RoomID(room_id), EventType.ROOM_MESSAGE,
        TextMessageEventContent(msgtype=MessageType.TEXT, body=text)))


async def test_a_ticket_reaches_the_room_and_the_first_ack_wins(stack: Stack, room: Room
                                                                 ) -> None:
    ticket = submitted(at=datetime.now(UTC))
    await stack.bus.publish(ticket)
    page = await bot_message(room, f"New ticket {ticket.ticket_id}")
    assert room.alice.mxid in page["content"]["m.mentions"]["user_ids"]  # tier 1 on call
    assert "ack " + ticket.ticket_id in page["content"]["body"]

    reaction = str(await room.alice.react(RoomID(room.room_id), page["event_id"], "👍"))
    [ack] = await stack.bus.wait(ticket.ticket_id, EngineerAcknowledged)
    assert (ack.engineer_id, ack.display_name, ack.channel) == ("ENG-A", "Alice", "matrix")
    assert str(ack.acknowledged_event_id) == str(ticket.event_id)
    await bot_message(room, "it is yours, Alice", reply_to=page["event_id"])

    async def edited() -> bool:
        return any("Acknowledged by Alice via matrix" in body
                   for body in await edits_of(room, page["event_id"]))

    await eventually(edited, timeout=20)

    command = await say(room.bob, room.room_id, f"ack {ticket.ticket_id}")
    late = await bot_message(room, "already acknowledged by Alice", reply_to=command)
    assert room.bob.mxid in late["content"]["body"]
    again = str(await room.alice.react(RoomID(room.room_id), page["event_id"], "✅"))
    await bot_message(room, "You already acknowledged", reply_to=page["event_id"])
    assert again != reaction
    await stack.bus.settle(1.5)
    assert len(stack.bus.of(ticket.ticket_id, EngineerAcknowledged)) == 1
    assert [u.kind for u in stack.bus.of(ticket.ticket_id, TicketUpdated)] == [
        "acknowledgement"]


async def test_someone_in_the_room_who_is_not_an_engineer_cannot_ack(stack: Stack, room: Room
                                                                      ) -> None:
    ticket = submitted(at=datetime.now(UTC))
    await stack.bus.publish(ticket)
    page = await bot_message(room, f"New ticket {ticket.ticket_id}")
    await room.carol.react(RoomID(room.room_id), page["event_id"], "👍")
    await bot_message(room, "is not registered as an engineer", reply_to=page["event_id"])
    await stack.bus.settle()
    assert stack.bus.of(ticket.ticket_id, EngineerAcknowledged) == []


async def test_a_manual_step_is_reported_done_from_the_room_once(stack: Stack, room: Room
                                                                 ) -> None:
    ticket = submitted(at=datetime.now(UTC))
    step = manual_step(ticket, at=datetime.now(UTC), step_id="kvm-7", text="reinstall GRUB")
    await stack.bus.publish(ticket)
    await stack.bus.publish(step)
    page = await bot_message(room, f"Manual step kvm-7 on {ticket.ticket_id}")
    assert "instruction reinstall GRUB" in page["content"]["body"]

    done = await say(room.bob, room.room_id,
                     f"done {ticket.ticket_id} kvm-7 GRUB reinstalled from the console")
    [report] = await stack.bus.wait(ticket.ticket_id, ManualStepCompleted)
    assert (report.status, report.engineer_id, report.channel) == ("done", "ENG-B", "matrix")
    assert report.notes == "GRUB reinstalled from the console"
    assert report.causation_id == step.event_id
    await bot_message(room, "Recorded: step kvm-7", reply_to=done)

    late = await say(room.alice, room.room_id, f"failed {ticket.ticket_id} kvm-7 no console")
    await bot_message(room, "already reported done by Bob", reply_to=late)

    async def edited() -> bool:
        return any("Resolved" in body and "reported done by Bob" in body
                   for body in await edits_of(room, page["event_id"]))

    await eventually(edited, timeout=20)
    await stack.bus.settle()
    assert len(stack.bus.of(ticket.ticket_id, ManualStepCompleted)) == 1


async def test_the_access_token_from_the_bot_s_login_is_never_logged(stack: Stack) -> None:
    [bot] = [b for b in stack.service.bots if isinstance(b, MatrixBot)]
    token = bot.client.api.token
    assert token  # logged in with the password: Synapse handed out a token
    redactor = stack.service.runtime.redactor
    redactor.add_all(f"ticket-secret-{i:04d}" for i in range(300))  # past any eviction
    assert token not in redactor.redact_text(f"Authorization: Bearer {token}")
