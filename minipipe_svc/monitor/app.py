"""The minipipe-monitor Textual app: wiring, keys, and the refresh cycle.

See ARCHITECTURE.md beside this file for which event refreshes what.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.css.query import NoMatches
from textual.widgets import DataTable, Footer, Input, Static

from ..logs import LogLine
from ..model import RunState
from ..output import OutputFollower
from ..render import pool_fill, pool_use, printable
from ..store import EventRow, StepRow
from . import diff
from .data import LiveUsage, MonitorData, Update, WorkspaceFacts
from .messages import RunChosen
from .widgets.diff_screen import DiffScreen
from .widgets.events import MAX_ROWS, EventsTable
from .widgets.help import HelpScreen
from .widgets.output import OutputLog
from .widgets.runs import ACTIVE, RunsTable, matches, ordered
from .widgets.steps import StepsPanel, StepsTable
from .widgets.style import literal
from .widgets.usage import UsageDetail
from .widgets.workspace import WorkspaceDetail


@dataclass
class Sync:
    """What one background refresh read, handed to the UI thread to draw."""

    update: Update
    problem: str | None
    selected: int | None
    steps: list[StepRow] | None = None          # None: unchanged
    run_events: list[EventRow] | None = None    # None: unchanged
    output: list[LogLine] = field(default_factory=list)
    output_reset: bool = False
    output_note: str | None = None
    workspace: WorkspaceFacts | None = None
    workspace_read: bool = False                # False: unchanged
    live: LiveUsage | None = None               # the selected running run's, this tick


class FilterInput(Input):
    BINDINGS = [Binding("escape", "clear", "Clear filter", show=False)]

    def action_clear(self) -> None:
        self.value = ""
        self.app.action_close_filter()  # type: ignore[attr-defined]


class MonitorApp(App[None]):
    CSS_PATH = "monitor.tcss"
    TITLE = "minipipe-monitor"
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark", "help", "Help"),
        Binding("slash", "filter", "Filter"),
        Binding("a", "toggle_active", "Active/all"),
        Binding("e", "toggle_events", "Events run/all"),
        Binding("f", "toggle_follow", "Follow"),
        Binding("r", "refresh_now", "Refresh"),
        Binding("d", "diff", "Diff"),
    ]

    def __init__(self, db_path: str, log_dir: str, *, poll_interval: float = 2.0,
                 clock: Callable[[], datetime] | None = None,
                 pools: dict[str, int] | None = None) -> None:
        super().__init__()
        self.db_path, self.log_dir, self.poll_interval = db_path, log_dir, poll_interval
        self.pools = dict(pools or {})  # config `pools`: name -> slots
        self.clock = clock or (lambda: datetime.now(UTC))
        self.data = MonitorData(db_path)
        self.lock = threading.Lock()
        self.selected: int | None = None
        self.follower: OutputFollower | None = None
        self.steps_cache: list[StepRow] = []
        self.recent_events: deque[EventRow] = deque(maxlen=MAX_ROWS)
        self.active_only = False
        self.events_all = False
        self.follow = True
        self.filter_text = ""
        self.pending_reselect = False
        self.problem_shown: str | None = ""
        self.title_shown: Text | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="title")
        yield Static(id="banner")
        yield RunsTable(id="runs")
        with Horizontal(id="middle"):
            yield StepsPanel(id="steps")
            yield EventsTable(id="events")
        yield OutputLog(id="output")
        yield FilterInput(placeholder="filter runs by name, state or id", id="filter")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#runs").border_title = "Runs"
        self.query_one("#events").border_title = "Events · selected run"
        self.query_one("#output").border_title = "Output"
        self.query_one(RunsTable).focus()
        self.draw_title()
        self.sync()
        self.set_interval(self.poll_interval, self.sync)

    # ------------------------------------------------------------ background reads

    @work(thread=True, exclusive=True, group="sync")
    def sync(self, reload: bool = False) -> None:
        with self.lock:
            if reload:
                self.data.close()
            update = self.data.refresh()
            selected = self.selected
            result = Sync(update, self.data.problem, selected)
            run = self.data.runs.get(selected) if selected is not None else None
            reselect = self.pending_reselect or reload
            self.pending_reselect = False
            if selected is not None and (reselect or update.reloaded
                                         or selected in update.changed):
                result.steps = self.data.steps(selected)
                result.workspace = self.data.workspace(selected)
                result.workspace_read = True
                if reselect or update.reloaded:
                    result.run_events = self.data.run_events(selected)
            if run is not None and run.state is RunState.RUNNING:
                result.live = self.data.live_usage(run.id)
            if run is None:
                self.follower = None
            elif self.follower is None or self.follower.run_id != selected or reselect:
                self.follower = OutputFollower(run, self.log_dir)
                result.output_reset = True
            if self.follower is not None:
                try:
                    result.output = self.follower.poll()
                except OSError as exc:
                    self.follower.note = f"cannot read the output: {exc}"
                result.output_note = self.follower.note
        self.call_from_thread(self.apply, result)

    # ------------------------------------------------------------ drawing

    def visible_runs(self) -> list:
        runs = [r for r in self.data.runs.values()
                if (not self.active_only or r.state in ACTIVE) and matches(r, self.filter_text)]
        return ordered(runs)

    def apply(self, sync: Sync) -> None:
        # A refresh may finish while the app is closing: then there is nothing to draw.
        with contextlib.suppress(NoMatches):
            self._draw(sync)

    def _draw(self, sync: Sync) -> None:
        now = self.clock()
        if sync.problem != self.problem_shown:
            self.problem_shown = sync.problem
            banner = self.query_one("#banner", Static)
            banner.update(Text(f"⚠ {printable(sync.problem)}") if sync.problem else "")
            banner.set_class(bool(sync.problem), "visible")
        update = sync.update
        table = self.query_one(RunsTable)
        visible = self.visible_runs()
        if [r.id for r in visible] != table.shown:
            table.show(visible, now)
        else:
            table.tick([self.data.runs[i] for i in update.changed if i in self.data.runs], now)
            table.tick_durations([r for r in visible if r.state is RunState.RUNNING], now)
        if update.reloaded:
            self.recent_events.clear()
        self.recent_events.extend(update.events)
        events = self.query_one(EventsTable)
        if self.events_all:
            if update.reloaded:
                events.reset(list(self.recent_events))
            else:
                events.append(update.events)
        elif sync.selected == self.selected:
            if sync.run_events is not None:
                events.reset(sync.run_events)
            elif self.selected is not None:
                events.append([e for e in update.events if e.run_id == self.selected])
        if sync.selected == self.selected:
            run = self.data.runs.get(self.selected) if self.selected is not None else None
            panel = self.query_one(StepsPanel)
            if sync.steps is not None or run is None:
                self.steps_cache = sync.steps or []
                panel.show(run, self.steps_cache if run else [], now)
            elif run.state is RunState.RUNNING:
                panel.tick(run, self.steps_cache, now)
            if sync.workspace_read or run is None:
                self.query_one(WorkspaceDetail).show(sync.workspace, run, now)
            self.query_one(UsageDetail).show(run, sync.live)
            output = self.query_one(OutputLog)
            if sync.output_reset:
                title = f"Output · run {self.selected}" if run else "Output"
                output.reset(title, sync.output_note)
            output.add(sync.output)
        self.draw_title()

    def draw_title(self) -> None:
        counts = self.data.counts()
        waiting = counts.get(RunState.AWAITING_REVIEW.value, 0)
        finished = sum(v for k, v in counts.items() if k not in ACTIVE)
        parts = [f"{counts.get('RUNNING', 0)} running", f"{counts.get('PENDING', 0)} pending",
                 f"{finished} recent finished"]
        if waiting:
            parts.insert(2, f"{waiting} awaiting review")
        # Pool use as `minipipe status` counts it: configured pools, slots held by runs.
        pools = pool_use(self.pools, self.data.pool_use)
        flags = ["active only" if self.active_only else "all runs"]
        if self.filter_text:
            flags.append(f"filter: {printable(self.filter_text)}")
        if not self.follow:
            flags.append("follow off")
        text = Text()
        text.append("minipipe-monitor", style="bold")
        text.append(f"  {' · '.join(parts)}")
        if waiting:  # runs wait for a person: the count stands out
            text.highlight_words([f"{waiting} awaiting review"], style="bold")
        for index, (name, pool) in enumerate(pools.items()):
            text.append(" · pools " if index == 0 else ", ")
            # A full pool keeps its runs waiting: it stands out too.
            text.append(f"{printable(name)} {pool_fill(pool)}",
                        style="bold yellow" if pool["running"] >= pool["size"] else "")
        text.append(f"  [{', '.join(flags)}]")
        if text == self.title_shown:
            return
        self.title_shown = text
        self.query_one("#title", Static).update(text, layout=False)  # always one line

    # ------------------------------------------------------------ events from widgets

    def on_run_chosen(self, message: RunChosen) -> None:
        if message.run_id == self.selected:
            return
        self.selected = message.run_id
        self.steps_cache = []
        self.pending_reselect = True
        try:
            if not self.events_all:
                self.query_one(EventsTable).reset([])
            self.query_one(OutputLog).reset(
                f"Output · run {message.run_id}" if message.run_id else "Output")
        except NoMatches:
            return  # the app is closing
        self.sync()

    @on(DataTable.RowSelected, "#runs")
    def open_run(self) -> None:
        self.query_one(StepsTable).focus()

    @on(Input.Changed, "#filter")
    def filter_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value
        self.query_one(RunsTable).show(self.visible_runs(), self.clock())
        self.draw_title()

    @on(Input.Submitted, "#filter")
    def filter_done(self) -> None:
        self.action_close_filter()

    # ------------------------------------------------------------ key actions

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.add_class("visible")
        box.focus()

    def action_close_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.remove_class("visible")
        self.query_one(RunsTable).focus()

    def action_toggle_active(self) -> None:
        self.active_only = not self.active_only
        self.query_one(RunsTable).show(self.visible_runs(), self.clock())
        self.draw_title()

    def action_toggle_events(self) -> None:
        self.events_all = not self.events_all
        events = self.query_one(EventsTable)
        events.border_title = "Events · all runs" if self.events_all else "Events · selected run"
        if self.events_all:
            events.reset(list(self.recent_events))
        else:
            self.pending_reselect = True
            events.reset([])
            self.sync()

    def action_toggle_follow(self) -> None:
        self.follow = not self.follow
        output = self.query_one(OutputLog)
        output.auto_scroll = self.follow
        if self.follow:
            output.scroll_end(animate=False)
        self.draw_title()

    def action_refresh_now(self) -> None:
        self.sync(reload=True)

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_diff(self) -> None:
        run_id = self.selected
        run = self.data.runs.get(run_id) if run_id is not None else None
        title = Text("Diff", style="bold")
        if run is not None:
            title.append(f" · run {run.id} · ").append_text(literal(run.name))
        self.push_screen(DiffScreen(title, lambda: self.load_diff(run_id)))

    def load_diff(self, run_id: int | None) -> diff.DiffDocument:
        """What the diff screen shows for `run_id` (in its worker thread): the facts
        from the DB now, the diff from the log directory."""
        with self.lock:
            problem = self.data.problem
            facts = self.data.workspace(run_id) if run_id is not None and not problem else None
        if problem:
            return diff.message(f"cannot read the state DB: {problem}")
        if run_id is None:
            return diff.message("no run selected")
        from ..review import read_diff  # its imports are paid when a diff is first opened

        try:
            changed = facts is not None and facts.row is not None and facts.row.changes
            data = read_diff(self.log_dir, run_id) if changed else None
            return diff.build(run_id, facts, data, self.log_dir)
        except OSError as exc:
            return diff.message(f"cannot read the diff of run {run_id}: "
                                f"{exc.strerror or exc}")
        except (KeyError, TypeError, ValueError) as exc:  # a change of an unknown shape
            return diff.message(f"cannot show the change of run {run_id}: {exc!r}")
