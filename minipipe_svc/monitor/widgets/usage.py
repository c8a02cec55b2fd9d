"""The selected run's usage: live figures while it runs, the recorded ones after.

A runner records a run's figures only as its pass ends (accounting.run_usage), so for
a RUNNING run the monitor reads its scope's cgroup itself at each tick
(`MonitorData.live_usage`) and marks the line as live; a run without a scope says so
rather than show zeros. Every figure and the source come from the DB or from files:
formatted by `render.usage_text` (which shows a figure of the wrong shape as `?`) and
appended to a Text through `printable`, never read as markup.
"""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from ...model import RunState
from ...render import printable, usage_text
from ...store import RunRow
from ..data import LiveUsage


def usage_line(run: RunRow | None, live: LiveUsage | None) -> Text | None:
    """One line for `run` (None: nothing to show). `live` is this tick's reading for a
    running run; a finished run shows what its runner recorded."""
    if run is None:
        return None
    text = Text(no_wrap=True, overflow="ellipsis", end="")
    if run.state is RunState.RUNNING:
        if live is None:
            return None  # not read yet: the next tick reads it
        if live.figures is None:
            if live.note is None:
                return None  # it ended meanwhile: its events redraw it next
            text.append(printable(live.note), style="dim")
            return text
        text.append("live ", style="bold cyan")
        text.append(printable(usage_text(live.figures)))
        return text
    if run.usage is None:
        return None  # pending, or ended before accounting existed or before any step
    text.append("used ", style="dim")
    text.append(printable(usage_text(run.usage)))
    return text


class UsageDetail(Static):
    shown: Text | None = None

    def show(self, run: RunRow | None, live: LiveUsage | None) -> None:
        """Called on every tick with a run selected: redraws only what changed."""
        line = usage_line(run, live)
        if line == self.shown:
            return
        appears = (line is None) != (self.shown is None)
        self.shown = line
        self.set_class(line is not None, "visible")
        # One line either way: only showing or hiding it needs a layout pass.
        self.update(line or "", layout=appears)
