"""Starting runners and telling whether they still live, with isolation "none".

A runner is forked from the daemon, which has already imported everything it
needs: starting one costs a fork (about a millisecond), not a Python start and
its imports (~20-100 ms, measured in bench/). The child leaves the daemon's
session, drops every inherited descriptor and signal handler, optionally joins
its scope and switches user (systemd.py), then runs `runner.execute`.

When the config sets `minipipe_command`, the runner is exec'd as that command
instead (slower, but lets an operator wrap it, e.g. in a profiler).

Each runner is in its own session, so a Ctrl-C or SIGTERM aimed at the daemon
never reaches it. The systemd adapter provides the same interface for isolation
"scope".
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from . import procs, runner
from .plan import Limits
from .runner import RunnerArgs, clean_environment
from .store import RunRow

RUNNER_MODULE_COMMAND = (sys.executable, "-m", "minipipe_svc.runner")
RUNNER_PROCESS_NAME = "minipipe-runner"  # what ps and top show for a forked runner


class TryLater(Exception):
    """A runner's setup cannot succeed now but may later (e.g. during a shutdown)."""


class ForkedProcess:
    """A forked runner, with the part of Popen's interface the daemon uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: the DB will tell how it ended
                self.returncode = 0
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


@dataclass
class LaunchedRunner:
    pid: int
    start_time: int | None
    unit: str | None
    process: subprocess.Popen[bytes] | ForkedProcess | None  # None: adopted after a restart


class Launcher(Protocol):
    def unit_name(self, run_id: int) -> str | None: ...

    def launch(self, args: RunnerArgs, limits: Limits) -> LaunchedRunner: ...

    def is_alive(self, run: RunRow) -> bool: ...

    def stop_leftovers(self, run: RunRow) -> str | None:
        """After a runner vanished: stop what is left of its run; say what was done."""


def fork_runner(args: RunnerArgs, setup: Callable[[], None] | None = None) -> ForkedProcess:
    """Fork a runner for `args.run_id`; `setup` runs in the child before the run.

    If `setup` fails (no scope, no such user), the child records the run FAILED
    with the reason instead of running it; if it raises TryLater, the run goes back
    to the queue. The caller must have no SQLite connection open: SQLite's locking
    state does not survive fork().
    """
    sys.stdout.flush()  # or the child would write the daemon's buffered output again
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return ForkedProcess(pid)
    status = 70
    try:
        _leave_the_daemon()
        try:
            if setup is not None:
                setup()
        except TryLater as exc:
            status = runner.requeue(args, str(exc))
        except Exception as exc:
            status = runner.record_launch_failure(args, f"could not set up the run: {exc}")
        else:
            status = runner.execute(args)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def _leave_the_daemon() -> None:
    """In a freshly forked child: shed everything that belongs to the daemon."""
    # The daemon's objects stay in memory but are never collected here, so no
    # finalizer closes a descriptor number the child has reused meanwhile.
    gc.freeze()
    os.setsid()
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    # The DB connection, the wake socket, pidfds and above all the single-instance
    # lock: a runner holding a copy of the lock would block the next daemon.
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    # Python-level streams may have pointed at one of those (when embedded, in tests).
    sys.stdout = open(1, "w", closefd=False, buffering=1)  # noqa: SIM115
    sys.stderr = open(2, "w", closefd=False, buffering=1)  # noqa: SIM115
    try:
        with open("/proc/self/comm", "w") as comm:
            comm.write(RUNNER_PROCESS_NAME)
    except OSError:
        pass


class ProcessLauncher:
    """Runners as process groups of their own; no systemd needed."""

    def __init__(self, command: tuple[str, ...] = ()) -> None:
        self.command = command  # empty: fork
        if not command:
            procs.libc()  # once here rather than in every forked runner

    def unit_name(self, run_id: int) -> str | None:
        return None

    def launch(self, args: RunnerArgs, limits: Limits) -> LaunchedRunner:
        """Start the runner; only runtime_max of the limits applies here (the runner
        enforces it), the others need a scope."""
        if not self.command:
            child = fork_runner(args)
            return LaunchedRunner(child.pid, procs.start_time(child.pid), None, child)
        process = subprocess.Popen([*self.command, *args.argv()], stdin=subprocess.DEVNULL,
                                   start_new_session=True,
                                   env=clean_environment(dict(os.environ)), close_fds=True)
        return LaunchedRunner(process.pid, procs.start_time(process.pid), None, process)

    def is_alive(self, run: RunRow) -> bool:
        return procs.is_alive(run.runner_pid, run.runner_start)

    def stop_leftovers(self, run: RunRow) -> str | None:
        return None  # the daemon kills the step's process group itself
