"""The diff itself: a virtualised, read-only view that draws only the lines on screen.

A line-API widget: a 100,000-line diff costs what its visible rows cost, whatever
its length. Lines arrive already escaped (`monitor.diff`); each visible one
becomes a `rich.text.Text` built from the plain string (never markup), styled by
its kind like git's colours, with the search's matches highlighted.
"""

from __future__ import annotations

from rich.cells import cell_len
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.binding import Binding
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

from ..diff import (
    ADDED,
    COMMIT,
    FILE,
    HUNK,
    NOTE,
    REMOVED,
    STAT,
    DiffDocument,
    Search,
    hunk_header_end,
)

STYLES = {
    FILE: Style(bold=True),
    ADDED: Style(color="green"),
    REMOVED: Style(color="red"),
    NOTE: Style(color="yellow"),
}
HUNK_STYLE = Style(color="cyan")
SHA_STYLE = Style(color="yellow")
MORE, MORE_STYLE = "»", Style(color="black", bgcolor="magenta", bold=True)
MATCH = Style(color="black", bgcolor="yellow")
CURRENT_MATCH = Style(color="black", bgcolor="bright_yellow", bold=True, underline=True)
CURRENT_LINE = Style(bgcolor="grey23")
MAX_CACHED = 512


def goes_on_past(cells: int, scroll_x: int, width: int) -> bool:
    """Whether a line of `cells` goes on past a view `width` wide scrolled to
    `scroll_x`: then its last visible cell is MORE."""
    return width > 1 and cells > scroll_x + width


class DiffView(ScrollView, can_focus=True):
    BINDINGS = [
        Binding("j", "scroll_down", "Down", show=False),
        Binding("k", "scroll_up", "Up", show=False),
        Binding("h", "scroll_left", "Left", show=False),
        Binding("l", "scroll_right", "Right", show=False),
        Binding("space", "page_down", "Page down", show=False),
        Binding("b", "page_up", "Page up", show=False),
        Binding("g", "scroll_home", "Top", show=False),
        Binding("G", "scroll_end", "End", show=False),
    ]

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.document = DiffDocument()
        self.search: Search | None = None
        self.current: int | None = None  # the line of the current match
        self.cache: dict[int, Strip] = {}

    def show(self, document: DiffDocument) -> None:
        self.document, self.search, self.current = document, None, None
        self.cache.clear()
        self.virtual_size = Size(document.width + 1, len(document.lines))
        self.scroll_to(0, 0, animate=False)
        self.refresh()

    # Jumps without animation: an animated scroll over 100,000 lines draws every
    # step of the way and holds the keys for a second.
    def action_scroll_home(self) -> None:
        self.scroll_to(0, 0, animate=False)

    def action_scroll_end(self) -> None:
        self.scroll_to(0, self.max_scroll_y, animate=False)

    def action_page_down(self) -> None:
        self.scroll_to(y=self.scroll_y + self.scrollable_content_region.height, animate=False)

    def action_page_up(self) -> None:
        self.scroll_to(y=self.scroll_y - self.scrollable_content_region.height, animate=False)

    # ------------------------------------------------------------ search

    def find(self, needle: str) -> tuple[int, bool] | None:
        """A new search: its hits are highlighted and the first at or below the top
        line becomes current (wrapping: then True); None without hits."""
        self.search = Search(self.document, needle)
        self.current = None
        self.cache.clear()
        found = self.search.after(self.top_line - 1)
        if found is not None:
            self.go_to(found[0])
        self.refresh()
        return found

    def step(self, forward: bool) -> tuple[int, bool] | None:
        """Move to the next (or previous) hit, wrapping; None without hits."""
        if self.search is None:
            return None
        start = self.current if self.current is not None else (
            self.top_line - 1 if forward else self.top_line)
        found = self.search.after(start) if forward else self.search.before(start)
        if found is not None:
            self.go_to(found[0])
        return found

    def go_to(self, line: int) -> None:
        """Make `line` current and visible: a third down the view, its first match in view."""
        previous, self.current = self.current, line
        for index in (previous, line):
            if index is not None:
                self.cache.pop(index, None)
        height = max(1, self.scrollable_content_region.height)
        y = None if self.top_line <= line < self.top_line + height else max(0, line - height // 3)
        x = None
        if self.search is not None:
            spans = self.search.spans(line)
            if spans:
                text = self.document.lines[line]
                start = cell_len(text[:spans[0][0]])
                end = cell_len(text[:spans[0][1]])
                width = max(1, self.scrollable_content_region.width)
                if not (self.scroll_x <= start and end <= self.scroll_x + width):
                    x = max(0, start - width // 3)
        self.scroll_to(x, y, animate=False)
        self.refresh()

    @property
    def top_line(self) -> int:
        return round(self.scroll_y)

    # ------------------------------------------------------------ drawing

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self.cache.clear()  # the cached lines carry the old colours

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        index = scroll_y + y
        width = self.scrollable_content_region.width
        base = self.rich_style
        if index >= len(self.document.lines):
            return Strip.blank(width, base)
        strip = self.cache.get(index)
        if strip is None:
            if len(self.cache) >= MAX_CACHED:
                self.cache.clear()
            strip = self.cache[index] = self._line(index, base)
        if goes_on_past(strip.cell_length, scroll_x, width):
            # More to the right: said at the edge, as less does, whatever blanks or
            # blank-looking characters fill the screen before it.
            return Strip.join([strip.crop_extend(scroll_x, scroll_x + width - 1, base),
                               Strip([Segment(MORE, base + MORE_STYLE)], 1)])
        return strip.crop_extend(scroll_x, scroll_x + width, base)

    def _line(self, index: int, base: Style) -> Strip:
        line = self.document.lines[index]
        kind = self.document.kinds[index]
        # Text(plain) holds the string as it is: nothing in it is read as markup.
        # (Text.render draws spans only, so even the line's own style is a span.)
        text = Text(line, no_wrap=True, end="")
        text.stylize(base + STYLES[kind] if kind in STYLES else base)
        if kind == HUNK:
            text.stylize(HUNK_STYLE, 0, hunk_header_end(line))
        elif kind == STAT:  # " name | 12 +++++---": the bar in git's colours
            start = len(line.rstrip("+-"))
            minus = start + line[start:].count("+")
            text.stylize(STYLES[ADDED], start, minus)
            text.stylize(STYLES[REMOVED], minus, len(line))
        elif kind == COMMIT:  # "commit <id>", in git's colour
            text.stylize(SHA_STYLE)
        if self.search is not None and self.search.needle:
            current = index == self.current
            if current:
                text.stylize(CURRENT_LINE)
            for start, end in self.search.spans(index):
                text.stylize(CURRENT_MATCH if current else MATCH, start, end)
        return Strip(text.render(self.app.console), cell_len(line))
