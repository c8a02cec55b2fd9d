"""The `?` screen: every key, in one place."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

KEYS = [
    ("↑ ↓  j k", "move in the focused pane"),
    ("enter", "open the highlighted run's steps"),
    ("tab", "next pane (runs, steps, events, output)"),
    ("/", "filter runs by name, state or id (esc clears)"),
    ("a", "active runs only / all runs"),
    ("e", "events of the selected run / of all runs"),
    ("f", "follow the output on/off"),
    ("d", "the selected run's diff (/ n N search, esc closes)"),
    ("r", "refresh now (a full reload)"),
    ("?", "this help"),
    ("q", "quit"),
]


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        lines = "\n".join(f"[b]{key:<10}[/b] {what}" for key, what in KEYS)
        with Vertical(id="help"):
            yield Static("[b]minipipe-monitor[/b] — read-only view of runs, steps, events "
                         "and output\n")
            yield Static(lines)
            yield Static("\n[dim]esc, q or ? closes this help[/dim]")

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss(result)
