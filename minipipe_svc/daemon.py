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
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import selectors
import signal
import socket
import sqlite3
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from . import __version__, procs
from .actions import Actions
from .config import Config, ConfigError, load_config
from .identity import IdentityError, run_identity
from .launcher import LaunchedRunner, Launcher, ProcessLauncher, ScopeLauncher
from .logs import log_path
from .model import RunState
from .plan import Limits, Plan, merge_limits
from .runner import RunnerArgs
from .server import ApiServer, listening_socket
from .store import RunRow, Store, StoreError, unsafe_directory

log = logging.getLogger("minipipe.daemon")

CLEANUP_EVERY_SECONDS = 3600.0
# STATUS= and WATCHDOG=1 at most this often: under load the daemon makes a pass per
# run start and end, and each message costs PID 1 work (and a PropertiesChanged
# signal to every bus client, for STATUS).
STATUS_EVERY_SECONDS = 1.0
REQUEUE_BACKOFF_SECONDS = 5.0
LOCK_WAIT_SECONDS = 2.0  # `minipipe status` may hold the lock for a moment to test it


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
class Watch:
    """A runner the daemon waits for: its own child, or adopted after a restart."""

    run_id: int
    pid: int
    pidfd: int
    runner: LaunchedRunner | None


def status_line(counts: dict[str, int], limit: int, paused: bool) -> str:
    done = sum(counts[s.value] for s in RunState if s.is_terminal)
    line = (f"{counts['RUNNING']}/{limit} running · {counts['PENDING']} pending · "
            f"{done} done")
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
        self.cancels_sent: set[int] = set()
        self.stop_requested = False
        self.reload_requested = False
        self.next_cleanup = 0.0
        self.hold_starts_until = 0.0
        self.last_status = ""
        self.status_sent_at = 0.0
        self.status_pending = False
        self.watchdog_sent_at = 0.0
        self.next_lock_report = 0.0
        self.selector = selectors.DefaultSelector()

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
        try:
            self.store = Store.open(self.config.db_path)
            for thing in self.store.repair_schema():
                log.warning("dropped %s from the state DB: not minipipe's", thing)
        except StoreError as exc:
            log.error("cannot open the state DB: %s", exc)
            return 1
        self._install_signals()
        self.reconcile()
        # Requests are answered only once the DB is repaired (like READY=1); with
        # socket activation they wait in the socket's backlog meanwhile.
        try:
            listener, by_systemd = listening_socket(self.config.socket_path,
                                                    self._socket_group())
        except OSError as exc:
            log.error("cannot listen on %s: %s", self.config.socket_path, exc)
            return 1
        self.actions = Actions(self.store, self.config, private_tmp=self.private_tmp,
                               version=__version__)
        self.actions.on_locked = self.name_lock_holders
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
                    # lets the watchdog restart us; a passing lock is simply retried.
                    log.error("scheduler pass failed, retrying: %s", exc)
                    if "locked" in str(exc):
                        self.name_lock_holders()
                self.wait(min(self.config.poll_interval_seconds, self.max_sleep or 3600.0,
                              self.status_wait()))
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
        os.close(self.lock)
        self.store.close()
        log.info("daemon stopped; %d run(s) keep running and will be adopted on the next start",
                 running)

    def name_lock_holders(self) -> None:
        """Say who keeps writers out: an admin can then act (the daemon does not kill)."""
        if time.monotonic() < self.next_lock_report:
            return
        self.next_lock_report = time.monotonic() + 60.0
        for pid in self.store.write_lock_holders():
            uid = procs.owner(pid)
            log.warning("the state DB's write lock is held by pid %d (user %s: %s); every "
                        "write waits for it", pid, "?" if uid is None else procs.user_name(uid),
                        procs.command_line(pid))

    # ------------------------------------------------------------ the loop

    def iterate(self) -> None:
        if self.reload_requested:
            self.reload()
        self.collect_exited()
        self.deliver_cancels()
        self.start_pending()
        self.cleanup_if_due()
        status = self.current_status()
        now = time.monotonic()
        if status != self.last_status and now >= self.status_sent_at + STATUS_EVERY_SECONDS:
            self.notifier.status(status)
            self.last_status, self.status_sent_at = status, now
        self.status_pending = status != self.last_status
        if now >= self.watchdog_sent_at + STATUS_EVERY_SECONDS:  # a healthy pass
            self.notifier.watchdog()
            self.watchdog_sent_at = now

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
        return status_line(self.store.counts(), self.config.max_concurrent_runs,
                           self.store.is_paused())

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
            # Judge the run first: if the DB is locked now, the watch stays and the
            # next pass tries again (the pidfd stays readable, poll() keeps the status).
            self.runner_ended(watch.run_id, status)
            self.selector.unregister(watch.pidfd)
            os.close(watch.pidfd)
            del self.watches[watch.run_id]
            self.cancels_sent.discard(watch.run_id)

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
        for run in self.store.cancel_requests():
            if run.id in self.cancels_sent or run.id not in self.watches:
                continue
            # Through the pidfd this daemon holds: it can only reach that very process.
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.watches[run.id].pidfd, signal.SIGTERM)
                log.info("run %d: cancel requested, sent SIGTERM to runner %d", run.id,
                         self.watches[run.id].pid)
            self.cancels_sent.add(run.id)

    def start_pending(self) -> None:
        if self.store.is_paused() or time.monotonic() < self.hold_starts_until:
            return
        free = self.config.max_concurrent_runs - self.store.count_running()
        if free <= 0:
            return
        ready: list[tuple[RunRow, RunnerArgs, Limits]] = []
        for run in self.store.pending_runs(free):
            try:
                prepared = self.prepare(run)
            except (IdentityError, ValueError, KeyError, TypeError) as exc:
                # One bad row (or a user that vanished) fails its run, never the daemon.
                if self.store.start_run(run.id, unit=None):
                    self.store.finish_run(run.id, RunState.FAILED,
                                          reason=f"could not start: {exc}")
                log.error("run %d FAILED before it started: %s", run.id, exc)
                continue
            if prepared is not None:
                ready.append(prepared)
        if not ready:
            return
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
            self.store.reopen()
        for run, runner in launched:
            if isinstance(runner, OSError):
                reason = f"could not start the runner: {runner.strerror or runner}"
                self.store.finish_run(run.id, RunState.FAILED, reason=reason)
                log.error("run %d FAILED: %s", run.id, reason)
                continue
            self.store.set_runner(run.id, runner.pid, runner.start_time)
            if not self.watch(run.id, runner.pid, runner):
                # It already exited and was reaped elsewhere: judge it by the DB.
                self.runner_ended(run.id, None)
            log.info("run %d (%s) started: runner pid %d%s", run.id, run.name, runner.pid,
                     f", unit {runner.unit}" if runner.unit else "")

    def prepare(self, run: RunRow) -> tuple[RunRow, RunnerArgs, Limits] | None:
        """Check what the run needs (its plan, its user), then mark it RUNNING."""
        limits = merge_limits(Plan.from_dict(self.store.run_plan(run.id)).limits,
                              self.config.default_limits)
        identity = run_identity(self.config, run.submitted_uid)
        umask = run.umask if isinstance(run.umask, int) and 0 <= run.umask <= 0o777 else None
        if not self.store.start_run(run.id, unit=self.launcher.unit_name(run.id),
                                    run_user=identity.user if identity else procs.user_name()):
            return None
        return run, RunnerArgs(
            self.config.db_path, self.config.log_dir, run.id,
            kill_grace=self.config.kill_grace_seconds, runtime_max=limits.runtime_max,
            journal=self.journal, identity=identity, umask=umask), limits

    # ------------------------------------------------------------ housekeeping

    def cleanup_if_due(self) -> None:
        if not self.config.auto_cleanup_completed_runs or time.monotonic() < self.next_cleanup:
            return
        self.next_cleanup = time.monotonic() + CLEANUP_EVERY_SECONDS
        cutoff = datetime.now(UTC) - timedelta(days=self.config.completed_run_retention_days)
        ids = self.store.delete_finished_before(
            cutoff.isoformat(timespec="milliseconds").replace("+00:00", "Z"))
        for run_id in ids:
            try:
                os.unlink(log_path(self.config.log_dir, run_id))
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cleanup: cannot remove the log of run %d: %s", run_id, exc)
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
        self.next_cleanup = 0.0
        log.info("config reloaded: up to %d runs, poll every %gs", new.max_concurrent_runs,
                 new.poll_interval_seconds)
        self.notifier.ready(self.current_status())


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
