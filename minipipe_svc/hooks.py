"""Site-wide hooks when a run ends: config `on_finish`, run by the daemon.

Each time a run ends (an event `run_finished`), the daemon starts the hook's argv
as `on_finish_user` (never root), with the run's facts in its environment, in a
session of its own (under systemd also a scope of its own,
`minipipe-hook-<pid>.scope`), and goes on: it reaps the hook on a later pass, or
kills it at `on_finish_timeout_seconds`. Either way what it left running (a
`curl &`) goes with it: its session, and its scope, are killed. A failing or
hanging hook is logged and never blocks the scheduler; at most MAX_HOOKS run at
once, the others wait their turn. Which runs' ends were handed to a hook is the
last event id done, kept in the DB (`settings`), so a restart neither skips nor
repeats one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from .logs import log_path
from .store import RunRow, Store, parse_time

log = logging.getLogger("minipipe.hooks")

MAX_HOOKS = 4
TAIL_LINES = 20
TAIL_BYTES = 4096
CURSOR_KEY = "on_finish_cursor"


@dataclass
class RunningHook:
    run_id: int
    proc: subprocess.Popen[bytes]
    deadline: float


class FinishHooks:
    def __init__(self, argv: tuple[str, ...], user: str, timeout: float, log_dir: str, *,
                 confine: Callable[[str, float], Callable[[], None] | None] | None = None,
                 release: Callable[[str, int], None] | None = None) -> None:
        """`confine` and `release`: the launcher's, to put each hook in a scope of its
        own (as root, in the child, before it becomes on_finish_user) and stop it."""
        self.argv, self.user, self.timeout, self.log_dir = argv, user, timeout, log_dir
        self.confine, self.release = confine, release
        self.running: list[RunningHook] = []
        self.cursor_forgotten = False  # (without a hook: once per daemon and reload)

    def pass_(self, store: Store) -> None:
        """Reap and time out running hooks, then start hooks for runs that ended."""
        self.reap()
        if not self.argv:
            # No hook now: one configured later starts with the next run that ends,
            # not with every run that ended meanwhile.
            if not self.cursor_forgotten:
                store.forget_setting(CURSOR_KEY)
                self.cursor_forgotten = True
            return
        if len(self.running) >= MAX_HOOKS:
            return
        cursor = store.setting(CURSOR_KEY)
        if cursor is None:  # hooks just configured: from now on, not for the past
            store.set_setting(CURSOR_KEY, str(store.last_event_id()))
            return
        for event_id, run, ended in store.runs_ended_after(int(cursor),
                                                           MAX_HOOKS - len(self.running)):
            self.start(run, ended)
            store.set_setting(CURSOR_KEY, str(event_id))

    def start(self, run: RunRow, ended: dict[str, object]) -> None:
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/",
               **hook_environment(run, ended, self.tail(run.id))}
        try:
            entry = pwd.getpwnam(self.user)
            root = os.geteuid() == 0
            if root and entry.pw_uid == 0:
                raise ValueError("on_finish_user must not be root")
            join = self.confine("hook", self.timeout) if self.confine else None

            def become_the_hook() -> None:
                """In the child, as root, just before exec: its scope, then its user.
                (Popen's own user switch would come first: no scope as nobody.)"""
                if join is not None:
                    join()
                if root:
                    os.setgroups([])
                    os.setgid(entry.pw_gid)
                    os.setuid(entry.pw_uid)

            proc = subprocess.Popen(list(self.argv), env=env, cwd="/", stdin=subprocess.DEVNULL,
                                    start_new_session=True, close_fds=True,
                                    preexec_fn=become_the_hook)
        except (KeyError, OSError, ValueError, subprocess.SubprocessError) as exc:
            log.error("on_finish for run %d could not start: %s", run.id, exc)
            return
        self.running.append(RunningHook(run.id, proc,
                                        time.monotonic() + self.timeout))

    def stop_all(self) -> None:
        """As the daemon stops: no hook outlives it (nobody would time it out)."""
        for hook in self.running:
            hook.deadline = 0.0
            log.warning("on_finish for run %d stopped with the daemon", hook.run_id)
        self.reap()

    def reap(self) -> None:
        now = time.monotonic()
        for hook in list(self.running):
            pid = hook.proc.pid
            try:  # ended? (not reaped yet: its session id stays its own meanwhile)
                ended = os.waitid(os.P_PID, pid,
                                  os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
            except ChildProcessError:
                ended = True
            if not ended and now < hook.deadline:
                continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)  # the hook, or what it left in its session
            status = hook.proc.wait()
            if self.release is not None:
                self.release("hook", pid)  # and what left its session: the scope goes
            if not ended and hook.deadline:
                log.warning("on_finish for run %d did not finish within %gs: killed",
                            hook.run_id, self.timeout)
            elif status != 0:
                log.warning("on_finish for run %d exited with status %d", hook.run_id, status)
            self.running.remove(hook)

    def wait(self) -> float:
        """Seconds until a running hook's deadline (the loop wakes to kill it)."""
        if not self.running:
            return 3600.0
        return max(0.0, min(hook.deadline for hook in self.running) - time.monotonic())

    def tail(self, run_id: int) -> str:
        """The run's last output lines ("step | text", minipipe's own left out), from
        its log mirror."""
        try:
            fd = os.open(log_path(self.log_dir, run_id), os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return ""
        with os.fdopen(fd, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            start = max(0, size - 4 * TAIL_BYTES)
            handle.seek(start)
            data = handle.read()
        # Records end in "\n" only (a step's text may hold \r, \x1e, U+2028, ...:
        # splitlines() would make a line of another step of them); the first one
        # after a seek is a record's end.
        records = data.split(b"\n")[1 if start else 0:-1]
        lines = []
        for record in records:
            fields = record.decode("utf-8", "replace").split("\t", 4)
            if len(fields) == 5 and fields[3] in ("stdout", "stderr"):
                lines.append(f"{fields[1]} | {fields[4]}")
        tail = "\n".join(lines[-TAIL_LINES:]).replace("\0", "").encode()[-TAIL_BYTES:]
        return tail.decode("utf-8", "ignore")  # (a character cut in two goes)


def hook_environment(run: RunRow, ended: dict[str, object], tail: str) -> dict[str, str]:
    """What a hook learns about the run that ended (pure; see tests)."""
    started = parse_time(run.started_at)
    finished = parse_time(run.finished_at)
    duration = (f"{(finished - started).total_seconds():.3f}" if started and finished
                else "")
    exit_code = ended.get("exit_code")
    values = {
        "MINIPIPE_RUN_ID": str(run.id), "MINIPIPE_RUN_NAME": run.name,
        "MINIPIPE_RUN_OWNER": run.submitted_by or "",
        "MINIPIPE_RUN_STATE": str(ended.get("state") or ""),
        "MINIPIPE_RUN_EXIT_CODE": "" if exit_code is None else str(exit_code),
        "MINIPIPE_RUN_REASON": str(ended.get("reason") or ""),
        "MINIPIPE_RUN_DURATION": duration, "MINIPIPE_RUN_OUTPUT_TAIL": tail,
    }
    return {key: value.replace("\0", "") for key, value in values.items()}

