"""minipipe-monitor: the live, read-only Textual view of runs, steps, events and output."""

from __future__ import annotations

import os


def run_tui_monitor(db_path: str, poll_interval: float = 2.0, *,
                    log_dir: str | None = None) -> None:
    """Run the monitor in this terminal until the user quits (the seed's entry point)."""
    from .app import MonitorApp

    log_dir = log_dir or os.path.join(os.path.dirname(os.path.abspath(db_path)), "logs")
    MonitorApp(db_path, log_dir, poll_interval=poll_interval).run()
