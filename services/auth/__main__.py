"""``python -m services.auth``: run the auth service until interrupted."""

from __future__ import annotations

import asyncio
import sys

from services.auth.app import SERVICE_NAME, create_app
from services.runtime.keys import KeyFileError
from services.runtime.telemetry import configure_logging


def main() -> None:
    configure_logging(SERVICE_NAME)
    try:
        app = create_app()
    except KeyFileError as exc:
        # A missing or unsafe signing key is an operator's fix, not a crash to debug.
        print(f"auth: {exc}", file=sys.stderr)
        sys.exit(2)
    asyncio.run(app.run())


if __name__ == "__main__":
    main()
