"""Linux process facts from /proc: identity that survives pid reuse, and group clean-up.

A pid alone is not an identity: after a reboot or a long uptime it may belong to
someone else. Every pid minipipe stores comes with the process's start time
(field 22 of /proc/PID/stat), and nothing is signalled unless both match.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read().decode("utf-8", "replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after it.
    return data[data.rindex(")") + 2:].split()


def user_name(uid: int | None = None) -> str:
    """The name of `uid` (default: this process's user), or the number if it has none."""
    import pwd

    uid = os.getuid() if uid is None else uid
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def owner(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def command_line(pid: int, limit: int = 200) -> str:
    """A process's command line for a log line: printable, clipped, "?" if gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            raw = handle.read(limit * 4)
    except OSError:
        return "?"
    text = raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()
    return "".join(c if c.isprintable() else "?" for c in text)[:limit] or "?"


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if it is gone."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def is_alive(pid: int | None, started: int | None) -> bool:
    """True if `pid` still runs and is the same process (not a zombie, not reused)."""
    if not pid:
        return False
    fields = _stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return started is None or int(fields[19]) == started


def group_members(pgid: int, not_before: int | None = None) -> list[int]:
    """Pids in process group `pgid`, started no earlier than `not_before` (ticks)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is None or fields[0] in ("Z", "X") or int(fields[2]) != pgid:
            continue
        if not_before is not None and int(fields[19]) < not_before:
            continue
        members.append(int(entry))
    return members


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> bool:
    """Signal a whole process group; False if it no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make orphaned descendants re-parent to this process instead of init.

    A step that double-forks a daemon (setsid, nohup … &) leaves its process group;
    as a subreaper the runner still finds it among its children and ends it.
    """
    try:
        return libc().prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


@functools.cache
def libc() -> Any:
    """The C library through ctypes (loaded once; the daemon loads it before forking)."""
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def children_of(pid: int) -> list[int]:
    """Direct children of `pid` (zombies included: they still need reaping)."""
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None and int(fields[1]) == pid:
                kids.append(int(entry))
    return kids


def kill_descendants() -> int:
    """SIGKILL and reap every remaining child of this process, and theirs.

    Killing a child re-parents its own children to us (we are a subreaper), so
    repeat until none are left. Returns how many processes were killed.
    """
    killed = 0
    for _round in range(100):
        kids = children_of(os.getpid())
        if not kids:
            break
        for pid in kids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
        for pid in kids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
    return killed


def kill_orphaned_group(pgid: int | None, leader_start: int | None) -> int:
    """SIGKILL what is left of a step's process group after its runner died.

    Only processes that started no earlier than the group's leader are members we
    own; an older process with the same pgid would mean the number was reused.
    Returns how many processes were signalled.
    """
    if not pgid or leader_start is None:
        return 0
    killed = 0
    for pid in group_members(pgid, not_before=leader_start):
        try:
            os.kill(pid, signal.SIGKILL)
            killed += 1
        except (ProcessLookupError, PermissionError):
            pass
    return killed


def exclusive_flock_held(path: str, locks: str | None = None) -> bool:
    """Whether some process holds an exclusive flock on `path`, read from /proc/locks.

    Nobody needs to open the file for this (and closing a descriptor of it would
    drop this process's own POSIX locks on it), so the daemon's lock file can be
    root's alone: a reader allowed to open it could take the lock first and keep
    the daemon from starting.
    """
    try:
        info = os.stat(path)
        if locks is None:
            with open("/proc/locks") as handle:
                locks = handle.read()
    except OSError:
        return False
    wanted = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:2146330 0 EOF" (waiters have an extra "->")
    return any(fields[1:2] == ["FLOCK"] and fields[3:4] == ["WRITE"] and fields[5:6] == [wanted]
               for fields in (line.split() for line in locks.splitlines())
               if len(fields) == 8)


def describe_exit(status: int) -> tuple[int, str | None]:
    """(exit code in shell convention, signal name or None) from a Popen returncode."""
    if status >= 0:
        return status, None
    try:
        name = signal.Signals(-status).name
    except ValueError:
        name = f"signal {-status}"
    return 128 - status, name
