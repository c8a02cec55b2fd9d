"""Queueing a plan: the work behind `minipipe submit`, without click.

`minipipe submit plan.toml` is the command scripts call in loops, so it has a
fast path (entry.py) that never imports click; both paths share this code, so
they print and exit alike.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

from .config import Config
from .plan import Plan, load_plan
from .procs import user_name
from .store import RunRow, Store
from .wake import ping


class Submitted(NamedTuple):
    run_id: int
    run: RunRow | None  # read back only when asked (--json)
    daemon_running: bool


def submit_plan(config: Config, plan_arg: str, *, priority: int | None = None,
                fmt: str | None = None, stdin: bytes | None = None,
                read_back: bool = False) -> tuple[Submitted, list[str]]:
    """Validate and queue one plan; returns the result and warnings for the user.

    Raises PlanError for a bad plan, StoreError when the DB cannot take it.
    """
    parsed = load_plan(plan_arg, fmt=fmt, stdin=stdin)
    warnings = cwd_warnings(parsed, config)
    source = None if plan_arg == "-" else os.path.abspath(plan_arg)
    store = Store.open(config.db_path, create=True)
    try:
        run_id = store.submit(parsed.to_dict(), source=source, submitted_by=user_name(),
                              priority=priority)
        run = store.get_run(run_id) if read_back else None
    finally:
        store.close()
    return Submitted(run_id, run, ping(config.socket_path)), warnings


def not_running_notice(run_id: int) -> str:
    return (f"minipipe: queued run {run_id}, but the daemon is not running; it starts "
            "when the daemon does (`minipipe daemon` or `systemctl start minipipe`)")


def submitted_json(submitted: Submitted) -> dict[str, Any]:
    from .render import run_json

    assert submitted.run is not None
    return {**run_json(submitted.run), "daemon_running": submitted.daemon_running}


def cwd_warnings(plan: Plan, config: Config) -> list[str]:
    """Working directories the run user will not be able to enter (a common first trap)."""
    import grp
    import pwd
    import stat

    if config.isolation == "none" or not config.run_user:
        return []
    try:
        user = pwd.getpwnam(config.run_user)
    except KeyError:
        return []
    if user.pw_uid == os.getuid():
        return []
    groups = {g.gr_gid for g in grp.getgrall() if user.pw_name in g.gr_mem} | {user.pw_gid}
    warnings = []
    for cwd in sorted({step.cwd for step in plan.steps}):
        path = "/"
        for part in [p for p in cwd.split("/") if p] + [""]:
            path = os.path.join(path, part) if part else path
            try:
                info = os.stat(path)
            except OSError:
                break
            bit = (stat.S_IXUSR if info.st_uid == user.pw_uid else
                   stat.S_IXGRP if info.st_gid in groups else stat.S_IXOTH)
            if not info.st_mode & bit:
                warnings.append(f"{config.run_user} (the user runs execute as) cannot enter "
                                f"{path}, so steps with cwd {cwd} will fail; set cwd in the "
                                "plan or keep the plan in a directory it can read")
                break
    return warnings
