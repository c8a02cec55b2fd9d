"""The launch strategies, all in one place: how a runner starts, lives and is cleaned up.

- ProcessLauncher (isolation "none"): the runner is a process group of its own.
- ScopeLauncher (isolation "scope"): the runner lives in `minipipe-run-<id>.scope`
  under minipipe.slice, created through the systemd adapter (systemd.py).

A runner is forked from the daemon, which has already imported everything it
needs: starting one costs a fork (about a millisecond), not a Python start and
its imports (~20-100 ms, measured in bench/). The child leaves the daemon's
session, drops every inherited descriptor and signal handler, optionally joins
its scope, opens its log sinks and runs `runner.execute` with them. The runner
keeps the daemon's user (root under systemd); each step drops to the run's user.

When the config sets `minipipe_command`, the runner is exec'd as that command
instead (slower, but lets an operator wrap it, e.g. in a profiler).

Each runner is in its own session, so a Ctrl-C or SIGTERM aimed at the daemon
never reaches it. Root acts only on what it computes: unit names come from run
ids, and a pid read back from the DB is signalled only after its identity (start
time, and under systemd the run's own cgroup) is checked.
"""

from __future__ import annotations

import functools
import gc
import os
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from . import procs, runner, systemd
from .plan import Limits
from .runner import RunnerArgs, clean_environment
from .sinks import open_sinks
from .store import RunRow, StepRow

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

    def stop_leftovers(self, run: RunRow, steps: list[StepRow]) -> str | None:
        """After a runner vanished: stop what is left of its run; say what was done."""

    def confine(self, kind: str, seconds: float) -> Callable[[], None] | None:
        """For a helper forked from the daemon that will run programs as a user (a
        submit's repository check, a worktree removal): what it calls first, as
        root, to leave the service's cgroup for a scope of its own (see
        systemd.join_helper_scope); None where there are no scopes."""

    def release(self, kind: str, pid: int) -> None:
        """The helper `pid` ended: stop whatever it left behind in its scope."""


def fork_runner(args: RunnerArgs, setup: Callable[[], None] | None = None) -> ForkedProcess:
    """Fork a runner for `args.run_id`; `setup` runs in the child before the run.

    If `setup` fails (no scope, no such user), the child records the run FAILED
    with the reason instead of running it; if it raises TryLater, the run goes back
    to the queue. The caller must have no SQLite connection open: SQLite's locking
    state does not survive fork().
    """
    return ForkedProcess(fork_task(functools.partial(_run_forked, args, setup)))


def _run_forked(args: RunnerArgs, setup: Callable[[], None] | None) -> int:
    """The forked runner's life, after it left the daemon: its exit status."""
    try:
        if setup is not None:
            setup()
    except (TryLater, systemd.ShuttingDown) as exc:
        return runner.requeue(args, str(exc))
    except Exception as exc:
        return runner.record_launch_failure(args, f"could not set up the run: {exc}")
    return runner.execute(args, open_sinks(args.log_dir, args.run_id, journal=args.journal))


def fork_task(task: Callable[[], int], first: Callable[[], None] | None = None) -> int:
    """Fork a child of the daemon's that sheds the daemon (`_leave_the_daemon`), runs
    `first` (if any), then `task`, and exits with its status (70 if either raised);
    returns the child's pid. A runner is one, a worktree removal another. The
    caller must have no SQLite connection open: SQLite's locking state does not
    survive fork()."""
    sys.stdout.flush()  # or the child would write the daemon's buffered output again
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    status = 70
    try:
        _leave_the_daemon()
        if first is not None:
            first()
        status = task()
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
    """Runners as process groups of their own; no systemd needed (and no scope to
    confine a helper's programs in: they stay in the daemon's process tree)."""

    def confine(self, kind: str, seconds: float) -> Callable[[], None] | None:
        return None

    def release(self, kind: str, pid: int) -> None:
        pass

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

    def stop_leftovers(self, run: RunRow, steps: list[StepRow]) -> str | None:
        """Kill what is left of the steps' process groups (members no older than the
        recorded leader, so a reused pgid is never hit)."""
        killed = sum(procs.kill_orphaned_group(step.pid, step.pid_start)
                     for step in steps if step.state.value == "RUNNING")
        return f"killed {killed} leftover step process(es)" if killed else None


class ScopeLauncher:
    """Runners in `minipipe-run-<id>.scope` under minipipe.slice.

    Forked (the daemon is root): the child joins its scope itself, then runs.
    With `minipipe_command` (or a daemon that is not root) `systemd-run --scope`
    starts the runner command instead.
    """

    def __init__(self, command: tuple[str, ...] = ()) -> None:
        self.command = command  # empty: fork, join the scope from inside (needs root)
        self.fork = not command and os.geteuid() == 0
        if self.fork:  # what every forked runner needs, done once here
            from systemd import journal  # noqa: F401

            from .journal import current_journald_rate_limit

            current_journald_rate_limit()
            procs.libc()

    def unit_name(self, run_id: int) -> str | None:
        return systemd.unit_name(run_id)

    def confine(self, kind: str, seconds: float) -> Callable[[], None] | None:
        if not self.fork:
            return None  # not root: no scope of its own for a forked helper
        return functools.partial(systemd.join_helper_scope, kind, seconds)

    def release(self, kind: str, pid: int) -> None:
        if self.fork:
            systemd.stop_helper_scope(kind, pid)

    def launch(self, args: RunnerArgs, limits: Limits) -> LaunchedRunner:
        description = f"minipipe run {args.run_id}"
        unit = systemd.unit_name(args.run_id)
        if self.fork:
            child = fork_runner(args, lambda: systemd.join_new_scope(args.run_id, limits,
                                                                    description))
            return LaunchedRunner(child.pid, procs.start_time(child.pid), unit, child)
        runner_argv = [*(self.command or RUNNER_MODULE_COMMAND), *args.argv()]
        command = systemd.scope_argv(args.run_id, runner_argv, limits=limits,
                                     description=description)
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True,
                                   env=clean_environment(dict(os.environ)), close_fds=True)
        return LaunchedRunner(process.pid, procs.start_time(process.pid), unit, process)

    def is_alive(self, run: RunRow) -> bool:
        """The recorded runner lives, is the same process, and is in the run's scope."""
        return (procs.is_alive(run.runner_pid, run.runner_start) and run.runner_pid is not None
                and systemd.in_unit(run.runner_pid, systemd.unit_name(run.id)))

    def stop_leftovers(self, run: RunRow, steps: list[StepRow]) -> str | None:
        """Stop the run's scope if something still lives in it; returns what was done.

        The unit name is computed from the run id, never read from the DB.
        """
        unit = systemd.unit_name(run.id)
        if systemd.unit_state(unit) not in ("active", "activating", "deactivating"):
            return None
        systemd.stop_unit(unit)
        return f"stopped {unit}"
