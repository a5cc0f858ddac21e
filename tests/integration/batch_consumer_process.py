"""A consumer process for the batch tests: the runtime's ``subscribe`` on one topic, with a
handler whose effect is deliberately *not* idempotent (a plain insert per run), so a test
can count how often each message ran. Run as ``python batch_consumer_process.py <topic>
<group> <effects collection> <handler seconds>`` with the runtime's environment."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from schemas.events import TicketUpdated
from services.runtime.consumer import Delivery, subscribe
from services.runtime.service import ServiceRuntime, event_decoder
from services.runtime.settings import RuntimeSettings


async def main(topic: str, group: str, effects: str, seconds: float) -> None:
    runtime = ServiceRuntime("batchtest", RuntimeSettings())
    collection = runtime.db[effects]

    async def handle(event: TicketUpdated, delivery: Delivery) -> None:
        await asyncio.sleep(seconds)
        await collection.insert_one({"event_id": str(event.event_id), "pid": os.getpid(),
                                     "ticket_id": event.ticket_id, "offset": delivery.offset})

    subscribe(runtime, topic, handle, decoder=event_decoder(TicketUpdated), group=group)
    await runtime.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await runtime.stop()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])))
