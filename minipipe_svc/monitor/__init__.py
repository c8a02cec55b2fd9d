"""minipipe-monitor: the live, read-only Textual view of runs, steps, events and output."""

from __future__ import annotations

import os


def run_tui_monitor(db_path: str, poll_interval: float = 2.0, *,
                    log_dir: str | None = None) -> None:
    """Run the monitor in this terminal until the user quits (the seed's entry point)."""
    from .app import MonitorApp

    log_dir = log_dir or _log_dir_for(db_path)
    MonitorApp(db_path, log_dir, poll_interval=poll_interval).run()


def _log_dir_for(db_path: str) -> str:
    """The config's log_dir when the config names this DB (the package's case), else
    the private instance's default, <db dir>/logs."""
    from ..config import ConfigError, load_config

    try:
        config = load_config(None)
    except ConfigError:
        config = None
    if config is not None and os.path.abspath(config.db_path) == os.path.abspath(db_path):
        return config.log_dir
    return os.path.join(os.path.dirname(os.path.abspath(db_path)), "logs")
