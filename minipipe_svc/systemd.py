"""The one place minipipe talks to systemd: notify, transient scopes, unit state, journald.

Everything else sees three small interfaces: a Notifier (daemon -> service
manager), a Launcher (start a runner, tell if it lives) and a LogSink / journal
reader (run output). Without systemd the daemon uses the plain versions in
daemon.py, launcher.py and logs.py.

A runner joins its scope the way `systemd-run --scope` would, but from inside
the process forked by the daemon: StartTransientUnit with its own pid, over
systemd's private socket (dbus.py), then it waits for the job and switches to
`run_user`. This saves a process start and a Python start per run (bench/
measures both). With `minipipe_command` set, or a daemon not running as root,
the runner is started by `systemd-run --scope` instead.
Heavy modules (systemd.journal, sdnotify) are imported only where used.
"""

from __future__ import annotations

import configparser
import contextlib
import functools
import glob
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from . import dbus, procs
from .launcher import RUNNER_MODULE_COMMAND, LaunchedRunner, TryLater, fork_runner
from .logs import LogLine
from .plan import Limits
from .runner import RunnerArgs, clean_environment
from .store import RunRow

SLICE = "minipipe.slice"
PRIVATE_BUS = "/run/systemd/private"
SCOPE_JOB_TIMEOUT_SECONDS = 30.0
# systemd's answers to a new unit while the system goes down: not the run's fault.
SHUTTING_DOWN_ERRORS = ("org.freedesktop.systemd1.TransactionIsDestructive",
                        "org.freedesktop.systemd1.ShuttingDown")
SYSLOG_IDENTIFIER = "minipipe-run"
PRIORITY = {"stdout": 6, "stderr": 4, "minipipe": 5}  # info, warning, notice
# The scope ends the run on its own only if the runner's own runtime_max deadline
# (which records TIMED_OUT) somehow did not: give the runner time to act first.
RUNTIME_MAX_MARGIN_SECONDS = 60


def unit_name(run_id: int) -> str:
    """Unit names come from the run id only, never from user text."""
    return f"minipipe-run-{int(run_id)}.scope"


def systemd_available() -> bool:
    """True when systemd is PID 1 (sd_booted's test)."""
    return os.path.isdir("/run/systemd/system")


# ---------------------------------------------------------------- notify


class SystemdNotifier:
    """sd_notify from the daemon's main loop (never from a side thread)."""

    def __init__(self) -> None:
        import sdnotify

        self._notifier = sdnotify.SystemdNotifier()
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        self.watchdog_seconds = (int(usec) / 1e6 if usec and usec.isdigit() and (
            not pid or pid == str(os.getpid())) else None)

    def _send(self, *lines: str) -> None:
        # sdnotify encodes with latin-1, systemd wants UTF-8 (our STATUS has "·"):
        # hand it the UTF-8 bytes spelled as latin-1 characters.
        self._notifier.notify("\n".join(lines).encode("utf-8").decode("latin-1"))

    def ready(self, status: str) -> None:
        self._send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        self._send(f"STATUS={status}")

    def watchdog(self) -> None:
        if self.watchdog_seconds:
            self._send("WATCHDOG=1")

    def reloading(self) -> None:
        self._send("RELOADING=1", "STATUS=reloading the config")

    def stopping(self) -> None:
        self._send("STOPPING=1", "STATUS=stopping; runs keep going")


# ---------------------------------------------------------------- scopes


def scope_properties(limits: Limits) -> list[str]:
    """systemd unit properties for a run's limits (pure; see tests)."""
    properties = []
    if limits.memory_max is not None:
        properties.append(f"MemoryMax={limits.memory_max}")
    if limits.cpu_quota is not None:
        properties.append(f"CPUQuota={limits.cpu_quota:g}%")
    if limits.tasks_max is not None:
        properties.append(f"TasksMax={limits.tasks_max}")
    if limits.runtime_max is not None:
        properties.append(
            f"RuntimeMaxSec={int(limits.runtime_max) + RUNTIME_MAX_MARGIN_SECONDS}")
    return properties


