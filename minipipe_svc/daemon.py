"""The scheduler daemon: the only writer of state. Serves the API, starts PENDING runs,
watches runners, repairs after crashes.

One loop, woken by an API request (server.py, actions.py), a runner exit (pidfd),
a signal, or the fallback poll. Each pass:

    reload config if asked · collect exited runners · deliver cancel requests ·
    start PENDING runs (priority, then age) up to max_concurrent_runs ·
    auto-cleanup when due · report status (and the watchdog, under systemd)

Runners own their runs once started, so stopping the daemon never stops a run;
on start the daemon reconciles: live runners are adopted, dead ones' runs become
INTERRUPTED with the reason.

A pass never waits long: the daemon's own writes wait at most DAEMON_BUSY_TIMEOUT_MS
for the DB's write lock. When one times out, someone holds the lock (any group
member may: README, known limits), and until it is free again the daemon writes
nothing: no runs start, requests that would write are refused at once, and the
loop goes on pinging the watchdog, with the holder in its status and, once a
minute, in its log. Restarting would not free the lock, and the daemon never kills
the holder: writes wait until an admin stops it, then resume by themselves.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import selectors
import signal
import socket
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from . import __version__, procs
from .actions import Actions
from .config import Config, ConfigError, load_config
from .files import replace_file
from .hooks import FinishHooks
from .identity import IdentityError, run_identity
from .launcher import LaunchedRunner, Launcher, ProcessLauncher, ScopeLauncher, fork_task
from .logs import log_path
from .model import RunState
from .plan import Limits, Plan, merge_limits
from .review import diff_path, remove_worktree
from .runner import RunnerArgs
from .server import ApiServer, listening_socket
from .store import RunRow, Store, StoreError, parse_time, unsafe_directory, utc_now

log = logging.getLogger("minipipe.daemon")

CLEANUP_EVERY_SECONDS = 3600.0
FAILED_PASS_BACKOFF_SECONDS = 1.0
WORKTREE_SWEEP_SECONDS = 5.0  # how soon a landed or rejected run's worktree goes
MAX_WORKTREE_TASKS = 4
CLEANUP_TASK_SECONDS = 3600.0  # a removal's scope is killed after this (git's timeouts: 4 x 900)
# STATUS= and WATCHDOG=1 at most this often: under load the daemon makes a pass per
# run start and end, and each message costs PID 1 work (and a PropertiesChanged
# signal to every bus client, for STATUS).
STATUS_EVERY_SECONDS = 1.0
REQUEUE_BACKOFF_SECONDS = 5.0
LOCK_WAIT_SECONDS = 2.0  # `minipipe status` may hold the lock for a moment to test it
# The daemon's own wait for the DB's write lock (store.BUSY_TIMEOUT_MS, 10 s, is for
# the CLI and runners). Runners hold the lock for milliseconds; a pass makes at most
# one write that fails (then it stops), and the loop must ping well within
# WatchdogSec (30 s).
DAEMON_BUSY_TIMEOUT_MS = 2_000
WRITE_LOCK_CHECK_SECONDS = 1.0  # while someone else holds it: is it free yet?
WRITE_LOCK_REPORT_SECONDS = 60.0


class Notifier:
    """What the daemon tells its service manager. This one tells nobody (no systemd)."""

    def ready(self, status: str) -> None:
        pass

    def status(self, status: str) -> None:
        pass

    def watchdog(self) -> None:
        pass

    def reloading(self) -> None:
        pass

    def stopping(self) -> None:
        pass


@dataclass
class WriteLock:
    """The DB's write lock is someone else's: the daemon's writes would only wait."""

    since: float
    next_check: float
    holders: list[int]  # as the kernel names them (F_GETLK); may be empty (unnamed)


@dataclass
class Watch:
    """A runner the daemon waits for: its own child, or adopted after a restart."""

    run_id: int
    pid: int
    pidfd: int
    runner: LaunchedRunner | None


def status_line(counts: dict[str, int], limit: int, paused: bool,
                review_limit: int = 0) -> str:
    done = sum(counts[s.value] for s in RunState if s.is_terminal)
    line = (f"{counts['RUNNING']}/{limit} running · {counts['PENDING']} pending · "
            f"{done} done")
    awaiting = counts.get(RunState.AWAITING_REVIEW.value, 0)
    if awaiting:
        line += f" · {awaiting} awaiting review"
        if review_limit and awaiting >= review_limit:
            line += " (max_awaiting_review reached: runs that need review wait)"
    return line + " · paused" if paused else line


