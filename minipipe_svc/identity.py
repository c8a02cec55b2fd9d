"""Who is asking, who a run executes as, and who may act on whose runs.

The daemon never believes a name a client sends: the caller is the uid the
kernel reports for the socket (SO_PEERCRED). A run executes as its submitter
(config `run_as = "submitter"`, with the submitter's groups, as Slurm and
`systemd-run --uid` do) or as one fixed user; never as root: root's runs use
`run_user`. Ownership: a run's owner, root and members of `admin_group` may
cancel or retry it; pause and resume are for root and admins only.

Whether a run's user may enter a cwd is asked as that user: by the runner directly
(`probe_directories`), by the daemon without ever waiting on a filesystem that may
not answer (`DirectoryProber`).
"""

from __future__ import annotations

import contextlib
import errno
import gc
import grp
import os
import pwd
import signal
import socket
import stat
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, NoReturn

from .config import Config
from .procs import (
    MOUNTINFO,
    RESOLVE_NO_MAGICLINKS,
    RESOLVE_NO_SYMLINKS,
    RESOLVE_NO_XDEV,
    MountTable,
    MountTree,
    openat2,
    path_parts,
    user_name,
)


class IdentityError(Exception):
    """A run cannot execute as anyone acceptable; the message says why."""


class Peer(NamedTuple):
    """The process on the other end of an API connection, as the kernel tells it."""

    pid: int
    uid: int
    gid: int

    @property
    def name(self) -> str:
        return user_name(self.uid)


def peer_of(sock: socket.socket) -> Peer:
    data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", data)
    return Peer(pid, uid, gid)


class RunIdentity(NamedTuple):
    """The user a run's steps execute as, resolved when the run starts."""

    user: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str
    shell: str

    def login_environment(self) -> dict[str, str]:
        """What `systemd-run --uid` and login set for a process of this user."""
        return {"HOME": self.home, "USER": self.user, "LOGNAME": self.user,
                "SHELL": self.shell}


def identity_of(entry: pwd.struct_passwd, state_gid: int | None = None) -> RunIdentity:
    """The user's identity for steps, without `state_gid`, the group that reads state.

    A member of group minipipe may read every run's plan (environment included) and
    output; a step, often code nobody reviewed, may not: it keeps the user's other
    groups, and where minipipe is the user's primary group it gets `nogroup`.
    """
    if entry.pw_uid == 0:
        raise IdentityError("steps never execute as root")
    gid = entry.pw_gid
    if state_gid is not None and gid == state_gid:
        gid = _nogroup()
    groups = tuple(g for g in os.getgrouplist(entry.pw_name, entry.pw_gid)
                   if g != state_gid or state_gid is None)
    if state_gid is not None and gid not in groups:
        groups = (gid, *groups)
    return RunIdentity(entry.pw_name, entry.pw_uid, gid, groups,
                       entry.pw_dir or "/", entry.pw_shell or "/bin/sh")


def _nogroup() -> int:
    try:
        return grp.getgrnam("nogroup").gr_gid
    except KeyError:
        return 65534


def state_group(db_path: str) -> int | None:
    """The group that may read the state (the DB directory's), if it is not root's."""
    try:
        gid = os.stat(os.path.dirname(os.path.abspath(db_path))).st_gid
    except OSError:
        return None
    return gid or None


def run_identity(config: Config, submitted_uid: int | None) -> RunIdentity | None:
    """Who a run executes as; None when this daemon cannot switch users (not root).

    Root's runs (and runs from before identities were recorded) use `run_user`.
    """
    if os.geteuid() != 0:
        return None
    state_gid = state_group(config.db_path)
    if config.run_as != "submitter":
        name = config.run_as
    elif submitted_uid is not None and submitted_uid != 0:
        try:
            return identity_of(pwd.getpwuid(submitted_uid), state_gid)
        except KeyError:
            raise IdentityError(f"the submitter (uid {submitted_uid}) no longer exists") \
                from None
    elif config.run_user:
        name = config.run_user
    else:
        raise IdentityError("root's runs execute as run_user, and the config sets none")
    try:
        return identity_of(pwd.getpwnam(name), state_gid)
    except KeyError:
        raise IdentityError(f"there is no user {name!r} (config run_as/run_user)") from None


