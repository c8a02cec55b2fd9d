"""Where a run's output goes: the file mirror always, the journal under systemd.

Chosen by whoever starts the runner (launcher.py for a forked runner, runner.main
for an exec'd one) and handed to it, so the runner itself knows only the LogSink
interface. Imports go one way: sinks -> journal -> logs.
"""

from __future__ import annotations

from .logs import FileLogSink, LogSink, log_path


def open_sinks(log_dir: str, run_id: int, *, journal: bool) -> list[LogSink]:
    sinks: list[LogSink] = [FileLogSink(log_path(log_dir, run_id))]
    if journal:
        from .journal import JournalSink

        sinks.append(JournalSink(run_id))
    return sinks
