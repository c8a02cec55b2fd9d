"""The one place minipipe talks to systemd's manager: notify, transient scopes, unit state.

A thin adapter: it knows nothing of runners or runs beyond a run id. The launch
strategies that use it are in launcher.py; journald is its own adapter
(journal.py). A forked runner joins its scope the way `systemd-run --scope`
would, from inside: StartTransientUnit with its own pid over systemd's private
socket (dbus.py), then it waits for the job. This saves a process start and a
Python start per run (bench/ measures both).
Heavy modules (sdnotify) are imported only where used.
"""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any

from . import dbus
from .journal import unit_name
from .plan import Limits

__all__ = ["unit_name"]

SLICE = "minipipe.slice"
PRIVATE_BUS = "/run/systemd/private"
SCOPE_JOB_TIMEOUT_SECONDS = 30.0
# systemd's answers to a new unit while the system goes down: not the run's fault.
SHUTTING_DOWN_ERRORS = ("org.freedesktop.systemd1.TransactionIsDestructive",
                        "org.freedesktop.systemd1.ShuttingDown")
# The scope ends the run on its own only if the runner's own runtime_max deadline
# (which records TIMED_OUT) somehow did not: give the runner time to act first.
RUNTIME_MAX_MARGIN_SECONDS = 60
# Tasks a helper's scope may hold: its git and what git forks, with room to spare.
HELPER_TASKS_MAX = 64
STOP_CALL_TIMEOUT_SECONDS = 2.0  # the daemon's loop asks: never long


def systemd_available() -> bool:
    """True when systemd is PID 1 (sd_booted's test)."""
    return os.path.isdir("/run/systemd/system")


# ---------------------------------------------------------------- notify


class ShuttingDown(Exception):
    """systemd refuses new units because the system is going down: try again later."""


def in_unit(pid: int, unit: str) -> bool:
    """Whether process `pid` lives in `unit`'s cgroup in minipipe.slice (kernel-kept)."""
    try:
        with open(f"/proc/{pid}/cgroup") as handle:
            return cgroup_in_unit(handle.read(), unit)
    except OSError:
        return False


def cgroup_in_unit(cgroup: str, unit: str) -> bool:
    """The rule for /proc/PID/cgroup's text (pure): the whole path, since a user's own
    `systemd-run --user --scope --unit=<same name>` ends the same way elsewhere."""
    paths = [line.split(":", 2)[2] for line in cgroup.splitlines() if line.count(":") >= 2]
    return f"/{SLICE}/{unit}" in paths


def stop_unit(unit: str) -> None:
    subprocess.run(["systemctl", "stop", "--no-block", unit], capture_output=True)


def private_tmp(mountinfo: str | None = None) -> bool:
    """Whether this process has a private /tmp (the service's PrivateTmp=yes).

    systemd bind-mounts /tmp/systemd-private-<id>-<unit>-<x>/tmp over /tmp; the
    mount's root (field 4 of /proc/self/mountinfo) says so.
    """
    if mountinfo is None:
        try:
            with open("/proc/self/mountinfo") as handle:
                mountinfo = handle.read()
        except OSError:
            return False
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[4] == "/tmp" and "/systemd-private-" in fields[3]:
            return True
    return False


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


def scope_argv(run_id: int, runner_argv: list[str], *, limits: Limits,
               description: str) -> list[str]:
    """The `systemd-run --scope` command line that puts one runner in its own scope."""
    argv = ["systemd-run", "--scope", "--quiet", "--collect", f"--unit={unit_name(run_id)}",
            f"--slice={SLICE}", f"--description={description}"]
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


def helper_unit_name(kind: str, pid: int) -> str:
    """A helper's scope: from a fixed word and a pid only, never from user text."""
    assert kind.isalpha()
    return f"minipipe-{kind}-{int(pid)}.scope"


def join_helper_scope(kind: str, seconds: float) -> None:
    """Move this forked helper (it will run programs as a user) into a scope of its
    own, `minipipe-<kind>-<pid>.scope`: at most HELPER_TASKS_MAX tasks, killed by
    systemd after `seconds` (and the margin), and stopped by the daemon when the
    helper ends (stop_helper_scope). Whatever those programs leave behind (a user
    may ptrace their own git into forking) never stays in the service's cgroup."""
    pid = os.getpid()
    join_scope(helper_unit_name(kind, pid),
               Limits(tasks_max=HELPER_TASKS_MAX, runtime_max=seconds),
               f"minipipe {kind} (pid {pid})")


def stop_helper_scope(kind: str, pid: int) -> None:
    """Stop a helper's scope, if anything is left in it (a helper's whole work ended).
    Asked of PID 1 on its private bus without waiting for the job: a scope that is
    already gone (the usual case: it ends when its last process does) is fine."""
    try:
        with dbus.Connection(PRIVATE_BUS, STOP_CALL_TIMEOUT_SECONDS) as bus:
            bus.call(member="StopUnit", signature="ss",
                     args=[helper_unit_name(kind, pid), "replace"],
                     destination="org.freedesktop.systemd1", path="/org/freedesktop/systemd1",
                     interface="org.freedesktop.systemd1.Manager")
    except (dbus.DBusError, OSError):
        pass


def join_new_scope(run_id: int, limits: Limits, description: str) -> None:
    """Move this process into a new `minipipe-run-<id>.scope` and wait until it is in."""
    join_scope(unit_name(run_id), limits, description)


def join_scope(unit: str, limits: Limits, description: str) -> None:
    """Move this process into a new scope `unit` and wait until it is in.

    What `systemd-run --scope` does before it execs its command; needs root.
    """
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
                raise ShuttingDown(f"systemd refused {unit}: the system is shutting down") \
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


def unit_state(unit: str) -> str:
    """ActiveState of a unit ("inactive" for one systemd does not know)."""
    result = subprocess.run(["systemctl", "show", "--property=ActiveState", "--value", unit],
                            capture_output=True, text=True)
    return result.stdout.strip() or "inactive"
