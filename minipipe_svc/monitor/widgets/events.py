"""The event stream: what happened, newest last, for the selected run or for all runs."""

from __future__ import annotations

from ...store import EventRow
from .table import PaneTable

MAX_ROWS = 500


class EventsTable(PaneTable):

    def on_mount(self) -> None:
        # Fixed widths: the pane keeps its shape whatever the events' lengths.
        for label, width in (("TIME", 8), ("RUN", 4), ("KIND", 14), ("STEP", 12)):
            self.add_column(label, key=label, width=width)
        self.shown: set[int] = set()

    def reset(self, events: list[EventRow]) -> None:
        self.clear()
        self.shown = set()
        self.append(events)

    def append(self, events: list[EventRow]) -> None:
        at_end = self.cursor_row is None or self.cursor_row >= self.row_count - 1
        for event in events:
            if event.id in self.shown:
                continue
            self.shown.add(event.id)
            self.add_row(event.ts[11:19], "-" if event.run_id is None else str(event.run_id),
                         event.kind, event.step_id or "", key=f"e{event.id}")
        while self.row_count > MAX_ROWS:
            oldest = self.coordinate_to_cell_key((0, 0)).row_key
            self.shown.discard(int(str(oldest.value)[1:]))
            self.remove_row(oldest)
        if at_end and self.row_count:
            self.move_cursor(row=self.row_count - 1)
