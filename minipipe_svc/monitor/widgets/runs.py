"""The runs table: active runs first (those awaiting review stand out), then finished ones."""

from __future__ import annotations

from datetime import datetime

from rich.text import Text
from textual.widgets import DataTable

from ...model import RunState
from ...render import elapsed
from ...store import RunRow
from ..messages import RunChosen
from .style import state_badge
from .table import PaneTable

# Runs that still need something: to run, or a reviewer's decision.
ACTIVE = (RunState.RUNNING, RunState.PENDING, RunState.AWAITING_REVIEW)
REVIEW_MARK = "◆ "


def ordered(runs: list[RunRow]) -> list[RunRow]:
    """Running, then pending (as they will start), then awaiting review (the longest
    waiting first, as `minipipe review` lists them), then finished (newest first)."""
    running = sorted((r for r in runs if r.state is RunState.RUNNING), key=lambda r: r.id)
    pending = sorted((r for r in runs if r.state is RunState.PENDING),
                     key=lambda r: (-r.priority, r.id))
    waiting = sorted((r for r in runs if r.state is RunState.AWAITING_REVIEW),
                     key=lambda r: r.id)
    finished = sorted((r for r in runs if r.state not in ACTIVE), key=lambda r: -r.id)
    return running + pending + waiting + finished


def state_cell(state: RunState) -> Text:
    """The state's badge; a run awaiting review also gets a mark, so it stands out
    without colour too (NO_COLOR, a monochrome terminal)."""
    badge = state_badge(state.value)
    if state is RunState.AWAITING_REVIEW:
        return Text(REVIEW_MARK, style=badge.style, end="").append_text(badge)
    return badge


def matches(run: RunRow, needle: str) -> bool:
    needle = needle.strip().lower()
    return not needle or needle in run.name.lower() or needle in run.state.value.lower() \
        or needle == str(run.id)


class RunsTable(PaneTable):

    def on_mount(self) -> None:
        self.zebra_stripes = False
        self.add_column("ID", key="id")
        self.add_column("NAME", key="name")
        self.add_column("STATE", key="state")
        self.add_column("PHASE", key="phase")
        self.add_column("STEPS", key="steps")
        self.add_column("DURATION", key="duration")
        self.add_column("STARTED", key="started")
        self.shown: list[int] = []

    def show(self, runs: list[RunRow], now: datetime) -> None:
        """Redraw the rows in `runs`' order, keeping the cursor on the same run."""
        current = self.current_run_id()
        self.clear()
        self.shown = [run.id for run in runs]
        for run in runs:
            self.add_row(*self._cells(run, now), key=str(run.id))
        if current in self.shown:
            self.move_cursor(row=self.shown.index(current))
        self.post_message(RunChosen(self.current_run_id()))

    def tick(self, runs: list[RunRow], now: datetime) -> None:
        """Update the cells of these runs in place (live durations, new states)."""
        for run in runs:
            if run.id in self.shown:
                for column, value in zip(("state", "phase", "steps", "duration", "started"),
                                         self._cells(run, now)[2:], strict=True):
                    # A new state may be wider (AWAITING_REVIEW): its column grows.
                    self.update_cell(str(run.id), column, value,
                                     update_width=column == "state")

    def tick_durations(self, runs: list[RunRow], now: datetime) -> None:
        """Only the live duration of running runs: the cheap per-tick redraw."""
        for run in runs:
            if run.id in self.shown:
                self.update_cell(str(run.id), "duration",
                                 elapsed(run.started_at, run.finished_at, now))

    def current_run_id(self) -> int | None:
        if not self.shown or self.cursor_row is None or not (
                0 <= self.cursor_row < len(self.shown)):
            return None
        return self.shown[self.cursor_row]

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        self.post_message(RunChosen(self.current_run_id()))

    @staticmethod
    def _cells(run: RunRow, now: datetime) -> tuple[object, ...]:
        started = run.started_at[11:19] if run.started_at else "-"
        # str cells become literal Text in PaneTable: never markup, controls escaped.
        return (Text(str(run.id), justify="right"), run.name[:28], state_cell(run.state),
                run.phase or "-", f"{run.steps_done}/{run.steps_total}",
                elapsed(run.started_at, run.finished_at, now), started)
