"""Reading a run's output back: from the journal or the file mirror, never silently short.

The runner writes every line to the file mirror in `log_dir` and, in a scope, to
the journal too, and records how many lines it wrote. A reader prefers the
journal for runs that have one, checks its count against the runner's, and
switches to the complete file mirror (saying so) when journald dropped lines or
this user may not read the journal.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

from .logs import LogLine, log_path, read_log
from .store import RunRow, Store

FOLLOW_POLL_SECONDS = 0.2
# journald may store a burst a little after the sender exits (~1 s for 100k lines).
JOURNAL_CATCH_UP_SECONDS = 5.0
NO_JOURNAL_ACCESS = "no journal access (join group systemd-journal or adm)"


class OutputReader:
    def __init__(self, store: Store, run: RunRow, log_dir: str, source: str = "auto") -> None:
        self.store, self.run = store, run
        self.path = log_path(log_dir, run.id)
        self.notes: list[str] = []
        self.source = source if source != "auto" else (
            "journal" if run.unit and _journal_module() else "file")

    def lines(self, *, follow: bool = False) -> Iterator[LogLine]:
        if self.source == "journal":
            yield from self._from_journal(follow)
        else:
            yield from self._from_file(follow)

    def _refresh(self) -> None:
        self.store.reopen_if_stale()
        self.run = self.store.get_run(self.run.id)

    def _from_file(self, follow: bool) -> Iterator[LogLine]:
        offset, printed = 0, 0
        while True:
            lines, offset = read_log(self.path, offset)
            yield from lines
            printed += len(lines)
            if not follow or (self.run.state.is_terminal and not lines):
                break
            if not lines:
                time.sleep(FOLLOW_POLL_SECONDS)
                self._refresh()
        if printed == 0 and self.run.state.is_terminal and not os.path.exists(self.path):
            self.notes.append(f"run {self.run.id} has no recorded output "
                              f"({self.path} does not exist)")

    def _from_journal(self, follow: bool) -> Iterator[LogLine]:
        from .journal import read_journal

        if not journal_readable():
            self.notes.append(f"{NO_JOURNAL_ACCESS}; showing the file mirror {self.path}")
            yield from self._from_file(follow)
            return
        if not follow:
            yield from self._complete_journal()
            return
        cursor, count = None, 0
        while True:
            lines, cursor = read_journal(self.run.id, cursor, since=self.run.created_at)
            yield from lines
            count += len(lines)
            if self.run.state.is_terminal and not lines:
                break
            if not lines:
                time.sleep(FOLLOW_POLL_SECONDS)
                self._refresh()
        expected = self.store.output_lines(self.run.id)
        if expected is not None and count < expected:
            self.notes.append(f"{_shortfall(count, expected)}; the complete output is in "
                              f"{self.path} (`minipipe logs --source file`)")

    def _complete_journal(self) -> list[LogLine]:
        """All journal lines if the journal has them all; else the file's, with a note."""
        from .journal import read_journal

        lines, _cursor = read_journal(self.run.id, since=self.run.created_at)
        expected = self.store.output_lines(self.run.id) if self.run.state.is_terminal else None
        deadline = time.monotonic() + JOURNAL_CATCH_UP_SECONDS
        while expected is not None and len(lines) < expected and time.monotonic() < deadline:
            time.sleep(FOLLOW_POLL_SECONDS)
            lines, _cursor = read_journal(self.run.id, since=self.run.created_at)
        if expected is None or len(lines) >= expected:
            return lines
        self.notes.append(f"{_shortfall(len(lines), expected)}; showing the complete file "
                          f"mirror {self.path}")
        file_lines, _offset = read_log(self.path)
        return file_lines


def _shortfall(kept: int, expected: int) -> str:
    return (f"the journal kept {kept} of {expected} lines (journald dropped "
            f"{expected - kept})")


def _journal_module() -> bool:
    try:
        import systemd.journal  # noqa: F401
    except ImportError:
        return False
    return True


def journal_shortfall(store: Store, run: RunRow) -> tuple[int, int] | None:
    """(lines the journal kept, lines written) for a finished run in a scope, if short."""
    if not run.unit or not run.state.is_terminal or not journal_readable():
        return None
    expected = store.output_lines(run.id)
    if expected is None or not _journal_module():
        return None
    from .journal import count_journal_lines

    kept = count_journal_lines(run.id, since=run.created_at)
    return (kept, expected) if kept < expected else None


class OutputFollower:
    """Incremental reads of one run's output, for a live view (the monitor).

    Chooses the journal when the run has one and this user may read it, else the
    file mirror; `note` says which and why, for the screen. Each `poll()` returns
    only lines not returned before. The first poll returns at most `backlog` lines.
    """

    def __init__(self, run: RunRow, log_dir: str, *, backlog: int = 2000) -> None:
        self.run_id = run.id
        self.created_at = run.created_at
        self.path = log_path(log_dir, run.id)
        self.backlog = backlog
        self.cursor: str | None = None
        self.offset = 0
        self.first = True
        self.note: str | None = None
        self.source = "file"
        if run.unit and _journal_module():
            if journal_readable():
                self.source = "journal"
            else:
                self.note = f"{NO_JOURNAL_ACCESS}; showing the file mirror"

    def poll(self) -> list[LogLine]:
        if self.source == "journal":
            from .journal import read_journal

            lines, self.cursor = read_journal(self.run_id, self.cursor,
                                              since=self.created_at)
            if self.first and not lines and os.path.exists(self.path):
                self.source = "file"
                self.note = "the journal has no lines for this run; showing the file mirror"
                return self.poll()
        else:
            try:
                lines, self.offset = read_log(self.path, self.offset)
            except PermissionError:
                self.note = f"cannot read {self.path} (permission denied)"
                lines = []
        if self.first:
            self.first = False
            if len(lines) > self.backlog:
                lines = lines[-self.backlog:]
        return lines


def journal_readable() -> bool:
    """Whether this user can read system journal entries at all (root, systemd-journal, adm)."""
    if os.geteuid() == 0:
        return True
    try:
        import grp

        groups = {grp.getgrgid(g).gr_name for g in os.getgroups()}
    except KeyError:
        groups = set()
    return bool(groups & {"systemd-journal", "adm", "wheel"})