def scope_argv(run_id: int, runner_argv: list[str], *, run_user: str | None,
               limits: Limits, description: str) -> list[str]:
    """The `systemd-run --scope` command line that puts one runner in its own scope."""
    argv = ["systemd-run", "--scope", "--quiet", "--collect", f"--unit={unit_name(run_id)}",
            f"--slice={SLICE}", f"--description={description}"]
    if run_user:
        argv.append(f"--uid={run_user}")
    for prop in scope_properties(limits):
        argv.append(f"--property={prop}")
    return [*argv, "--", *runner_argv]


def scope_dbus_properties(limits: Limits, description: str) -> list[tuple[str, Any]]:
    """StartTransientUnit properties for a run's scope, as (name, (signature, value))."""
    properties: list[tuple[str, Any]] = [
        ("Description", ("s", description)), ("Slice", ("s", SLICE)),
        ("CollectMode", ("s", "inactive-or-failed"))]  # = systemd-run --collect
    if limits.memory_max is not None:
        properties.append(("MemoryMax", ("t", limits.memory_max)))
    if limits.cpu_quota is not None:
        properties.append(("CPUQuotaPerSecUSec", ("t", round(limits.cpu_quota * 10_000))))
    if limits.tasks_max is not None:
        properties.append(("TasksMax", ("t", limits.tasks_max)))
    if limits.runtime_max is not None:
        seconds = int(limits.runtime_max) + RUNTIME_MAX_MARGIN_SECONDS
        properties.append(("RuntimeMaxUSec", ("t", seconds * 1_000_000)))
    return properties


def join_new_scope(run_id: int, limits: Limits, description: str) -> None:
    """Move this process into a new `minipipe-run-<id>.scope` and wait until it is in.

    What `systemd-run --scope` does before it execs its command; needs root.
    """
    unit = unit_name(run_id)
    results: dict[str, str] = {}

    def on_signal(message: dbus.Message) -> None:
        if message.member == "JobRemoved" and len(message.body) == 4:
            results[message.body[2]] = message.body[3]  # unit -> "done", "failed", ...

    manager = {"destination": "org.freedesktop.systemd1", "path": "/org/freedesktop/systemd1",
               "interface": "org.freedesktop.systemd1.Manager", "on_signal": on_signal}
    properties = [*scope_dbus_properties(limits, description), ("PIDs", ("au", [os.getpid()]))]
    # On its private socket systemd sends every signal to every client (no Subscribe).
    with dbus.Connection(PRIVATE_BUS, SCOPE_JOB_TIMEOUT_SECONDS) as bus:
        try:
            bus.call(member="StartTransientUnit", signature="ssa(sv)a(sa(sv))",
                     args=[unit, "fail", properties, []], **manager)
        except dbus.DBusError as exc:
            if exc.name in SHUTTING_DOWN_ERRORS:
                raise TryLater(f"systemd refused {unit}: the system is shutting down") \
                    from None
            raise
        deadline = time.monotonic() + SCOPE_JOB_TIMEOUT_SECONDS
        while unit not in results:
            message = bus.receive(deadline)
            if message.type == dbus.SIGNAL:
                on_signal(message)
    if results[unit] != "done":
        raise dbus.DBusError(f"systemd could not start {unit} (job {results[unit]})")
    with open("/proc/self/cgroup") as cgroup:
        if f"/{unit}" not in cgroup.read():
            raise dbus.DBusError(f"{unit} started but this process is not in it")


