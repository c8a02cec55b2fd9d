"""The DataTable all panes share: row cursor and vi keys (j/k) besides the arrows."""

from __future__ import annotations

from textual.binding import Binding
from textual.widgets import DataTable


class PaneTable(DataTable):
    BINDINGS = [
        Binding("j", "cursor_down", "Down", show=False),
        Binding("k", "cursor_up", "Up", show=False),
    ]

    def on_mount(self) -> None:
        # Textual calls on_mount of every class in the MRO: subclasses add their
        # columns in their own on_mount without calling this one.
        self.cursor_type = "row"
