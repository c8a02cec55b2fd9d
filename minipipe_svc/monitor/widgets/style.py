"""State badges shared by the widgets (colours match the CLI's)."""

from __future__ import annotations

from rich.text import Text

from ...render import STATE_COLOURS


def state_badge(state: str) -> Text:
    colour, bold = STATE_COLOURS.get(state, ("white", False))
    return Text(state, style=f"bold {colour}" if bold else colour)
