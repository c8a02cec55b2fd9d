"""The selected run: its current step in detail, its usage, its workspace, and all its
steps."""

from __future__ import annotations

from datetime import datetime

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from ...model import StepState
from ...render import elapsed, phase_text, printable
from ...store import RunRow, StepRow
from .style import literal, state_badge
from .table import PaneTable
from .usage import UsageDetail
from .workspace import WorkspaceDetail


def current_step(steps: list[StepRow]) -> StepRow | None:
    """The running step, else the last one that started, else the first."""
    for step in steps:
        if step.state is StepState.RUNNING:
            return step
    started = [s for s in steps if s.started_at]
    return started[-1] if started else (steps[0] if steps else None)


class StepsPanel(Vertical):
    def compose(self) -> ComposeResult:
        yield Static(id="step-detail")
        yield UsageDetail(id="usage-detail")
        yield WorkspaceDetail(id="workspace-detail")
        yield StepsTable(id="steps-table")

    def tick(self, run: RunRow, steps: list[StepRow], now: datetime) -> None:
        """A running run's clock moved: redraw the durations only."""
        # Same lines, new numbers: no layout pass needed.
        self.query_one("#step-detail", Static).update(self._detail(run, steps, now),
                                                      layout=False)
        self.query_one(StepsTable).tick(steps, now)

    def show(self, run: RunRow | None, steps: list[StepRow], now: datetime) -> None:
        detail = self.query_one("#step-detail", Static)
        table = self.query_one(StepsTable)
        table.fill(steps, now)
        if run is None:
            self.border_title = "Steps"
            detail.update(Text("no run selected", style="dim"))
            return
        self.border_title = Text(f"Run {run.id} · ").append_text(literal(run.name))
        detail.update(self._detail(run, steps, now))

    @staticmethod
    def _detail(run: RunRow, steps: list[StepRow], now: datetime) -> Text:
        step = current_step(steps)
        if step is None:
            return Text("no steps", style="dim")
        text = Text()
        # User text goes in through Text.append (never markup) and printable.
        text.append(printable(step.step_id), style="bold")
        text.append(f" [{printable(phase_text(step))}] ")
        text.append_text(state_badge(step.state.value))
        text.append(f" try {step.attempt} exit "
                    f"{'-' if step.exit_code is None else step.exit_code}\n")
        started = printable(step.started_at[11:19]) if step.started_at else "-"
        text.append(f"started {started} · {elapsed(step.started_at, step.finished_at, now)}\n")
        text.append(f"$ {printable(step.command)}", style="italic")
        if run.reason:
            text.append(f"\n{printable(run.reason)}", style="yellow")
        text.no_wrap = True
        text.overflow = "ellipsis"
        return text


class StepsTable(PaneTable):

    def on_mount(self) -> None:
        for label in ("#", "STEP", "PHASE", "STATE", "TRY", "EXIT", "TIME"):
            self.add_column(label, key=label)

    def fill(self, steps: list[StepRow], now: datetime) -> None:
        cursor = self.cursor_row
        self.clear()
        for step in steps:
            self.add_row(str(step.idx + 1), step.step_id, phase_text(step),
                         state_badge(step.state.value), str(step.attempt),
                         "-" if step.exit_code is None else str(step.exit_code),
                         elapsed(step.started_at, step.finished_at, now))
        if steps and cursor is not None:
            self.move_cursor(row=min(cursor, len(steps) - 1))

    def tick(self, steps: list[StepRow], now: datetime) -> None:
        for step in steps:
            if step.state is StepState.RUNNING and step.idx < self.row_count:
                self.update_cell_at((step.idx, 6),
                                    elapsed(step.started_at, step.finished_at, now))
