"""What a topic's decoder returns: the value, its idempotency key and ticket, or a
:class:`DecodeError` whose message is safe to publish in a DLQ header."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


class DecodeError(Exception):
    """The message is not a valid instance of what the topic carries.

    ``message`` must be safe to publish: no input values (they may hold secrets), only
    field paths and what is wrong with them.
    """

    def __init__(self, message: str, *, error_class: str | None = None) -> None:
        super().__init__(message)
        self.error_class = error_class or type(self).__name__


@dataclass(frozen=True, kw_only=True)
class Decoded(Generic[T]):
    value: T
    key: str  # idempotency key
    ticket_id: str | None


Decoder = Callable[[bytes], Decoded[T]]
