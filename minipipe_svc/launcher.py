"""Starting runners and telling whether they still live, with isolation "none".

Each runner is a plain process in its own session, so a Ctrl-C or SIGTERM aimed
at the daemon never reaches it. The systemd adapter provides the same interface
for isolation "scope".
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from typing import Protocol

from . import procs
from .plan import Limits
from .runner import clean_environment
from .store import RunRow


@dataclass
class LaunchedRunner:
    pid: int
    start_time: int | None
    unit: str | None
    process: subprocess.Popen[bytes] | None  # None when adopted after a daemon restart


class Launcher(Protocol):
    def unit_name(self, run_id: int) -> str | None: ...

    def launch(self, run_id: int, argv: list[str], limits: Limits) -> LaunchedRunner: ...

    def is_alive(self, run: RunRow) -> bool: ...

    def stop_leftovers(self, run: RunRow) -> str | None:
        """After a runner vanished: stop what is left of its run; say what was done."""


class ProcessLauncher:
    """Runners as process groups of their own; no systemd needed."""

    def unit_name(self, run_id: int) -> str | None:
        return None

    def launch(self, run_id: int, argv: list[str], limits: Limits) -> LaunchedRunner:
        """Start the runner; only runtime_max of the limits applies here (the runner
        enforces it), the others need a scope."""
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True,
                                   env=clean_environment(dict(os.environ)), close_fds=True)
        return LaunchedRunner(process.pid, procs.start_time(process.pid), None, process)

    def is_alive(self, run: RunRow) -> bool:
        return procs.is_alive(run.runner_pid, run.runner_start)

    def stop_leftovers(self, run: RunRow) -> str | None:
        return None  # the daemon kills the step's process group itself
