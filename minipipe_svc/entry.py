"""The `minipipe` executable: a click-free fast path for the plainest submit.

`minipipe [--config PATH] submit [--json] PLAN` is what scripts run in loops;
importing click costs more than the submit itself (bench/ measures both), so that
exact form is served here. Every other command line, including any other option,
`--help` and every mistake, goes to the click CLI (cli.py), which owns usage.
Both paths queue through submit.py, so they print and exit alike.
"""

from __future__ import annotations

import json
import sys
from typing import NoReturn

EXIT_FAILURE, EXIT_BAD_INPUT = 1, 2


def plain_submit(argv: list[str]) -> tuple[str | None, bool, str] | None:
    """(config path, --json, plan) when argv is a plain submit, else None."""
    config_path = None
    if argv[:1] == ["--config"] and len(argv) >= 2:
        config_path, argv = argv[1], argv[2:]
    elif argv[:1] and argv[0].startswith("--config="):
        config_path, argv = argv[0].split("=", 1)[1], argv[1:]
    if not config_path and config_path is not None:
        return None
    if argv[:1] != ["submit"]:
        return None
    options = [a for a in argv[1:] if a.startswith("-")]
    plans = [a for a in argv[1:] if not a.startswith("-")]
    if len(plans) != 1 or options not in ([], ["--json"]):
        return None
    return config_path, options == ["--json"], plans[0]


def quick_submit(config_path: str | None, as_json: bool, plan: str) -> int:
    from .config import ConfigError, load_config
    from .plan import PlanError
    from .store import StoreError
    from .submit import not_running_notice, submit_plan, submitted_json

    try:
        config = load_config(config_path)
        submitted, warnings = submit_plan(config, plan, read_back=as_json)
    except (ConfigError, PlanError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except StoreError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    for warning in warnings:
        print(f"minipipe: warning: {warning}", file=sys.stderr)
    print(json.dumps(submitted_json(submitted), indent=2) if as_json else submitted.run_id)
    if not submitted.daemon_running:
        print(not_running_notice(submitted.run_id), file=sys.stderr)
    return 0


def main() -> NoReturn:
    quick = plain_submit(sys.argv[1:])
    if quick is None:
        from .cli import main as click_main

        click_main()
    try:
        sys.exit(quick_submit(*quick))
    except KeyboardInterrupt:
        sys.exit(130)
