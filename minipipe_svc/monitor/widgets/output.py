"""The selected run's output lines, following live like `journalctl -f`."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import RichLog

from ...logs import LogLine
from ...render import printable

MAX_LINES = 5000


class OutputLog(RichLog):
    def __init__(self, **kwargs: object) -> None:
        super().__init__(max_lines=MAX_LINES, wrap=False, markup=False, **kwargs)  # type: ignore[arg-type]

    def reset(self, title: str, note: str | None = None) -> None:
        self.clear()
        self.border_title = Text(title)
        if note:
            self.write(Text(printable(note), style="yellow"))

    def add(self, lines: list[LogLine]) -> None:
        # Output is the steps' own bytes: Text (not markup), control characters escaped.
        for line in lines:
            text = Text(f"{printable(line.step_id)} │ ", style="dim")
            style = {"stderr": "red", "minipipe": "dim italic"}.get(line.stream, "")
            text.append(printable(line.text), style=style)
            self.write(text)