class Daemon:
    def __init__(self, config: Config, *, config_path: str | None,
                 launcher: Launcher | None = None, notifier: Notifier | None = None,
                 isolation: str = "none", watchdog_seconds: float | None = None,
                 private_tmp: bool = False) -> None:
        self.config = config
        self.private_tmp = private_tmp
        self.config_path = config_path
        self.launcher = launcher or ProcessLauncher()
        self.notifier = notifier or Notifier()
        self.isolation = isolation
        self.journal = isolation == "scope"  # run output to journald, next to the file
        # Wake often enough to ping the watchdog well within its interval.
        self.max_sleep = watchdog_seconds / 3 if watchdog_seconds else None
        self.watches: dict[int, Watch] = {}
        self.cancels_sent: dict[int, int] = {}  # run id -> cancel requests delivered
        self.stop_requested = False
        self.reload_requested = False
        self.next_cleanup = 0.0
        self.hold_starts_until = 0.0
        self.pass_started_at = ""  # UTC, as the DB writes times: runs due by then were seen
        self.last_status = ""
        self.status_sent_at = 0.0
        self.status_pending = False
        self.watchdog_sent_at = 0.0
        self.next_lock_report = 0.0
        self.write_lock: WriteLock | None = None
        # Bookkeeping for runners already started, not yet in the DB (the lock was
        # taken meanwhile): written first thing once writes work again.
        self.owed_writes: list[Callable[[], None]] = []
        self.worktree_tasks: dict[int, int] = {}  # pid -> run id
        self.backing_off_until: float | None = None
        self.next_worktree_sweep = 0.0
        self.selector = selectors.DefaultSelector()
        self.hooks = self._hooks(config)

    # ------------------------------------------------------------ lifecycle

    def run(self) -> int:
        problem = self._unsafe_directories()
        if problem:
            log.error("%s", problem)
            return 1
        try:
            self.lock = self._take_lock()
        except OSError as exc:
            log.error("%s", exc)
            return 1
        self._write_pid_file()
        try:
            self.store = Store.open(self.config.db_path, busy_timeout_ms=DAEMON_BUSY_TIMEOUT_MS)
            for thing in self.store.repair_schema():
                log.warning("dropped %s from the state DB: not minipipe's", thing)
        except StoreError as exc:
            log.error("cannot open the state DB: %s", exc)
            return 1
        self._install_signals()
        try:
            self.reconcile()
        except StoreError as exc:
            # Before serving, the DB must be repaired: a lock here means a start that
            # systemd retries (Restart=on-failure) until the holder lets go.
            log.error("cannot reconcile the state DB: %s", exc)
            if "locked" in str(exc):
                self.write_lock_taken()
            return 1
        # Requests are answered only once the DB is repaired (like READY=1); with
        # socket activation they wait in the socket's backlog meanwhile.
        try:
            listener, by_systemd = listening_socket(self.config.socket_path,
                                                    self._socket_group())
        except OSError as exc:
            log.error("cannot listen on %s: %s", self.config.socket_path, exc)
            return 1
        self.actions = Actions(self.store, self.config, private_tmp=self.private_tmp,
                               version=__version__, confine=self.launcher.confine,
                               release=self.launcher.release)
        self.actions.on_locked = self.write_lock_taken
        self.actions.writes_wait = self.why_writes_wait
        self.api = ApiServer(listener, self.actions.handle, self.selector,
                             owned_by_systemd=by_systemd, path=self.config.socket_path)
        log.info("minipipe daemon started (pid %d, db %s, isolation %s, up to %d runs)",
                 os.getpid(), self.config.db_path, self.isolation,
                 self.config.max_concurrent_runs)
        self.notifier.ready(self.current_status())
        try:
            while not self.stop_requested:
                try:
                    self.iterate()
                except (StoreError, sqlite3.Error) as exc:
                    # Not a healthy pass: no watchdog ping. A DB that stays unusable
                    # lets the watchdog restart us. A lock is not the DB's fault and a
                    # restart would not free it: the next passes wait it out, healthy.
                    log.error("scheduler pass failed, retrying: %s", exc)
                    if "locked" in str(exc):
                        self.write_lock_taken()
                    else:
                        self.back_off()
                timeout = min(self.config.poll_interval_seconds, self.max_sleep or 3600.0,
                              self.status_wait(), self.write_lock_wait(), self.due_wait(),
                              self.hooks.wait())
                if self.backing_off_until is not None:  # after a failed pass: a second
                    timeout = self.back_off_wait()
                self.wait(timeout)
        finally:
            self.notifier.stopping()
            self.shutdown()
        return 0

    def _unsafe_directories(self) -> str | None:
        """As root: every directory this process creates files in is root's alone."""
        if os.geteuid() != 0:
            return None
        for directory in {os.path.dirname(self.config.db_path), self.config.log_dir,
                          os.path.dirname(self.config.lock_path)}:
            if os.path.isdir(directory) and (problem := unsafe_directory(directory)):
                return problem
        return None

    def _socket_group(self) -> str | None:
        import grp

        try:  # the group of the DB's directory: the operators who may use minipipe
            return grp.getgrgid(os.stat(os.path.dirname(self.config.db_path)).st_gid).gr_name
        except (KeyError, OSError):
            return None

    def _take_lock(self) -> int:
        """One daemon per socket directory (an exclusive flock on the lock file)."""
        path = self.config.lock_path
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        # Ours alone: anyone who may open it may flock it first and keep the daemon
        # from starting. `minipipe status` reads /proc/locks instead.
        os.fchmod(fd, 0o600)
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                os.close(fd)
                raise OSError(f"another minipipe daemon already runs (it holds {path})") \
                    from None

    def _write_pid_file(self) -> None:
        """"PID START_TIME" beside the lock: `minipipe status` checks that process (its
        start time guards against pid reuse) without reading /proc/locks, which the
        kernel builds from every lock on the host (tens of ms on a busy one). Written
        whole (a rename) in the lock's directory, which only this daemon's user writes."""
        path = self.config.pid_path
        try:
            replace_file(path, f"{os.getpid()} {procs.start_time(os.getpid())}\n".encode(),
                         0o644, suffix=str(os.getpid()))
        except OSError as exc:  # status falls back to /proc/locks
            log.warning("cannot write %s: %s", path, exc)

    def _install_signals(self) -> None:
        self._signal_r, signal_w = socket.socketpair()
        self._signal_r.setblocking(False)
        signal_w.setblocking(False)
        self._signal_w = signal_w  # kept referenced: the wakeup fd must stay open
        signal.set_wakeup_fd(signal_w.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)
        self.selector.register(self._signal_r, selectors.EVENT_READ, "signal")

    def _on_stop(self, signum: int, _frame: object) -> None:
        self.stop_requested = True

    def _on_reload(self, signum: int, _frame: object) -> None:
        self.reload_requested = True

    def shutdown(self) -> None:
        running = len(self.watches)
        for watch in self.watches.values():
            os.close(watch.pidfd)
        self.watches.clear()
        self.api.shutdown()
        self.actions.probes.close()
        self.hooks.stop_all()
        with contextlib.suppress(OSError):
            os.unlink(self.config.pid_path)
        os.close(self.lock)
        self.store.close()
        log.info("daemon stopped; %d run(s) keep running and will be adopted on the next start",
                 running)

    # ------------------------------------------------------------ the write lock

    def write_lock_taken(self) -> None:
        """A write gave up waiting for the DB's write lock: stop writing until it is free.

        Meanwhile requests that would write are refused at once (`why_writes_wait`),
        passes skip everything that writes, and runner exits wait to be judged (their
        pidfds leave the selector, or an exited one would wake the loop at once,
        again and again).
        """
        now = time.monotonic()
        if self.write_lock is None:
            self.write_lock = WriteLock(now, now + WRITE_LOCK_CHECK_SECONDS, [])
            self.listen_to_runners()
        self.write_lock.holders = self.lock_holders()
        self.name_lock_holders()

    def check_write_lock(self) -> None:
        """Once a second while someone else holds the lock: is it free again?"""
        lock = self.write_lock
        now = time.monotonic()
        if lock is None or now < lock.next_check:
            return
        if not _write_lock_free(self.config.db_path):
            lock.next_check = now + WRITE_LOCK_CHECK_SECONDS
            lock.holders = self.lock_holders()
            self.name_lock_holders()
            return
        self.write_lock = None
        self.next_lock_report = 0.0
        log.info("the state DB's write lock is free again after %.0fs; writes resume",
                 now - lock.since)
        self.listen_to_runners()

    def back_off(self) -> None:
        """After a failed pass: no pass again for a second (see listen_to_runners)."""
        self.backing_off_until = time.monotonic() + FAILED_PASS_BACKOFF_SECONDS
        self.listen_to_runners()

    def back_off_wait(self) -> float:
        if self.backing_off_until is None:
            return 3600.0
        left = self.backing_off_until - time.monotonic()
        if left > 0:
            return left
        self.backing_off_until = None
        self.listen_to_runners()
        return 0.0

    def listen_to_runners(self) -> None:
        """Runner exits wake the loop only while a pass can judge them: not while the
        DB's write lock is someone else's, nor while backing off after a failed pass.
        An exited runner's pidfd stays readable until a pass collects it, so the loop
        would wake again and again (and fill the journal)."""
        listen = self.write_lock is None and self.backing_off_until is None
        for watch in self.watches.values():
            with contextlib.suppress(KeyError, ValueError):
                if listen:
                    self.selector.register(watch.pidfd, selectors.EVENT_READ,
                                           ("runner", watch.run_id))
                else:
                    self.selector.unregister(watch.pidfd)

    def lock_holders(self) -> list[int]:
        try:
            return self.store.write_lock_holders()
        except OSError as exc:  # it forks to ask; no fork, no names this time
            log.warning("cannot name the state DB's write-lock holders: %s", exc)
            return []

    def write_lock_wait(self) -> float:
        """How long the loop may sleep before the lock is due to be checked again."""
        if self.write_lock is None:
            return 3600.0
        return max(0.0, self.write_lock.next_check - time.monotonic())

    def why_writes_wait(self) -> str | None:
        """For a request that would write while the lock is someone else's."""
        if self.write_lock is None:
            return None
        return (f"the state DB is write-locked by {self.lock_holders_text()}; writes wait "
                "until it lets go (an admin can stop it); try again later")

    def lock_holders_text(self) -> str:
        if self.write_lock is None or not self.write_lock.holders:
            return "another process (not named by the kernel)"
        runners = {watch.pid: watch.run_id for watch in self.watches.values()}
        return ", ".join(
            f"pid {pid} (runner of run {runners[pid]})" if pid in runners
            else f"pid {pid} (user {_owner_name(pid)})" for pid in self.write_lock.holders)

    def name_lock_holders(self) -> None:
        """Say who keeps writers out: an admin can then act (the daemon does not kill)."""
        if time.monotonic() < self.next_lock_report:
            return
        self.next_lock_report = time.monotonic() + WRITE_LOCK_REPORT_SECONDS
        holders = self.write_lock.holders if self.write_lock else []
        for pid in holders:
            log.warning("the state DB's write lock is held by pid %d (user %s: %s); every "
                        "write waits for it, the daemon keeps serving and retries",
                        pid, _owner_name(pid), procs.command_line(pid))
        if not holders:
            log.warning("the state DB's write lock is held by a process the kernel does "
                        "not name (an open file description lock, or another pid "
                        "namespace); every write waits for it, the daemon retries")

    # ------------------------------------------------------------ the loop

    def iterate(self) -> None:
        self.pass_started_at = utc_now()
        if self.reload_requested:
            self.reload()
        self.store.ensure_open()  # (a reopen after fork() may have failed: StoreError)
        self.actions.probes.reap()
        self.check_write_lock()
        if self.write_lock is None:
            self.pay_owed_writes()
            self.collect_exited()
            self.deliver_cancels()
            self.cancel_blocked()
            self.start_pending()
            self.remove_worktrees_if_due()
            self.hooks.pass_(self.store)
            self.cleanup_if_due()
        else:
            self.deliver_cancels()  # reads and signals only
        status = self.current_status()
        now = time.monotonic()
        if status != self.last_status and now >= self.status_sent_at + STATUS_EVERY_SECONDS:
            self.notifier.status(status)
            self.last_status, self.status_sent_at = status, now
        self.status_pending = status != self.last_status
        if now >= self.watchdog_sent_at + STATUS_EVERY_SECONDS:  # a healthy pass
            self.notifier.watchdog()
            self.watchdog_sent_at = now

    def _hooks(self, config: Config) -> FinishHooks:
        return FinishHooks(config.on_finish, config.on_finish_user,
                           config.on_finish_timeout_seconds, config.log_dir,
                           confine=self.launcher.confine, release=self.launcher.release)

    def cancel_blocked(self) -> None:
        """Runs that wait for a run that did not succeed can never start: they end
        CANCELLED, saying which (chains too), instead of waiting forever."""
        for run_id, reason in self.store.cancel_blocked():
            log.info("run %d CANCELLED: %s", run_id, reason)

    def due_wait(self) -> float:
        """Seconds until the earliest run waiting for its time is due, or a hold on
        starts ends: the loop sleeps until then (and wakes for anything else
        meanwhile), never polls for it."""
        if not self.store.is_open:  # the failed pass's back-off decides
            return 3600.0
        due = parse_time(self.store.next_due(after=self.pass_started_at))
        waits = [max(0.0, self.hold_starts_until - time.monotonic()) or 3600.0]
        if due is not None:
            waits.append(max(0.0, (due - datetime.now(UTC)).total_seconds() + 0.001))
        return min(waits)

    def status_wait(self) -> float:
        """How long the loop may sleep before a held-back status line is due."""
        if not self.status_pending:
            return 3600.0
        return max(0.0, self.status_sent_at + STATUS_EVERY_SECONDS - time.monotonic())

    def wait(self, timeout: float) -> None:
        deadline = self.api.next_deadline()
        if deadline is not None:
            timeout = max(0.0, min(timeout, deadline - time.monotonic()))
        for key, mask in self.selector.select(timeout):
            if isinstance(key.data, tuple) and key.data[0] == "api":
                self.api.on_event(key.data[1], mask)
            elif key.data == "signal":
                try:
                    while self._signal_r.recv(64):
                        pass
                except BlockingIOError:
                    pass
            # pidfds need nothing here: collect_exited() checks them next pass.
        self.api.expire()

    def current_status(self) -> str:
        line = status_line(self.store.counts(), self.config.max_concurrent_runs,
                           self.store.is_paused(), self.config.max_awaiting_review)
        if self.write_lock is not None:
            line += f" · state DB write-locked by {self.lock_holders_text()}; writes wait"
        return line

    # ------------------------------------------------------------ runners

    def watch(self, run_id: int, pid: int, runner: LaunchedRunner | None) -> bool:
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return False
        self.watches[run_id] = Watch(run_id, pid, pidfd, runner)
        self.selector.register(pidfd, selectors.EVENT_READ, ("runner", run_id))
        return True

    def collect_exited(self) -> None:
        for watch in list(self.watches.values()):
            if watch.runner is not None and watch.runner.process is not None:
                status = watch.runner.process.poll()
                if status is None:
                    continue
            else:
                if not _pidfd_ready(watch.pidfd):
                    continue
                status = None
            # Judge the run first: if the DB is locked now, the watch stays and a later
            # pass tries again (the pidfd stays readable, poll() keeps the status).
            self.runner_ended(watch.run_id, status)
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(watch.pidfd)
            os.close(watch.pidfd)
            del self.watches[watch.run_id]
            self.cancels_sent.pop(watch.run_id, None)

    def runner_ended(self, run_id: int, status: int | None) -> None:
        run = self.store.get_run(run_id)
        if run.state is RunState.PENDING:
            # Requeued by its runner (the system is going down): no new starts for a
            # moment, or the same run would bounce straight back.
            log.info("run %d went back to the queue", run_id)
            self.hold_starts_until = time.monotonic() + REQUEUE_BACKOFF_SECONDS
            return
        if run.state is not RunState.RUNNING:
            log.info("run %d ended %s%s", run_id, run.state.value,
                     f" (exit {run.exit_code})" if run.exit_code not in (None, 0) else "")
            return
        if status is None:
            how = "exited"
        else:
            code, signal_name = procs.describe_exit(status)
            how = f"was killed by {signal_name}" if signal_name else f"exited with status {code}"
        self.interrupt(run, f"runner (pid {run.runner_pid}) {how} before recording a result")

    def interrupt(self, run: RunRow, reason: str) -> None:
        if done := self.launcher.stop_leftovers(run, self.store.get_steps(run.id)):
            reason += f"; {done}"
        self.store.finish_run(run.id, RunState.INTERRUPTED, reason=reason)
        log.warning("run %d INTERRUPTED: %s", run.id, reason)

    def reconcile(self) -> None:
        """Adopt live runners of RUNNING runs; end the runs whose runner is gone."""
        for run in self.store.running_runs():
            if run.id in self.watches:
                continue
            if run.runner_pid and self.launcher.is_alive(run) and self.watch(
                    run.id, run.runner_pid, None):
                self.store.note(run.id, "run_adopted", pid=run.runner_pid)
                log.info("run %d: adopted its live runner (pid %d)", run.id, run.runner_pid)
            elif run.runner_pid:
                self.interrupt(run, f"runner (pid {run.runner_pid}) was gone when the daemon "
                                    "started (crash, kill or reboot)")
            else:
                self.interrupt(run, "the daemon stopped before the runner was started")

    def deliver_cancels(self) -> None:
        """A SIGTERM to the runner per new cancel request (a second one stops the
        run's [[finally]] steps)."""
        for run_id, count in self.store.cancel_requests().items():
            if self.cancels_sent.get(run_id, 0) >= count or run_id not in self.watches:
                continue
            # Through the pidfd this daemon holds: it can only reach that very process.
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.watches[run_id].pidfd, signal.SIGTERM)
                log.info("run %d: cancel requested, sent SIGTERM to runner %d", run_id,
                         self.watches[run_id].pid)
            self.cancels_sent[run_id] = count

    def start_pending(self) -> None:
        if self.store.is_paused() or time.monotonic() < self.hold_starts_until:
            return
        free = self.config.max_concurrent_runs - self.store.count_running()
        if free <= 0:
            return
        ready: list[tuple[RunRow, RunnerArgs, Limits]] = []
        locked: StoreError | None = None
        for run in self.startable(free):
            try:
                prepared = self.prepare(run)
            except (IdentityError, ValueError, KeyError, TypeError) as exc:
                # One bad row (or a user that vanished) fails its run, never the daemon.
                if self.store.start_run(run.id, unit=None):
                    self.store.finish_run(run.id, RunState.FAILED,
                                          reason=f"could not start: {exc}")
                log.error("run %d FAILED before it started: %s", run.id, exc)
                continue
            except StoreError as exc:
                if not ready:
                    raise
                locked = exc  # start the runs already marked RUNNING, then say so
                break
            if prepared is not None:
                ready.append(prepared)
        if ready:
            self.launch(ready)
        if locked is not None:
            raise locked

    def startable(self, free: int) -> list[RunRow]:
        """The next `free` pending runs, in queue order. While max_awaiting_review runs
        await review, runs that would need review too wait (approved ones, landing
        their change, do not)."""
        limit = self.config.max_awaiting_review
        held = bool(limit) and self.store.count_awaiting_review() >= limit
        # A run whose old worktree is being removed (rejected, then retried at once)
        # starts once that is done: the removal would take the new attempt's with it.
        removing = set(self.worktree_tasks.values())
        # Runs in a full pool or group wait, and those behind them go first: the
        # store leaves out the full ones; those that fill up in this pass are skipped.
        use = self.store.pool_use() if self.config.pools else {}
        group_use = self.store.group_use()
        groups = {group: running for group, (running, _) in group_use.items()}
        full_pools = {pool for pool, size in self.config.pools.items()
                      if use.get(pool, 0) >= size}
        full_groups = {group for group, (running, most) in group_use.items()
                       if most is not None and running >= most}
        chosen: list[RunRow] = []
        with contextlib.closing(self.store.pending_runs(
                hold_review=held, skip_pools=full_pools, skip_groups=full_groups)) as runs:
            for run in runs:
                # (a run retried just before its old runner exited is still watched)
                if run.id in removing or run.id in self.watches:
                    continue
                if run.group_max is not None and groups.get(run.group_id, 0) >= run.group_max:
                    continue
                size = self.config.pools.get(run.pool) if run.pool else None
                if size is not None:  # (a pool no longer configured: prepare() fails it)
                    if use.get(run.pool, 0) >= size:
                        continue
                    use[run.pool] = use.get(run.pool, 0) + 1
                if run.group_id is not None:
                    groups[run.group_id] = groups.get(run.group_id, 0) + 1
                chosen.append(run)
                if len(chosen) == free:
                    break
        return chosen

    def launch(self, ready: list[tuple[RunRow, RunnerArgs, Limits]]) -> None:
        # Runners are forked from this process, and SQLite forbids carrying an open
        # connection across fork(): ours is closed meanwhile (reopening costs ~0.2 ms).
        launched: list[tuple[RunRow, LaunchedRunner | OSError]] = []
        self.store.close()
        try:
            for run, args, limits in ready:
                try:
                    launched.append((run, self.launcher.launch(args, limits)))
                except OSError as exc:
                    launched.append((run, exc))
        finally:
            self.reopen_store()
        # Watched before anything is written: if the lock is taken meanwhile, the
        # writes wait (owed_writes) but no runner goes unwatched.
        for run, runner in launched:
            if isinstance(runner, OSError):
                self.owed_writes.append(functools.partial(self.launch_failed, run, runner))
            else:
                watched = self.watch(run.id, runner.pid, runner)
                self.owed_writes.append(functools.partial(self.launched, run, runner,
                                                          watched))
        self.pay_owed_writes()

    def pay_owed_writes(self) -> None:
        """In order; a lock or a DB that cannot be opened stops them (the rest wait
        for the next pass), nothing else."""
        if self.owed_writes:
            self.store.ensure_open()
        while self.owed_writes:
            try:
                self.owed_writes[0]()
            except StoreError as exc:
                if "locked" in str(exc):
                    raise
                log.error("could not record a runner's start: %s", exc)
            self.owed_writes.pop(0)

    def launch_failed(self, run: RunRow, error: OSError) -> None:
        reason = f"could not start the runner: {error.strerror or error}"
        self.store.finish_run(run.id, RunState.FAILED, reason=reason)
        log.error("run %d FAILED: %s", run.id, reason)

    def launched(self, run: RunRow, runner: LaunchedRunner, watched: bool) -> None:
        self.store.set_runner(run.id, runner.pid, runner.start_time)
        log.info("run %d (%s) started: runner pid %d%s", run.id, run.name, runner.pid,
                 f", unit {runner.unit}" if runner.unit else "")
        if not watched:
            # It already exited and was reaped elsewhere: judge it by the DB.
            self.runner_ended(run.id, None)

    def prepare(self, run: RunRow) -> tuple[RunRow, RunnerArgs, Limits] | None:
        """Check what the run needs (its plan, its user), then mark it RUNNING."""
        limits = merge_limits(Plan.from_dict(self.store.run_plan(run.id)).limits,
                              self.config.default_limits)
        identity = run_identity(self.config, run.submitted_uid)
        umask = run.umask if isinstance(run.umask, int) and 0 <= run.umask <= 0o777 else None
        pool_size = None
        if run.pool:
            pool_size = self.config.pools.get(run.pool)
            if pool_size is None:
                raise ValueError(f"its pool {run.pool!r} is not in the config any more")
        if not self.store.start_run(run.id, unit=self.launcher.unit_name(run.id),
                                    run_user=identity.user if identity else procs.user_name(),
                                    pool_size=pool_size):
            return None
        return run, RunnerArgs(
            self.config.db_path, self.config.log_dir, run.id,
            kill_grace=self.config.kill_grace_seconds, runtime_max=limits.runtime_max,
            finally_grace=self.config.finally_grace_seconds,
            journal=self.journal, identity=identity, umask=umask,
            worktree_dir=self.config.worktree_dir,
            trusted_filters=self.config.trusted_filter_programs), limits

    # ------------------------------------------------------------ housekeeping

    def remove_worktrees_if_due(self) -> None:
        """Remove the worktrees of runs landed or rejected worktree_keep_days ago, and
        of other ended runs when auto-cleanup is about to delete them. Each removal is
        a forked task running git as the run's user (review.remove_worktree)."""
        for pid in list(self.worktree_tasks):
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == 0:
                    continue
            del self.worktree_tasks[pid]
            self.launcher.release("cleanup", pid)
        if time.monotonic() < self.next_worktree_sweep:
            return
        self.next_worktree_sweep = time.monotonic() + WORKTREE_SWEEP_SECONDS
        now = datetime.now(UTC)
        retention = (now - timedelta(days=self.config.completed_run_retention_days)
                     if self.config.auto_cleanup_completed_runs else datetime.min.replace(
                         tzinfo=UTC))
        due = self.store.workspaces_due(
            ended_before=_stamp(retention),
            landed_or_rejected_before=_stamp(now - timedelta(
                days=self.config.worktree_keep_days)))
        busy = set(self.worktree_tasks.values())
        tasks = []
        for run, workspace in due:
            if run.id in busy or len(busy) + len(tasks) >= MAX_WORKTREE_TASKS:
                continue
            try:
                spec = self.store.run_plan(run.id)["workspace"]
                identity = run_identity(self.config, run.submitted_uid)
            except (IdentityError, KeyError, TypeError, ValueError) as exc:
                log.warning("run %d: cannot remove its worktree: %s", run.id, exc)
                continue
            keep_branch = run.state is RunState.SUCCEEDED and spec.get("land") == "branch-only"
            tasks.append((run.id, functools.partial(
                remove_worktree, self.config.db_path, run.id, spec["repo"], workspace.path,
                None if keep_branch else workspace.branch, identity)))
        if not tasks:
            return
        # (its git and rm run as the run's user: in a scope of their own, see confine)
        confine = self.launcher.confine("cleanup", CLEANUP_TASK_SECONDS)
        self.store.close()  # no SQLite connection across fork()
        try:
            for run_id, task in tasks:
                try:
                    self.worktree_tasks[fork_task(task, confine)] = run_id
                except OSError as exc:
                    log.warning("run %d: cannot fork to remove its worktree: %s", run_id, exc)
        finally:
            self.reopen_store()

    def reopen_store(self) -> None:
        """After a fork(). If the DB cannot be opened now, what was started is still
        watched, and its writes stay owed until a later pass reopens it."""
        try:
            self.store.reopen()
        except StoreError as exc:
            log.error("cannot reopen the state DB, retrying: %s", exc)

    def cleanup_if_due(self) -> None:
        if not self.config.auto_cleanup_completed_runs or time.monotonic() < self.next_cleanup:
            return
        self.next_cleanup = time.monotonic() + CLEANUP_EVERY_SECONDS
        cutoff = datetime.now(UTC) - timedelta(days=self.config.completed_run_retention_days)
        ids = self.store.delete_finished_before(
            cutoff.isoformat(timespec="milliseconds").replace("+00:00", "Z"))
        for run_id in ids:
            for path in (log_path(self.config.log_dir, run_id),
                         diff_path(self.config.log_dir, run_id)):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    log.warning("cleanup: cannot remove %s of run %d: %s", path, run_id, exc)
        if ids:
            log.info("cleanup: deleted %d finished run(s) older than %g day(s)", len(ids),
                     self.config.completed_run_retention_days)

    def reload(self) -> None:
        self.reload_requested = False
        self.notifier.reloading()
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            log.error("reload failed, keeping the running config: %s", exc)
            self.notifier.ready(self.current_status())
            return
        for fixed in ("db_path", "socket_path", "isolation"):
            if getattr(new, fixed) != getattr(self.config, fixed):
                log.warning("reload: %s changed; it takes effect only after a restart", fixed)
                new = new._replace(**{fixed: getattr(self.config, fixed)})
        self.config = new
        self.actions.config = new
        running_hooks = self.hooks.running
        self.hooks = self._hooks(new)
        self.hooks.running = running_hooks  # still reaped and timed out
        self.next_cleanup = 0.0
        log.info("config reloaded: up to %d runs, poll every %gs", new.max_concurrent_runs,
                 new.poll_interval_seconds)
        self.notifier.ready(self.current_status())


