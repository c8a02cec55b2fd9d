"""Messages the monitor's widgets send up to the app (attributes down, messages up)."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message


@dataclass
class RunChosen(Message):
    """The cursor of the runs table rests on a run: show its steps, events and output."""

    run_id: int | None
