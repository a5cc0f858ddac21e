"""The progress display: a redrawn table on a terminal, change lines in a log."""

from __future__ import annotations

import io
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "notifier"))
from notifier_factories import started, submitted

from devstack.demo.progress import TicketProgress
from devstack.demo.table import Display, Row, render


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def tickets_after(*events: object) -> dict[str, TicketProgress]:
    progress = TicketProgress(events[0].ticket_id)  # type: ignore[attr-defined]
    for event in events:
        progress.add(event, 1.0)  # type: ignore[arg-type]
    return {progress.ticket_id: progress}


def test_a_log_gets_one_line_per_change_and_a_final_table() -> None:
    ticket = submitted()
    rows = [Row(ticket_id=ticket.ticket_id, scenario="diagnostics", submitted_at=0.0)]
    out = io.StringIO()
    display = Display(out, every_s=0)
    display.update(rows, tickets_after(ticket))
    display.update(rows, tickets_after(ticket))  # nothing changed: nothing printed
    display.update(rows, tickets_after(ticket, started(ticket)))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("submitted")
    assert lines[1].endswith("intervention running (ssh, automated)")
    rows[0].verdict = "as expected"
    display.final(rows, tickets_after(ticket, started(ticket)))
    assert "\x1b" not in out.getvalue()
    assert "ok intervention running" in out.getvalue().splitlines()[-1]


def test_a_terminal_gets_the_table_redrawn_in_place() -> None:
    ticket = submitted()
    rows = [Row(ticket_id=ticket.ticket_id, scenario="diagnostics", submitted_at=0.0)]
    out = Terminal()
    display = Display(out)
    display.update(rows, tickets_after(ticket))
    display.update(rows, tickets_after(ticket, started(ticket)))
    text = out.getvalue()
    assert text.count("\x1b[2F") == 1  # header + one row: back up two lines, once
    assert text.count("ticket ") == 2


def test_long_cells_are_cut_to_their_column() -> None:
    ticket = submitted()
    rows = [Row(ticket_id=ticket.ticket_id, scenario="s" * 80, submitted_at=0.0)]
    line = render(rows, tickets_after(ticket), now=5.0)[1]
    assert "s" * 80 not in line
    assert "..." in line
    assert line.endswith("5.0s")
