"""minipipe: a systemd-native queue and runner for pipeline runs.

The Python entry points kept for people coming from the MINI_PIPE daemon and
monitor (documented in the README, "Python entry points"):

    minipipe_svc.run_daemon(config_path, db_path)       # as `minipipe daemon`
    minipipe_svc.run_tui_monitor(db_path, poll_interval) # as `minipipe-monitor`

Both accept str or pathlib.Path. They import their machinery only when called,
so `import minipipe_svc` stays cheap.
"""

from __future__ import annotations

import os

__version__ = "0.2.0"

__all__ = ["__version__", "run_daemon", "run_tui_monitor"]


def run_daemon(config_path: str | os.PathLike[str] | None = None,
               db_path: str | os.PathLike[str] | None = None) -> int:
    """Run the scheduler in the foreground until SIGTERM/SIGINT; returns its exit status.

    `db_path`, when given, replaces the config's db_path (as `--db-path` does).
    """
    from .config import load_config
    from .daemon import serve

    path = os.fspath(config_path) if config_path is not None else None
    config = load_config(path)
    if db_path is not None:
        config = config._replace(db_path=os.path.abspath(os.fspath(db_path)))
    return serve(config, path)


def run_tui_monitor(db_path: str | os.PathLike[str], poll_interval: float = 2.0, *,
                    log_dir: str | os.PathLike[str] | None = None) -> None:
    """Run the read-only monitor in this terminal until the user quits."""
    from .monitor import run_tui_monitor as run

    run(os.fspath(db_path), poll_interval,
        log_dir=os.fspath(log_dir) if log_dir is not None else None)
