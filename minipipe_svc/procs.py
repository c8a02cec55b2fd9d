"""Linux process facts from /proc: identity that survives pid reuse, and group clean-up.

A pid alone is not an identity: after a reboot or a long uptime it may belong to
someone else. Every pid minipipe stores comes with the process's start time
(field 22 of /proc/PID/stat), and nothing is signalled unless both match.
"""

from __future__ import annotations

import functools
import os

# signal.SIGKILL, without importing `signal` (with `enum`) on the read commands' path.
SIGKILL = 9

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


def kill_group(pgid: int, sig: int = SIGKILL) -> bool:
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


def kill_descendants(reaped: list[Any] | None = None) -> int:
    """SIGKILL and reap every remaining child of this process, and theirs.

    Killing a child re-parents its own children to us (we are a subreaper), so
    repeat until none are left. Returns how many processes were killed; each
    reaped child's rusage (wait4: its own and its reaped children's) goes to
    `reaped`, so what a step's orphans consumed is not lost.
    """
    killed = 0
    for _round in range(100):
        kids = children_of(os.getpid())
        if not kids:
            break
        for pid in kids:
            try:
                os.kill(pid, SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
        for pid in kids:
            with _Suppress(ChildProcessError):
                usage = os.wait4(pid, 0)[2]
                if reaped is not None:
                    reaped.append(usage)
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
            os.kill(pid, SIGKILL)
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
        import signal

        name = signal.Signals(-status).name
    except ValueError:
        name = f"signal {-status}"
    return 128 - status, name


# ---------------------------------------------------------------- mounts

# Filesystems whose lookups this kernel answers from memory or a local disk: a stat()
# in them returns or fails, it never waits for a server or a FUSE daemon. Anything
# else (fuse.*, fuseblk, nfs*, cifs, smb3, 9p, ceph, autofs, unknown) may never answer.
LOCAL_FILESYSTEMS = frozenset({
    "ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "f2fs", "vfat", "exfat", "tmpfs", "ramfs",
    "devtmpfs", "overlay", "squashfs"})
MOUNTINFO = "/proc/self/mountinfo"


class Mount:
    """One line of /proc/self/mountinfo, the parts a lookup depends on."""

    __slots__ = ("fstype", "id", "parent", "point")

    def __init__(self, id: int, parent: int, point: str, fstype: str) -> None:
        self.id, self.parent = id, parent
        self.point = point  # where it is mounted, as this process sees it (unescaped)
        self.fstype = fstype  # "ext4", "fuse.sshfs", ...

    @property
    def local(self) -> bool:
        return self.fstype in LOCAL_FILESYSTEMS

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mount) and (self.id, self.parent, self.point, self.fstype) \
            == (other.id, other.parent, other.point, other.fstype)

    def __hash__(self) -> int:
        return hash((self.id, self.point))

    def __repr__(self) -> str:
        return f"Mount({self.id}, {self.parent}, {self.point!r}, {self.fstype!r})"


