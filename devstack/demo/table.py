"""The demo's progress display: one row per ticket, redrawn in place on a terminal, as
periodic change lines otherwise (a log file, CI)."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from typing import TextIO

from devstack.demo.progress import TicketProgress

HEADER = ("ticket", "scenario", "state", "last event", "elapsed")
WIDTHS = (22, 36, 56, 21, 7)


@dataclass
class Row:
    ticket_id: str
    scenario: str
    submitted_at: float  # time.monotonic()
    settled_at: float | None = None
    verdict: str = ""  # set when the demo ends: "as expected" or "NOT AS EXPECTED"

    def cells(self, progress: TicketProgress, now: float) -> tuple[str, ...]:
        elapsed = (self.settled_at or now) - self.submitted_at
        # ASCII only: the demo also runs where stdout is not UTF-8 (CI logs, C locale).
        mark = {"as expected": "ok ", "NOT AS EXPECTED": "!! "}.get(self.verdict, "")
        return (self.ticket_id, self.scenario, mark + progress.label(), progress.last_event(),
                f"{elapsed:5.1f}s")


def _line(cells: tuple[str, ...]) -> str:
    out = []
    for cell, width in zip(cells, WIDTHS, strict=True):
        out.append(cell if len(cell) <= width else cell[: width - 3] + "...")
        out[-1] = out[-1].ljust(width)
    return "  ".join(out).rstrip()


def render(rows: list[Row], tickets: dict[str, TicketProgress], now: float) -> list[str]:
    lines = [_line(HEADER)]
    for row in rows:
        lines.append(_line(row.cells(tickets.get(row.ticket_id) or TicketProgress(
            row.ticket_id), now)))
    return lines


class Display:
    """Redraws the table in place with ANSI escapes when ``out`` is a terminal; otherwise
    prints a line for each ticket whose state changed, at most every ``every_s`` seconds."""

    def __init__(self, out: TextIO, *, every_s: float = 2.0) -> None:
        self.out = out
        self.tty = out.isatty()
        self.every_s = every_s
        self._drawn = 0
        self._last_print = 0.0
        self._last_state: dict[str, str] = {}
        self._started = time.monotonic()

    def _fit(self, lines: list[str]) -> list[str]:
        # A line wider than the terminal wraps, and moving the cursor up by the number of
        # lines drawn would then land inside the table: cut every line to the width.
        width = shutil.get_terminal_size((200, 24)).columns - 1
        return [line[:width] for line in lines]

    def update(self, rows: list[Row], tickets: dict[str, TicketProgress]) -> None:
        now = time.monotonic()
        if self.tty:
            lines = self._fit(render(rows, tickets, now))
            if self._drawn:
                # Back to the table's first line, then overwrite each line in place.
                self.out.write(f"\x1b[{self._drawn}F")
            for line in lines:
                self.out.write(f"\x1b[2K{line}\n")
            self._drawn = len(lines)
            self.out.flush()
            return
        if now - self._last_print < self.every_s:
            return
        self._last_print = now
        for row in rows:
            progress = tickets.get(row.ticket_id) or TicketProgress(row.ticket_id)
            state = progress.label()
            if self._last_state.get(row.ticket_id) != state:
                self._last_state[row.ticket_id] = state
                self.out.write(f"[{now - self._started:6.1f}s] {row.ticket_id:<24} {state}\n")
        self.out.flush()

    def final(self, rows: list[Row], tickets: dict[str, TicketProgress]) -> None:
        """The finished table (drawn over the live one on a terminal)."""
        if self.tty and self._drawn:
            self.out.write(f"\x1b[{self._drawn}F")
        lines = render(rows, tickets, time.monotonic())
        for line in self._fit(lines) if self.tty else lines:
            self.out.write(f"\x1b[2K{line}\n" if self.tty else f"{line}\n")
        self._drawn = 0
        self.out.flush()
