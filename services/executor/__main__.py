"""``python -m services.executor``: run the executor service until interrupted."""

from __future__ import annotations

from services.executor.app import SERVICE_NAME, create_app
from services.runtime.service import run_service


def main() -> None:
    run_service(SERVICE_NAME, create_app)


if __name__ == "__main__":
    main()
