"""minipipe-monitor: the live, read-only Textual view of runs, steps, events and output."""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..config import Config


def run_tui_monitor(db_path: str, poll_interval: float = 2.0, *,
                    log_dir: str | None = None, pools: dict[str, int] | None = None) -> None:
    """Run the monitor in this terminal until the user quits (the seed's entry point)."""
    from .app import MonitorApp

    config = _config_for(db_path) if log_dir is None or pools is None else None
    if log_dir is None:
        log_dir = config.log_dir if config is not None else os.path.join(
            os.path.dirname(os.path.abspath(db_path)), "logs")
    if pools is None:
        pools = config.pools if config is not None else {}
    MonitorApp(db_path, log_dir, poll_interval=poll_interval, pools=pools).run()


def _config_for(db_path: str) -> Config | None:
    """The config when it names this DB (the package's case): its log_dir and pools;
    else None (a private instance's defaults: <db dir>/logs, no pools)."""
    from ..config import ConfigError, load_config

    try:
        config = load_config(None)
    except ConfigError:
        return None
    if os.path.abspath(config.db_path) == os.path.abspath(db_path):
        return config
    return None
