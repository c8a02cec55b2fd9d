"""The `d` screen: the selected run's recorded change, read-only, with `/` search.

Modal, so the main screen's keys (quit, filter, refresh) do not act behind it;
opaque, so it reads as a screen of its own. The diff is read in a worker thread
when the screen opens (the app's `load` does the reading), so an 8 MiB diff
never blocks the keys; the main screen keeps refreshing underneath.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.screen import ModalScreen
from textual.widgets import Footer, Input, Static

from ...render import printable
from ..diff import DiffDocument
from .diff_view import DiffView

KEYS_HINT = "/ search · n/N next/previous · j/k, space/b, g/G move · esc closes"


class SearchInput(Input):
    BINDINGS = [Binding("escape", "cancel", "Cancel search", show=False)]

    def action_cancel(self) -> None:
        self.screen.close_search()  # type: ignore[attr-defined]


class DiffScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape,q", "close", "Close"),
        Binding("slash", "search", "Search"),
        Binding("n", "next_match", "Next"),
        Binding("N", "previous_match", "Previous"),
    ]

    def __init__(self, title: Text, load: Callable[[], DiffDocument]) -> None:
        super().__init__()
        self.heading, self.load = title, load
        self.document: DiffDocument | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="diff-title")
        yield DiffView(id="diff-view")
        yield Static(id="diff-status")
        yield SearchInput(placeholder="search the diff (smart case)", id="diff-search")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#diff-title", Static).update(self.heading)
        self.say(Text("reading the diff…", style="dim"))
        self.query_one(DiffView).focus()
        self.read()

    @work(thread=True, exclusive=True, group="diff")
    def read(self) -> None:
        document = self.load()
        self.app.call_from_thread(self.show, document)

    def show(self, document: DiffDocument) -> None:
        # The screen may have been closed while the diff was read.
        with contextlib.suppress(NoMatches):
            self.document = document
            self.query_one(DiffView).show(document)
            if document.title:
                heading = self.heading.copy()
                heading.append(f" · {printable(document.title)}")
                self.query_one("#diff-title", Static).update(heading)
            self.say(self.where())

    def where(self) -> Text:
        lines = len(self.document.lines) if self.document else 0
        return Text(f"{lines:,} lines · {KEYS_HINT}", style="dim")

    def say(self, text: Text) -> None:
        self.query_one("#diff-status", Static).update(text)

    # ------------------------------------------------------------ search

    def action_search(self) -> None:
        box = self.query_one(SearchInput)
        box.add_class("visible")
        box.focus()

    def close_search(self) -> None:
        box = self.query_one(SearchInput)
        box.remove_class("visible")
        self.query_one(DiffView).focus()

    @on(Input.Submitted, "#diff-search")
    def search(self, event: Input.Submitted) -> None:
        self.close_search()
        if event.value and self.document is not None:
            self.report(self.query_one(DiffView).find(event.value))

    def action_next_match(self) -> None:
        self.step(forward=True)

    def action_previous_match(self) -> None:
        self.step(forward=False)

    def step(self, forward: bool) -> None:
        view = self.query_one(DiffView)
        if view.search is None:
            self.say(Text("no search yet: / searches", style="yellow"))
            return
        self.report(view.step(forward))

    def report(self, found: tuple[int, bool] | None) -> None:
        """Where the search stands, in the status line (the needle shown literally)."""
        search = self.query_one(DiffView).search
        assert search is not None
        shown = printable(search.needle)
        text = Text()
        if found is None:
            text.append(f"no match for “{shown}”", style="yellow")
        else:
            line, wrapped = found
            text.append(f"line {line + 1:,}: match {search.rank(line)} of "
                        f"{len(search.hits):,} for “{shown}”")
            if wrapped:
                text.append(" (wrapped)", style="yellow")
            text.append(" · n/N next/previous · esc closes", style="dim")
        self.say(text)

    async def action_close(self) -> None:
        self.dismiss(None)
