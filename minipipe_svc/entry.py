"""The `minipipe` executable: a click-free fast path for the plainest submit.

`minipipe [--config PATH] submit [--json] PLAN` is what scripts run in loops;
importing click costs more than the submit itself (bench/ measures both), so that
exact form is served here. Every other command line, including any other option,
`--help` and every mistake, goes to the click CLI (cli.py), which owns usage.
Both paths submit through submit.py, so they print and exit alike.
"""

from __future__ import annotations

import sys

EXIT_BAD_INPUT = 2


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
    from .submit import submit_and_report

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return submit_and_report(config.socket_path, plan, as_json=as_json)


def main() -> None:
    """Never returns: exits with the command's status (no typing import: start-up)."""
    quick = plain_submit(sys.argv[1:])
    if quick is None:
        from .cli import main as click_main

        click_main()
    try:
        sys.exit(quick_submit(*quick))
    except KeyboardInterrupt:
        sys.exit(130)
