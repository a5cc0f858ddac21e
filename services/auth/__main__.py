"""``python -m services.auth``: run the auth service until interrupted."""

from __future__ import annotations

from services.auth.app import SERVICE_NAME, create_app
from services.runtime.keys import KeyFileError
from services.runtime.service import run_service


def main() -> None:
    # A missing or unsafe signing key is an operator's fix too.
    run_service(SERVICE_NAME, create_app, operator_errors=(KeyFileError,))


if __name__ == "__main__":
    main()