class ScopeLauncher:
    """Runners in `minipipe-run-<id>.scope` under minipipe.slice, as `run_user`."""

    def __init__(self, run_user: str | None, command: tuple[str, ...] = ()) -> None:
        self.run_user = run_user
        self.command = command  # empty: fork, join the scope from inside (needs root)
        self.fork = not command and os.geteuid() == 0
        if self.fork:  # what every forked runner needs, done once here
            from systemd import journal  # noqa: F401

            current_journald_rate_limit()
            procs.libc()

    def unit_name(self, run_id: int) -> str | None:
        return unit_name(run_id)

    def launch(self, args: RunnerArgs, limits: Limits) -> LaunchedRunner:
        description = f"minipipe run {args.run_id}"
        if self.fork:
            child = fork_runner(args, lambda: self._setup(args.run_id, limits, description))
            return LaunchedRunner(child.pid, procs.start_time(child.pid),
                                  unit_name(args.run_id), child)
        runner_argv = [*(self.command or RUNNER_MODULE_COMMAND), *args.argv()]
        command = scope_argv(args.run_id, runner_argv, run_user=self.run_user, limits=limits,
                             description=description)
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True,
                                   env=clean_environment(dict(os.environ)), close_fds=True)
        return LaunchedRunner(process.pid, procs.start_time(process.pid),
                              unit_name(args.run_id), process)

    def _setup(self, run_id: int, limits: Limits, description: str) -> None:
        """In the forked runner: into the scope first, then become run_user."""
        join_new_scope(run_id, limits, description)
        if self.run_user:
            os.environ.update(procs.become_user(self.run_user))

    def is_alive(self, run: RunRow) -> bool:
        return procs.is_alive(run.runner_pid, run.runner_start)

    def stop_leftovers(self, run: RunRow) -> str | None:
        """Stop the run's scope if something still lives in it; returns what was done."""
        unit = run.unit or unit_name(run.id)
        if unit_state(unit) not in ("active", "activating", "deactivating"):
            return None
        subprocess.run(["systemctl", "stop", "--no-block", unit], capture_output=True)
        return f"stopped {unit}"


def unit_state(unit: str) -> str:
    """ActiveState of a unit ("inactive" for one systemd does not know)."""
    result = subprocess.run(["systemctl", "show", "--property=ActiveState", "--value", unit],
                            capture_output=True, text=True)
    return result.stdout.strip() or "inactive"


# ---------------------------------------------------------------- journald


@dataclass(frozen=True)
class RateLimit:
    interval: float  # seconds; 0 disables
    burst: int       # entries per interval per priority pool; 0 disables


def journald_rate_limit(paths: list[str] | None = None) -> RateLimit:
    """journald's RateLimitIntervalSec/RateLimitBurst as configured (defaults 30 s, 10000).

    journald multiplies the burst by a factor >= 1 that grows with free disk space,
    so the configured burst is a safe lower bound.
    """
    from .quantities import parse_duration

    if paths is None:
        paths = ["/usr/lib/systemd/journald.conf", "/etc/systemd/journald.conf",
                 *sorted(glob.glob("/usr/lib/systemd/journald.conf.d/*.conf")),
                 *sorted(glob.glob("/etc/systemd/journald.conf.d/*.conf"))]
    interval, burst = 30.0, 10000
    for path in paths:
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        try:
            parser.read(path)
        except configparser.Error:
            continue
        section = parser["Journal"] if parser.has_section("Journal") else {}
        if "RateLimitBurst" in section and section["RateLimitBurst"].strip().isdigit():
            burst = int(section["RateLimitBurst"])
        for key in ("RateLimitIntervalSec", "RateLimitInterval"):
            if key in section:
                text = section[key].strip().replace("sec", "s").replace("min", "m")
                with contextlib.suppress(ValueError):
                    interval = 0.0 if text in ("0", "") else parse_duration(
                        float(text) if text.replace(".", "").isdigit() else text)
    return RateLimit(interval, burst)


@functools.cache
def current_journald_rate_limit() -> RateLimit:
    """journald's rate limit, read once per process (the daemon reads it before forking)."""
    return journald_rate_limit()


