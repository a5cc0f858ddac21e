"""``python -m services.notifier``: run the notifier service until interrupted."""

from __future__ import annotations

from services.notifier.app import SERVICE_NAME, create_app
from services.runtime.service import run_service


def main() -> None:
    run_service(SERVICE_NAME, create_app)


if __name__ == "__main__":
    main()