def is_admin(uid: int, admin_group: str | None) -> bool:
    """Root, or a member of `admin_group` (as a supplementary or the primary group)."""
    if uid == 0:
        return True
    if not admin_group:
        return False
    try:
        group = grp.getgrnam(admin_group)
        entry = pwd.getpwuid(uid)
    except KeyError:
        return False
    return entry.pw_gid == group.gr_gid or entry.pw_name in group.gr_mem


def may_act_on(peer_uid: int, owner_uid: int | None, owner_name: str | None,
               admin_group: str | None) -> bool:
    """Whether the caller may cancel or retry a run (its owner, root or an admin)."""
    if peer_uid == owner_uid or is_admin(peer_uid, admin_group):
        return True
    # Runs from before uids were recorded carry only the submitter's name.
    return owner_uid is None and owner_name is not None and owner_name == user_name(peer_uid)


def probe_directories(identity: RunIdentity | None, paths: list[str]) -> list[str]:
    """For each path: "ok", "missing" or "denied", as the run's user would find it.

    Asked as that very user, because root here has no CAP_DAC_* and could not even
    look inside a 0700 home, and because the kernel's answer (ACLs included) is the
    one that counts. Root takes the user's filesystem identity for the few stat()s
    (setfsuid/setfsgid and its groups, put back at once: the daemon and the runner
    have no other threads), which costs microseconds where a forked child cost a
    millisecond. Without an identity (a private instance) this process asks for itself.

    This waits as long as the filesystem does: the runner, whose wait delays only its
    own run, asks this way; the daemon asks a `DirectoryProber`.
    """
    with _filesystem_identity(identity):
        return [_probe(path) for path in paths]


@contextlib.contextmanager
def _filesystem_identity(identity: RunIdentity | None) -> Iterator[None]:
    """Path lookups inside the block are the user's (a no-op without an identity or root)."""
    if identity is None or os.geteuid() != 0:
        yield
        return
    if identity.uid == 0:
        raise IdentityError("steps never execute as root")
    libc = _libc()
    groups, gid = os.getgroups(), os.getegid()
    try:
        os.setgroups(list(identity.groups))
        libc.setfsgid(identity.gid)
        libc.setfsuid(identity.uid)
        # setfsuid() says nothing on failure; asking with an invalid id returns the current.
        if libc.setfsuid(-1) != identity.uid or libc.setfsgid(-1) != identity.gid:
            raise IdentityError(f"could not take the identity of user {identity.user}")
        yield
    finally:
        libc.setfsuid(0)
        libc.setfsgid(gid)
        os.setgroups(groups)


def _libc() -> Any:
    from .procs import libc

    return libc()


def _probe(path: str) -> str:
    """stat() of "path/." succeeds exactly when every directory on the way, and path
    itself, may be searched (entered) by the filesystem identity asking."""
    try:
        os.stat(os.path.join(path, "."))
    except (FileNotFoundError, NotADirectoryError):
        return "missing"
    except OSError:
        return "denied"
    return "ok"


# ---------------------------------------------------------------- the daemon's probe

PROBE_TIMEOUT_SECONDS = 3.0  # a cwd that has not answered by then is reported as hung
MAX_PROBE_CHILDREN = 32  # forked probes alive (or killed, not yet reaped) at once
MAX_PROBE_CHILDREN_PER_USER = 4
_PATH_ONLY = os.O_PATH | os.O_CLOEXEC
# Errors after which only a lookup that might wait can tell: ask in a child.
_UNDECIDED = frozenset({errno.EXDEV, errno.ENOSYS, errno.EPERM, errno.EINVAL, errno.E2BIG,
                        errno.EAGAIN})
PR_SET_PDEATHSIG = 1


class ProbeBusy(Exception):
    """Too many directory probes are waiting already; the message says to try again."""


