"""Who is asking, who a run executes as, and who may act on whose runs.

The daemon never believes a name a client sends: the caller is the uid the
kernel reports for the socket (SO_PEERCRED). A run executes as its submitter
(config `run_as = "submitter"`, with the submitter's groups, as Slurm and
`systemd-run --uid` do) or as one fixed user; never as root: root's runs use
`run_user`. Ownership: a run's owner, root and members of `admin_group` may
cancel or retry it; pause and resume are for root and admins only.
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
import struct
from typing import Any, NamedTuple

from .config import Config
from .procs import user_name


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
    """
    if identity is None or os.geteuid() != 0:
        return [_probe(path) for path in paths]
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
        return [_probe(path) for path in paths]
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
