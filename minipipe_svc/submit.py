"""Queueing a plan: the work behind `minipipe submit`, without click.

`minipipe submit plan.toml` is the command scripts call in loops, so it has a
fast path (entry.py) that never imports click, sqlite3 or tomllib; both paths
call `submit_and_report`, so they print and exit alike. The daemon validates the
plan and answers with the run id or the plan's file:line error.
"""

from __future__ import annotations

import sys

from .client import ClientError, PlanError, submit
from .protocol import EXIT_FOR_ERROR

EXIT_BAD_INPUT = EXIT_FOR_ERROR["bad_plan"]


def submit_and_report(socket_path: str, plan_arg: str, *, as_json: bool,
                      fmt: str | None = None, priority: int | None = None,
                      stdin: bytes | None = None,
                      waits: dict[str, object] | None = None) -> int:
    """Submit one plan, print the run id (or its JSON) or the error; the exit status."""
    try:
        reply = submit(socket_path, plan_arg, fmt=fmt, priority=priority, stdin=stdin,
                       read_back=as_json, waits=waits)
    except PlanError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ClientError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return exc.exit_status
    if as_json:
        import json

        print(json.dumps(reply["run_json"], indent=2))
    else:
        runs = reply.get("runs") or [reply["run"]]
        print("\n".join(str(run) for run in runs))  # a matrix: one id per run
        if len(runs) > 1:
            print(f"group {reply['group']}: {len(runs)} runs (`minipipe wait "
                  f"{' '.join(str(r) for r in runs[:3])}{' ...' if len(runs) > 3 else ''}`"
                  " waits for all)", file=sys.stderr)
    return 0