class DirectoryProber:
    """`probe_directories` for the daemon: its loop never waits on a filesystem.

    A cwd on a filesystem that never answers (a FUSE mount a group member made, a
    hung NFS server) would block a stat() forever. So the daemon answers in-process
    only where every lookup stays on a local, kernel-backed filesystem
    (`procs.LOCAL_FILESYSTEMS`), and asks anything else in a forked child it may
    abandon after PROBE_TIMEOUT_SECONDS (`start_child`, `PendingProbe`).

    Which filesystems a lookup touches is decided without touching any, and without
    trusting the text of the path alone:

    - /proc/self/mountinfo, as a tree (`procs.MountTree`), names the mounts the text
      of the path passes through; all of them must be local.
    - The walk itself goes mount by mount, as the user (setfsuid: search permission is
      theirs). Inside one mount it is openat2() with RESOLVE_NO_XDEV: the kernel
      refuses (EXDEV) to cross into any other mount, wherever a symlink, a `..` or a
      mount made a moment ago would lead. Symlinks are followed by the kernel, not
      by us, so a symlink that stays on its local filesystem costs nothing and one
      that leads onto another filesystem (even another local one) sends the path to
      a child. We never resolve symlinks ourselves (realpath would stat through them).
    - Where the walk does cross, at a mount point the table named, nothing is
      looked up in the mount it enters until poll() on mountinfo confirms no mount
      changed since the table was read: a mount stacked there meanwhile is caught.

    Without openat2 (Linux < 5.6, or a seccomp filter such as systemd-nspawn's on some
    versions) the walk is one name at a time with O_NOFOLLOW (`_walk_by_name`): no
    symlink is followed at all (a path with one goes to a child), so the text of the
    path is the way the kernel goes and the table names every mount it crosses.
    """

    def __init__(self, mountinfo: str | None = None) -> None:
        self.mounts = MountTable(mountinfo or MOUNTINFO)
        self.children: dict[int, int] = {}  # pid -> the asking uid, until reaped
        self._root: int | None = None
        self.has_openat2: bool | None = None  # found out on first use

    def answer_now(self, identity: RunIdentity | None, paths: list[str]) -> list[str | None]:
        """Each path's answer ("ok", "missing", "denied"), or None where finding it
        out could wait on a filesystem (then ask `start_child`)."""
        tree = self.mounts.tree()
        if tree is None:
            return [None] * len(paths)
        if self._root is None:
            self._root = os.open("/", _PATH_ONLY | os.O_DIRECTORY)
        if self.has_openat2 is None:
            try:
                os.close(openat2(self._root, ".", _PATH_ONLY | os.O_DIRECTORY,
                                 RESOLVE_NO_XDEV))
                self.has_openat2 = True
            except OSError:
                self.has_openat2 = False
        walk = self._walk if self.has_openat2 else self._walk_by_name
        with _filesystem_identity(identity):
            return [walk(tree, path) for path in paths]

    def _local_chain(self, tree: MountTree, path: str) -> list[Any] | None:
        parts = path_parts(path)
        chain = tree.chain(path) if os.path.isabs(path) else None
        if chain is None or "." in parts or ".." in parts or not all(m.local for m in chain):
            return None
        return chain

    def _walk_by_name(self, tree: MountTree, path: str) -> str | None:
        """The walk without openat2: each name looked up alone, never through a link."""
        chain = self._local_chain(tree, path)
        if chain is None:
            return None
        crossings = {len(path_parts(m.point)) for m in chain[1:]}
        assert self._root is not None
        here, opened = self._root, []
        try:
            for depth, name in enumerate(path_parts(path), 1):
                try:
                    here = os.open(name, _PATH_ONLY | os.O_NOFOLLOW, dir_fd=here)
                except OSError as exc:
                    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                        return "missing"
                    return "denied" if exc.errno == errno.EACCES else None
                opened.append(here)
                if stat.S_ISLNK(os.fstat(here).st_mode):
                    return None  # a link may lead anywhere: a child follows it
                if depth in crossings and self.mounts.changed():
                    return None
            try:  # "." in it: it is a directory and the user may search it
                opened.append(os.open(".", _PATH_ONLY | os.O_DIRECTORY, dir_fd=here))
            except OSError as exc:
                if exc.errno == errno.ENOTDIR:
                    return "missing"
                return "denied" if exc.errno == errno.EACCES else None
            return "ok"
        finally:
            for fd in opened:
                os.close(fd)

    def _walk(self, tree: MountTree, path: str) -> str | None:
        parts = path_parts(path)
        chain = self._local_chain(tree, path)
        if chain is None:
            return None
        assert self._root is not None
        here, depth, opened = self._root, 0, []
        try:
            for mount in chain[1:]:
                point = path_parts(mount.point)
                if len(point) == depth:
                    continue  # stacked on the previous one: the crossing reached the top
                between = point[depth:]
                try:
                    parent = openat2(here, "/".join(between[:-1]) or ".",
                                     _PATH_ONLY | os.O_DIRECTORY,
                                     RESOLVE_NO_XDEV | RESOLVE_NO_SYMLINKS
                                     | RESOLVE_NO_MAGICLINKS)
                    opened.append(parent)
                    here = os.open(between[-1], _PATH_ONLY | os.O_NOFOLLOW, dir_fd=parent)
                    opened.append(here)
                except OSError as exc:
                    # Only a refusal the kernel made on this local way is an answer.
                    return "denied" if exc.errno == errno.EACCES else None
                if self.mounts.changed():
                    return None
                depth = len(point)
            try:
                opened.append(openat2(here, "/".join((*parts[depth:], ".")),
                                      _PATH_ONLY | os.O_DIRECTORY,
                                      RESOLVE_NO_XDEV | RESOLVE_NO_MAGICLINKS))
            except OSError as exc:
                if exc.errno in _UNDECIDED:
                    return None
                return "missing" if exc.errno in (errno.ENOENT, errno.ENOTDIR) else "denied"
            return "ok"
        finally:
            for fd in opened:
                os.close(fd)

    def start_child(self, identity: RunIdentity | None, paths: list[str],
                    uid: int) -> PendingProbe:
        """Fork a child that takes the user's identity and stats each path in turn.

        Raises ProbeBusy past MAX_PROBE_CHILDREN, or MAX_PROBE_CHILDREN_PER_USER for
        `uid` (children count until reaped: a killed one that cannot die yet, stuck
        in a filesystem, keeps its place).
        """
        if identity is not None and identity.uid == 0:
            raise IdentityError("steps never execute as root")
        self.reap()
        if len(self.children) >= MAX_PROBE_CHILDREN:
            raise ProbeBusy(f"the daemon is already waiting for {len(self.children)} working "
                            "directories on slow filesystems; try again in a few seconds")
        if sum(owner == uid for owner in self.children.values()) >= MAX_PROBE_CHILDREN_PER_USER:
            raise ProbeBusy(f"the daemon is already waiting for {MAX_PROBE_CHILDREN_PER_USER} "
                            "of your working directories on slow filesystems; try again in a "
                            "few seconds")
        read_end, write_end = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            _probe_in_child(identity, paths, write_end, parent)
        os.close(write_end)
        os.set_blocking(read_end, False)
        self.children[pid] = uid
        return PendingProbe(self, pid, read_end, paths,
                            time.monotonic() + PROBE_TIMEOUT_SECONDS)

    def reap(self) -> None:
        """Collect the probe children that ended (each by its own pid: never anyone
        else's, such as the daemon's runners)."""
        for pid in list(self.children):
            try:
                done, _status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                del self.children[pid]

    def close(self) -> None:
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.reap()
        self.mounts.close()
        if self._root is not None:
            os.close(self._root)
            self._root = None