def _write_lock_free(db_path: str) -> bool:
    """Whether a write could begin now, asked without waiting: a connection of its own
    that waits for no lock, and an empty write transaction (the pause flag set to what
    it is). Exact where naming the holder is not (open file description locks, other
    pid namespaces); ~0.3 ms, once a second while the lock is held."""
    try:
        probe = Store.open(db_path, create=False, busy_timeout_ms=0)
    except StoreError:
        return False
    try:
        probe.set_paused(probe.is_paused())
        return True
    except StoreError:
        return False
    finally:
        probe.close()


def _owner_name(pid: int) -> str:
    uid = procs.owner(pid)
    return "?" if uid is None else procs.user_name(uid)


def _pidfd_ready(pidfd: int) -> bool:
    poller = selectors.DefaultSelector()
    try:
        poller.register(pidfd, selectors.EVENT_READ)
        return bool(poller.select(0))
    finally:
        poller.close()


def serve(config: Config, config_path: str | None) -> int:
    """Entry point of `minipipe daemon`: pick the adapters, then run the loop."""
    logging.basicConfig(
        level=logging.INFO,
        # Under systemd, journald adds its own timestamps.
        format="%(message)s" if os.environ.get("JOURNAL_STREAM") else
        "%(asctime)s %(levelname)s %(message)s")
    notifier: Notifier = Notifier()
    watchdog_seconds = None
    if os.environ.get("NOTIFY_SOCKET"):
        from .systemd import SystemdNotifier

        systemd_notifier = SystemdNotifier()
        notifier, watchdog_seconds = systemd_notifier, systemd_notifier.watchdog_seconds
    isolation = config.effective_isolation()
    if os.geteuid() == 0 and isolation != "scope":
        log.error('refusing to run as root with isolation "%s": steps would run as root '
                  'or share the daemon\'s uid. Use isolation "scope" under systemd '
                  '(minipipe.service), or run a private instance as an ordinary user',
                  isolation)
        return 1
    launcher: Launcher = (ScopeLauncher(config.minipipe_command) if isolation == "scope"
                          else ProcessLauncher(config.minipipe_command))
    private_tmp = False
    if isolation == "scope":
        from .systemd import private_tmp as has_private_tmp

        private_tmp = has_private_tmp()
    daemon = Daemon(config, config_path=config_path, launcher=launcher, notifier=notifier,
                    isolation=isolation, watchdog_seconds=watchdog_seconds,
                    private_tmp=private_tmp)
    return daemon.run()


def _stamp(moment: datetime) -> str:
    """A time as the store writes them (ISO UTC with milliseconds and Z)."""
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
