"""How text reaches the screen: state badges (colours match the CLI's) and user text.

Run names, phases, step ids, commands, reasons, events and output all come from
users. Textual reads a plain `str` given to a DataTable cell, a Static or a
border title as markup, so `[/x]` would crash the monitor for everyone and
`[link=…]` would forge a link. Every such string therefore goes through
`literal` (or `printable` when appended to a Text): never markup, and control
characters shown as escapes, never sent to the terminal.
"""

from __future__ import annotations

from rich.text import Text

from ...render import STATE_COLOURS, printable


def state_badge(state: str) -> Text:
    colour, bold = STATE_COLOURS.get(state, ("white", False))
    return Text(printable(state), style=f"bold {colour}" if bold else colour)


def literal(value: object, style: str = "") -> Text:
    """`value` shown exactly, as a one-line table cell or label: never markup."""
    return Text(printable(str(value)), style=style, no_wrap=True, end="")
