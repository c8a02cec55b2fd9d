"""What the monitor shows, read incrementally from the DB. Imports nothing from Textual.

The first successful refresh loads every active run and the most recent finished
ones; after that each refresh reads only the events appended since the last one
and re-reads just the runs those events touch, so a tick costs O(new events),
however large the history. Every failure to read (DB missing, not readable,
locked, damaged, of a newer schema) becomes a `problem` to show, and the next
refresh simply tries again.
"""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from ..accounting import scope_usage
from ..model import RunState
from ..store import (
    EventRow,
    RunRow,
    SchemaTooNew,
    StepRow,
    Store,
    StoreError,
    StoreMissing,
    WorkspaceRow,
)

RECENT_FINISHED = 200
EVENT_BACKLOG = 200
MAX_EVENTS_PER_TICK = 5000
MAX_PLANS_KEPT = 1000


@dataclass
class Update:
    """What one refresh found: the runs that changed and the events that arrived."""

    changed: set[int] = field(default_factory=set)
    removed: set[int] = field(default_factory=set)
    events: list[EventRow] = field(default_factory=list)
    reloaded: bool = False  # everything was (re)loaded: redraw from scratch


@dataclass(frozen=True)
class LiveUsage:
    """A running run's figures so far, read from its scope's cgroup at this tick, or
    why there are none (`note`): never zeros for what cannot be known."""

    figures: dict[str, Any] | None
    note: str | None = None


@dataclass(frozen=True)
class WorkspaceFacts:
    """A run's workspace: what its plan asked for and, once made, what happened."""

    spec: dict[str, Any]        # the plan's [workspace]: repo, ref, land, target
    row: WorkspaceRow | None    # None: the DB has no workspace row for the run


class MonitorData:
    def __init__(self, db_path: str) -> None:
        self.db_path = db_path
        self.store: Store | None = None
        self.runs: dict[int, RunRow] = {}
        self.last_event_id = 0
        self.problem: str | None = "opening the state DB…"
        # A plan never changes: its [workspace] is read once per run (None: it has none).
        self.specs: dict[int, dict[str, Any] | None] = {}
        self.pool_use: dict[str, int] = {}  # running runs per pool (store.pool_use)

    def refresh(self) -> Update:
        try:
            if self.store is None:
                return self._load()
            return self._follow()
        except (StoreError, sqlite3.Error) as exc:
            self._close()
            self.problem = _explain(exc, self.db_path)
            return Update()

    def _load(self) -> Update:
        self.store = Store.open(self.db_path, readonly=True)
        self.specs.clear()  # another DB (or a restored one) may reuse run ids
        self.last_event_id = self.store.last_event_id()
        self.runs = {run.id: run for run in
                     self.store.active_and_recent_runs(RECENT_FINISHED)}
        # Runs awaiting review wait for a person, however old: never cut off with the
        # finished ones (they are few; events keep them current from here on).
        self.runs.update((run.id, run) for run in self.store.list_runs(
            limit=None, states=(RunState.AWAITING_REVIEW,)))
        self.pool_use = self.store.pool_use()
        backlog = self.store.events(after_id=max(0, self.last_event_id - EVENT_BACKLOG),
                                    limit=EVENT_BACKLOG)
        self.problem = None
        return Update(changed=set(self.runs), events=backlog, reloaded=True)

    def _follow(self) -> Update:
        assert self.store is not None
        self.store.reopen_if_stale()
        events = self.store.events(after_id=self.last_event_id, limit=MAX_EVENTS_PER_TICK)
        if not events:
            return Update()
        self.last_event_id = events[-1].id
        touched = {e.run_id for e in events if e.run_id is not None}
        deleted = {i for e in events if e.kind == "runs_deleted"
                   for i in e.detail.get("ids") or [] if isinstance(i, int)}
        fresh = {run.id: run for run in self.store.runs_by_ids(sorted(touched))}
        self.pool_use = self.store.pool_use()  # runs take and free slots only with events
        self.runs.update(fresh)
        removed = (touched - set(fresh)) | (deleted & set(self.runs))
        for run_id in removed:
            self.runs.pop(run_id, None)
            self.specs.pop(run_id, None)
        return Update(changed=set(fresh), removed=removed, events=events)

    def steps(self, run_id: int) -> list[StepRow]:
        if self.store is None:
            return []
        try:
            return self.store.get_steps(run_id)
        except (StoreError, sqlite3.Error):
            return []

    def run_events(self, run_id: int, count: int = EVENT_BACKLOG) -> list[EventRow]:
        if self.store is None:
            return []
        try:
            return self.store.last_events(run_id, count)
        except (StoreError, sqlite3.Error):
            return []

    def workspace(self, run_id: int) -> WorkspaceFacts | None:
        """The run's workspace facts, or None when its plan has none (or on a read error:
        the detail then shows nothing rather than something stale)."""
        if self.store is None:
            return None
        try:
            if run_id not in self.specs:
                if len(self.specs) >= MAX_PLANS_KEPT:
                    self.specs.clear()
                self.specs[run_id] = self.store.workspace_spec(run_id)
            spec = self.specs[run_id]
            if spec is None:
                return None
            return WorkspaceFacts(spec, self.store.workspace(run_id))
        except (StoreError, sqlite3.Error):
            return None

    def live_usage(self, run_id: int) -> LiveUsage:
        """What the running run `run_id` has consumed so far, from its scope's cgroup
        files (accounting.scope_usage): located through its runner's pid, read fresh
        from the DB each time (the daemon records the pid after the run's start event,
        with no event of its own). Only the run id names the scope, never the DB."""
        if self.store is None:
            return LiveUsage(None, "live figures: the state DB is not readable")
        try:
            found = self.store.runs_by_ids([run_id])
        except (StoreError, sqlite3.Error):
            return LiveUsage(None, "live figures: the state DB is not readable")
        run = found[0] if found else None
        if run is None or run.state is not RunState.RUNNING:
            return LiveUsage(None, None)
        if not run.unit:
            return LiveUsage(None, "live figures need a scope (isolation none)")
        if not isinstance(run.runner_pid, int) or run.runner_pid <= 0:
            return LiveUsage(None, "live figures: waiting for the run's runner")
        figures = scope_usage(run.id, run.runner_pid)
        if figures is None:
            return LiveUsage(None, "live figures: the run's runner is not in its scope "
                                   "(starting or ending)")
        return LiveUsage(figures)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for run in self.runs.values():
            counts[run.state.value] = counts.get(run.state.value, 0) + 1
        return counts

    def _close(self) -> None:
        if self.store is not None:
            with contextlib.suppress(sqlite3.Error):
                self.store.close()
            self.store = None

    def close(self) -> None:
        self._close()


def _explain(exc: Exception, db_path: str) -> str:
    """A banner line that says what is wrong and what to do."""
    if isinstance(exc, SchemaTooNew):
        return f"{exc} — this monitor is older than the daemon; upgrade minipipe"
    if isinstance(exc, StoreMissing):
        return f"{db_path} does not exist yet — start the daemon (systemctl start minipipe)"
    text = str(exc)
    if "locked" in text or "busy" in text:
        return f"{db_path} is locked by another process; retrying"
    return text
