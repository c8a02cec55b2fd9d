"""`minipipe-monitor`: parse the few options and start the app (argparse: starts fast)."""

from __future__ import annotations

import argparse
import os
import sys

from ..config import ConfigError, load_config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="minipipe-monitor",
        description="A live, read-only terminal view of minipipe: runs, the selected run's "
                    "steps, events and output. Opens the state DB read-only and never "
                    "writes anything. Keys: arrows/j/k move, enter opens a run, tab next "
                    "pane, / filter, a active/all, e events run/all, f follow, d the run's diff, "
                    "r refresh, ? help, q quit.")
    parser.add_argument("--config", metavar="PATH",
                        help="config file (default: $MINIPIPE_CONFIG or "
                             "/etc/minipipe/config.json); gives db_path and log_dir")
    parser.add_argument("--db-path", metavar="PATH", help="the state DB (overrides the config)")
    parser.add_argument("--log-dir", metavar="PATH",
                        help="the run output file mirror (overrides the config)")
    parser.add_argument("--poll-interval", type=float, default=2.0, metavar="SECONDS",
                        help="how often to look for changes (default: 2.0)")
    args = parser.parse_args(argv)
    if not 0.05 <= args.poll_interval <= 3600:
        parser.error("--poll-interval must be between 0.05 and 3600 seconds")
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        if not args.db_path:
            print(f"minipipe-monitor: {exc}", file=sys.stderr)
            sys.exit(2)
        config = None
    db_path = args.db_path or (config.db_path if config else "")
    log_dir = args.log_dir or (config.log_dir if config and not args.db_path else
                               os.path.join(os.path.dirname(os.path.abspath(db_path)), "logs"))
    # The pools' sizes are the config's, if it is this DB's (`status` shows the same).
    same_db = config is not None and os.path.abspath(config.db_path) == os.path.abspath(db_path)
    from . import run_tui_monitor

    run_tui_monitor(db_path, args.poll_interval, log_dir=log_dir,
                    pools=config.pools if config is not None and same_db else {})
