"""``python -m services.notifier``: run the notifier service until interrupted."""

from __future__ import annotations

import asyncio

from services.notifier.app import SERVICE_NAME, create_app
from services.runtime.telemetry import configure_logging


def main() -> None:
    configure_logging(SERVICE_NAME)
    asyncio.run(create_app().run())


if __name__ == "__main__":
    main()
