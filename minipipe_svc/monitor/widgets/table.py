"""The DataTable all panes share: row cursor, vi keys (j/k), and cells never read as markup."""

from __future__ import annotations

from typing import Any

from textual.binding import Binding
from textual.coordinate import Coordinate
from textual.widgets import DataTable
from textual.widgets.data_table import CellType, ColumnKey, RowKey

from .style import literal


def _cell(value: Any) -> Any:
    # DataTable parses a str cell as markup: every str becomes literal Text here.
    return literal(value) if isinstance(value, str) else value


class PaneTable(DataTable):
    BINDINGS = [
        Binding("j", "cursor_down", "Down", show=False),
        Binding("k", "cursor_up", "Up", show=False),
    ]

    def on_mount(self) -> None:
        # Textual calls on_mount of every class in the MRO: subclasses add their
        # columns in their own on_mount without calling this one.
        self.cursor_type = "row"

    def add_row(self, *cells: CellType, **kwargs: Any) -> RowKey:
        return super().add_row(*(_cell(c) for c in cells), **kwargs)

    def update_cell(self, row_key: RowKey | str, column_key: ColumnKey | str,
                    value: CellType, **kwargs: Any) -> None:
        super().update_cell(row_key, column_key, _cell(value), **kwargs)

    def update_cell_at(self, coordinate: Coordinate | tuple[int, int], value: CellType,
                       **kwargs: Any) -> None:
        super().update_cell_at(coordinate, _cell(value), **kwargs)