class JournalSink:
    """Each output line as one journal entry with minipipe's fields.

    journald drops entries above its per-unit rate limit without telling the
    sender. To lose nothing, the sink keeps its own count per rate-limit window and
    priority pool; above 80% of the burst it packs the lines of each flush into one
    multi-line entry (MINIPIPE_LINES says how many), which keeps the entry count far
    below the limit. Whatever is lost anyway is detected by `minipipe logs`, which
    compares the journal with the line count the runner records.
    """

    def __init__(self, run_id: int, rate_limit: RateLimit | None = None) -> None:
        from systemd import journal

        self._send = journal.send
        self.run_id = str(run_id)
        self.lines_lost = 0
        self.error: str | None = None
        limit = rate_limit or current_journald_rate_limit()
        self.interval = limit.interval
        self.budget = int(limit.burst * 0.8) if limit.burst and limit.interval else 0
        self.window_start = time.monotonic()
        self.sent: dict[int, int] = {}
        self.pending: dict[tuple[str, int, str], list[str]] = {}

    def _entry(self, step_id: str, attempt: int, stream: str, text: str,
               lines: int = 1) -> None:
        fields = {"MINIPIPE_RUN_ID": self.run_id, "MINIPIPE_STEP_ID": step_id,
                  "MINIPIPE_ATTEMPT": str(attempt), "MINIPIPE_STREAM": stream,
                  "PRIORITY": str(PRIORITY[stream]), "SYSLOG_IDENTIFIER": SYSLOG_IDENTIFIER,
                  # Any CODE_* field spares journal.send a stack walk per line.
                  "CODE_FUNC": SYSLOG_IDENTIFIER}
        if lines > 1:
            fields["MINIPIPE_LINES"] = str(lines)
        try:
            self._send(text, **fields)
        except OSError as exc:
            self.lines_lost += lines
            self.error = f"journal: {exc.strerror or exc}"
        pool = PRIORITY[stream]
        self.sent[pool] = self.sent.get(pool, 0) + 1

    def _over_budget(self, stream: str) -> bool:
        if not self.budget:
            return False
        now = time.monotonic()
        if now - self.window_start >= self.interval:
            self.window_start, self.sent = now, {}
        return self.sent.get(PRIORITY[stream], 0) >= self.budget

    def write(self, step_id: str, attempt: int, stream: str, text: str) -> None:
        key = (step_id, attempt, stream)
        if key in self.pending or self._over_budget(stream):
            self.pending.setdefault(key, []).append(text)
            return
        self._entry(step_id, attempt, stream, text)

    def flush(self) -> None:
        pending, self.pending = self.pending, {}
        for (step_id, attempt, stream), lines in pending.items():
            self._entry(step_id, attempt, stream, "\n".join(lines), len(lines))

    def close(self) -> None:
        self.flush()


def read_journal(run_id: int, cursor: str | None = None, *,
                 since: str | None = None) -> tuple[list[LogLine], str | None]:
    """The run's journal lines after `cursor`, and the cursor to continue from.

    `since` is the run's created_at: older entries with the same run id belong to an
    earlier DB (ids start again at 1 after a purge) and are skipped.

    A user who may not read the system journal simply gets no lines; callers
    compare with the runner's line count and fall back to the file mirror.
    """
    with _run_entries(run_id, since) as reader:
        if cursor:
            reader.seek_cursor(cursor)
            reader.get_next()  # the cursor's own entry was returned last time
        lines: list[LogLine] = []
        for entry in reader:
            cursor = entry["__CURSOR"]
            message = str(entry.get("MESSAGE", ""))
            texts = message.split("\n") if entry.get("MINIPIPE_LINES") else [message]
            ts = entry["__REALTIME_TIMESTAMP"].isoformat(timespec="milliseconds")
            for text in texts:
                lines.append(LogLine(ts, entry.get("MINIPIPE_STEP_ID", "?"),
                                     int(entry.get("MINIPIPE_ATTEMPT", 0) or 0),
                                     entry.get("MINIPIPE_STREAM", "stdout"), text))
        return lines, cursor


def count_journal_lines(run_id: int, since: str | None = None) -> int:
    """How many output lines of the run the journal holds (packed entries count fully)."""
    with _run_entries(run_id, since) as reader:
        reader.data_threshold = 64  # only the small fields are needed, not the messages
        return sum(int(entry.get("MINIPIPE_LINES", 1) or 1) for entry in reader)


@contextlib.contextmanager
def _run_entries(run_id: int, since: str | None = None) -> Iterator[Any]:
    """A system journal reader matching one run's entries (from `since`, an ISO time)."""
    from systemd import journal

    reader = journal.Reader(flags=journal.SYSTEM_ONLY)
    try:
        reader.add_match(MINIPIPE_RUN_ID=str(run_id))
        if since:
            # A float: python-systemd would read a datetime's fields as local time.
            reader.seek_realtime(datetime.fromisoformat(since).timestamp() - 1.0)
        yield reader
    finally:
        reader.close()


def journal_readable() -> bool:
    """Whether this user can read system journal entries at all (root, systemd-journal, adm)."""
    if os.geteuid() == 0:
        return True
    try:
        import grp

        groups = {grp.getgrgid(g).gr_name for g in os.getgroups()}
    except KeyError:
        groups = set()
    return bool(groups & {"systemd-journal", "adm", "wheel"})