class PendingProbe:
    """A probe child's answers, read as they come, one line per path."""

    def __init__(self, prober: DirectoryProber, pid: int, fd: int, paths: list[str],
                 deadline: float) -> None:
        self.prober, self.pid, self.fd = prober, pid, fd
        self.paths, self.deadline = paths, deadline
        self.received = b""
        self.answers: list[str] = []

    def read(self) -> bool:
        """Take what the child wrote; True once every answer is in or the child is gone."""
        ended = False
        while not ended:
            try:
                chunk = os.read(self.fd, 4096)
            except BlockingIOError:
                break
            except OSError:
                chunk = b""
            ended = not chunk
            self.received += chunk
        self.answers = self.received.decode("ascii", "replace").split("\n")[:-1]
        if ended or len(self.answers) >= len(self.paths):
            self.finish()
            return True
        return False

    def unanswered(self) -> str | None:
        """The first path the child gave no answer for: the one it is stuck in."""
        return self.paths[len(self.answers)] if len(self.answers) < len(self.paths) else None

    def abandon(self) -> None:
        """Stop waiting: kill the child (still unreaped, so the pid is still ours)."""
        if self.pid in self.prober.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        self.finish()

    def finish(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.prober.reap()


def _probe_in_child(identity: RunIdentity | None, paths: list[str], answers: int,
                    parent: int) -> NoReturn:
    """In a freshly forked child: become the user entirely, stat, report, exit."""
    status = 70
    try:
        _child_of(parent, answers)
        _become(identity, None)
        for path in paths:
            os.write(answers, f"{_probe(path)}\n".encode())
        status = 0
    finally:
        os._exit(status)


SETUP_FAILED = b"\0setup failed: "  # what a fork_as child says when `before` failed


def fork_as(identity: RunIdentity | None, groups: list[int] | None,
            work: Callable[[], bytes], before: Callable[[], None] | None = None
            ) -> tuple[int, int]:
    """Fork a child that becomes the user (with `groups`, else the steps' groups),
    runs `work` and writes what it returns to a pipe; returns (its pid, the pipe's
    read end, non-blocking). Reap it with os.waitpid. `before` runs in the child
    first, as root (e.g. to move into a scope of its own).

    The child never executes a program itself, so it stays undumpable: the user can
    neither ptrace it nor take its pipe (pidfd_getfd) to change its answer, only kill
    it (then there is no answer). A program `work` runs is the user's to tamper with.
    """
    read_end, write_end = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        status = 70
        try:
            _child_of(parent, write_end)
            if before is not None:
                try:
                    before()
                except Exception as exc:  # said on the pipe: the caller tells the user
                    os.write(write_end, SETUP_FAILED + str(exc).encode()[:1000])
                    raise
            _become(identity, groups)
            view = memoryview(work())
            while view:
                view = view[os.write(write_end, view):]
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    os.set_blocking(read_end, False)
    return pid, read_end


def answer_as(identity: RunIdentity | None, groups: list[int] | None,
              work: Callable[[], bytes], timeout: float, limit: int = 1 << 20) -> bytes | None:
    """What `work` returned (its first `limit` bytes) in a child that became the user
    (fork_as), waited for; None if it failed, or did not finish within `timeout`
    (then it is killed)."""
    import select

    pid, fd = fork_as(identity, groups, work)
    said, deadline, finished = b"", time.monotonic() + timeout, False
    try:
        while (left := deadline - time.monotonic()) > 0:
            if select.select([fd], [], [], left)[0]:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    finished = True
                    break
                said = (said + chunk)[:limit]
    finally:
        os.close(fd)
        if not finished:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    return said if finished and status == 0 else None


def die_with_parent() -> None:
    """For a child's preexec_fn: SIGKILL when the process that started it dies (a
    check's git, when the daemon kills the check that waits for it)."""
    _libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _child_of(parent: int, keep: int) -> None:
    """In a child forked from the daemon or a runner: killed with its parent, the
    parent's signal handlers and files (its lock, sockets, DB) not its own."""
    gc.disable()  # the parent's objects are never finalized here
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    die_with_parent()
    if os.getppid() != parent:
        raise SystemExit(70)
    os.closerange(3, keep)
    os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX"))


def _become(identity: RunIdentity | None, groups: list[int] | None) -> None:
    """Become the user entirely (as root; otherwise stay who we are)."""
    if identity is not None and os.geteuid() == 0:
        os.setgroups(list(identity.groups) if groups is None else groups)
        os.setgid(identity.gid)
        os.setuid(identity.uid)


def all_groups(identity: RunIdentity) -> list[int]:
    """Every group the user has at a shell (steps drop the one that reads state)."""
    return sorted(set(os.getgrouplist(identity.user, identity.gid)))