def _unescape(field: str) -> str:
    """The kernel writes space, tab, newline and backslash in paths as \\ooo (octal)."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        code = field[i + 1:i + 4]
        if field[i] == "\\" and len(code) == 3 and all(c in "01234567" for c in code):
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[Mount] | None:
    """The mounts listed in mountinfo `text`, or None if a line is not understood.

    All or nothing: a mount missing from the table could sit where a lookup crosses
    into it, and the caller would take it for its parent's filesystem.
    """
    mounts = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            # Fields: id parent major:minor root point options [optional...] - type ...
            separator = fields.index("-", 6)
            mounts.append(Mount(int(fields[0]), int(fields[1]), _unescape(fields[4]),
                                fields[separator + 1]))
        except (ValueError, IndexError):
            return None
    return mounts


def path_parts(path: str) -> tuple[str, ...]:
    return tuple(part for part in path.split("/") if part)


class MountTree:
    """Mounts as the kernel stacks them: which one a lookup of a path ends in.

    Pure: built from `parse_mountinfo`'s list (tests feed it text).
    """

    def __init__(self, mounts: list[Mount]) -> None:
        ids = {m.id for m in mounts}
        self.size = len(mounts)
        self.roots = [m for m in mounts if m.point == "/" and (m.parent == m.id
                                                               or m.parent not in ids)]
        self.children: dict[int, list[tuple[tuple[str, ...], Mount]]] = {}
        for mount in mounts:
            if mount.id != mount.parent:
                self.children.setdefault(mount.parent, []).append(
                    (path_parts(mount.point), mount))

    def chain(self, path: str) -> list[Mount] | None:
        """The mounts a lookup of the absolute, normalized, symlink-free `path` passes
        through, from the root mount to the one it ends in; None when this table
        cannot tell (no single root, two mounts on the same spot of one parent).

        Textual: each step takes, among the current mount's children, the one whose
        mount point is the shortest prefix of `path`, as a lookup meets it first. A
        mount stacked on another one is its child at the same point, so the top of a
        stack wins, and a mount hidden under a later one above it is never reached
        (a longest-prefix match over all mount points would pick it).
        """
        if len(self.roots) != 1:
            return None
        parts = path_parts(path)
        chain = [self.roots[0]]
        depth = 0
        while len(chain) <= self.size:
            found: tuple[tuple[str, ...], Mount] | None = None
            for point, mount in self.children.get(chain[-1].id, ()):
                if len(point) < depth or parts[:len(point)] != point:
                    continue
                if found is not None and len(found[0]) == len(point):
                    return None
                if found is None or len(point) < len(found[0]):
                    found = (point, mount)
            if found is None:
                return chain
            depth = len(found[0])
            chain.append(found[1])
        return None


class MountTable:
    """This process's mounts, read again only after the kernel says they changed.

    /proc/self/mountinfo reports every mount and unmount in this namespace as a
    priority event to poll(), once per change: `changed()` costs one system call, so
    a lookup can check that nothing was mounted while it walked (see identity.py).
    A file other than /proc's (tests) is read once.
    """

    def __init__(self, path: str = MOUNTINFO) -> None:
        import select

        self.path = path
        self._fd: int | None = None
        self._poller = select.poll()
        self._events = select.POLLPRI | select.POLLERR
        self._tree: MountTree | None = None
        self._stale = True

    def changed(self) -> bool:
        """Whether mounts changed since the last read (then the next `tree()` reads)."""
        if self._fd is not None and self._poller.poll(0):
            self._stale = True
        return self._stale

    def tree(self) -> MountTree | None:
        """The current mounts, or None if they cannot be read or understood."""
        if not self.changed():
            return self._tree
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            # Opened before reading: a change while reading shows at the next poll.
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
        except OSError:
            os.close(fd)
            return None
        if self._fd is not None:
            self._poller.unregister(self._fd)
            os.close(self._fd)
        self._fd = fd
        self._poller.register(fd, self._events)
        mounts = parse_mountinfo(b"".join(chunks).decode("utf-8", "surrogateescape"))
        self._tree = MountTree(mounts) if mounts is not None else None
        self._stale = False
        return self._tree

    def close(self) -> None:
        if self._fd is not None:
            self._poller.unregister(self._fd)
            os.close(self._fd)
            self._fd = None
        self._stale = True


# openat2(2) (Linux 5.6): path resolution with limits the kernel enforces as it walks.
SYS_OPENAT2 = 437  # the same number on every architecture (new system calls share it)
RESOLVE_NO_XDEV = 0x01  # fail with EXDEV rather than cross into another mount
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04


@functools.cache
def _open_how(flags: int, resolve: int) -> Any:
    import ctypes

    class OpenHow(ctypes.Structure):
        _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                    ("resolve", ctypes.c_uint64)]

    return OpenHow(flags, 0, resolve)


def openat2(dirfd: int, path: str, flags: int, resolve: int) -> int:
    """A descriptor for `path` relative to `dirfd`; OSError as open() raises it
    (ENOSYS before Linux 5.6, EPERM where a seccomp filter refuses the call)."""
    import ctypes

    how = _open_how(flags, resolve)
    call = libc().syscall
    call.restype = ctypes.c_long
    fd = call(ctypes.c_long(SYS_OPENAT2), ctypes.c_int(dirfd),
              ctypes.c_char_p(os.fsencode(path)), ctypes.byref(how),
              ctypes.c_size_t(ctypes.sizeof(how)))
    if fd < 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error), path)
    return fd


class _Suppress:
    """contextlib.suppress, which `minipipe status` must not import."""

    def __init__(self, *kinds: type[BaseException]) -> None:
        self.kinds = kinds

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 _tb: object) -> bool:
        return kind is not None and issubclass(kind, self.kinds)
