"""The daemon's end of the API socket: non-blocking, inside the scheduler's loop.

Connections are served from the same selector as runner exits and signals, one
small step at a time, so a slow or silent client never stalls the scheduler or
its watchdog pings: a request must arrive whole within REQUEST_TIMEOUT_SECONDS
and fit in MAX_REQUEST_BYTES, at most MAX_CONNECTIONS are open at once, and a
reply the client does not read is dropped at the same deadline. The listening
socket comes from systemd (minipipe.socket, socket activation) or is bound here
for a private instance.

A handler whose answer depends on something that may take long (a cwd on a
network or FUSE filesystem, probed in a child) returns a `Deferred` instead of
waiting: the server then waits for its descriptor in the same selector, and gives
up at its deadline.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
import stat
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import protocol
from .identity import Peer, peer_of

log = logging.getLogger("minipipe.api")

SD_LISTEN_FDS_START = 3
ACCEPTS_PER_WAKE = 256

REPLY_GRACE_SECONDS = 1.0  # to read an answer that came late (a deferred one)


@dataclass
class Deferred:
    """An answer that is not ready yet: the handler's work goes on elsewhere.

    `resume` is called whenever `fd` is readable and returns the reply, or None to
    keep waiting, or the next Deferred of the same request (a second check that
    also must not block); `give_up` is called at `deadline` instead and returns the
    reply then; `abandon` when no reply will be sent (the client left, the daemon
    stops). Each of them releases what the work held.
    """

    fd: int
    deadline: float
    resume: Callable[[], dict[str, Any] | Deferred | None]
    give_up: Callable[[], dict[str, Any] | Deferred]
    abandon: Callable[[], None]


Handler = Callable[[Peer, dict[str, Any]], "dict[str, Any] | Deferred"]


def listening_socket(path: str, group: str | None = None) -> tuple[socket.socket, bool]:
    """The API socket: systemd's (socket activation) or one bound here at `path`.

    Returns (socket, whether systemd owns it). A bound socket is 0600, or 0660 for
    `group` when running as root.
    """
    if os.environ.get("LISTEN_PID") == str(os.getpid()) and os.environ.get("LISTEN_FDS"):
        for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            os.environ.pop(name, None)
        sock = socket.socket(fileno=SD_LISTEN_FDS_START)
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            raise OSError("systemd passed a socket that is not a unix stream socket; check "
                          "minipipe.socket (ListenStream=)")
        os.set_inheritable(sock.fileno(), False)
        sock.setblocking(False)
        return sock, True
    return _bind(path, group), False


def _bind(path: str, group: str | None) -> socket.socket:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if stat.S_ISSOCK(info.st_mode) and someone_listens(path):
            raise OSError(f"another minipipe daemon is listening on {path}")
        if not stat.S_ISSOCK(info.st_mode) and not stat.S_ISLNK(info.st_mode):
            raise OSError(f"{path} exists and is not a socket; remove it or change "
                          "socket_path")
        os.unlink(path)  # a stale socket, or a link: unlink removes the link itself
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    gid = _group_id(group) if os.geteuid() == 0 else None
    previous = os.umask(0o117 if gid is not None else 0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(previous)
    if gid is not None:
        os.chown(path, -1, gid, follow_symlinks=False)
    sock.listen(128)
    sock.setblocking(False)
    return sock


def _group_id(name: str | None) -> int | None:
    import grp

    try:
        return grp.getgrnam(name).gr_gid if name else None
    except KeyError:
        return None


def someone_listens(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


@dataclass
class Connection:
    sock: socket.socket
    peer: Peer
    deadline: float
    received: bytearray = field(default_factory=bytearray)
    outgoing: bytes = b""
    waiting: Deferred | None = None  # the request is in, its answer is not


class ApiServer:
    def __init__(self, listener: socket.socket, handler: Handler,
                 selector: selectors.BaseSelector, *, owned_by_systemd: bool,
                 path: str) -> None:
        self.listener, self.handler, self.selector = listener, handler, selector
        self.owned_by_systemd, self.path = owned_by_systemd, path
        self.connections: dict[int, Connection] = {}
        self.per_user: dict[int, int] = {}
        self.served = 0
        selector.register(listener, selectors.EVENT_READ, ("api", None))

    def next_deadline(self) -> float | None:
        return min((c.waiting.deadline if c.waiting else c.deadline
                    for c in self.connections.values()), default=None)

    def on_event(self, conn: Connection | None, mask: int) -> None:
        if conn is None:
            self.accept()
        elif conn.waiting is not None:
            self.resume(conn)
        elif mask & selectors.EVENT_WRITE:
            self.send(conn)
        else:
            self.receive(conn)

    def accept(self) -> None:
        for _ in range(ACCEPTS_PER_WAKE):
            try:
                sock, _addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. EMFILE: the next wake tries again
                log.warning("cannot accept an API connection: %s", exc)
                return
            sock.setblocking(False)
            try:
                peer = peer_of(sock)
            except OSError:
                sock.close()
                continue
            conn = Connection(sock, peer, time.monotonic() + protocol.REQUEST_TIMEOUT_SECONDS)
            self.connections[sock.fileno()] = conn
            self.per_user[peer.uid] = self.per_user.get(peer.uid, 0) + 1
            if (len(self.connections) > protocol.MAX_CONNECTIONS
                    or self.per_user[peer.uid] > protocol.MAX_CONNECTIONS_PER_USER):
                self.reply(conn, protocol.error("busy", "the daemon is serving too many "
                                                "connections; try again"))
                continue
            self.selector.register(sock, selectors.EVENT_READ, ("api", conn))

    def receive(self, conn: Connection) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.close(conn)  # the client gave up before a whole request
            return
        conn.received += data
        end = conn.received.find(b"\n")
        if end < 0:
            if len(conn.received) > protocol.MAX_REQUEST_BYTES:
                self.reply(conn, protocol.error(
                    "too_large", f"a request is at most {protocol.MAX_REQUEST_BYTES} bytes"))
            return
        self.selector.unregister(conn.sock)
        answer = self.answer(conn.peer, bytes(conn.received[:end]))
        if isinstance(answer, Deferred):
            self.wait_on(conn, answer)
        else:
            self.reply(conn, answer)

    def wait_on(self, conn: Connection, deferred: Deferred) -> None:
        conn.waiting = deferred
        self.selector.register(deferred.fd, selectors.EVENT_READ, ("api", conn))

    def resume(self, conn: Connection) -> None:
        """The deferred answer's descriptor is readable: reply if the answer is ready."""
        deferred = conn.waiting
        assert deferred is not None
        try:
            message = deferred.resume()
        except Exception:
            message = self._failed(conn, deferred)
        if isinstance(message, Deferred):  # the request's next stage
            self.stop_waiting(conn)
            self.wait_on(conn, message)
        elif message is not None:
            self.stop_waiting(conn)
            self.reply_late(conn, message)

    def stop_waiting(self, conn: Connection) -> Deferred | None:
        deferred, conn.waiting = conn.waiting, None
        if deferred is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(deferred.fd)
        return deferred

    def reply_late(self, conn: Connection, message: dict[str, Any]) -> None:
        conn.deadline = max(conn.deadline, time.monotonic() + REPLY_GRACE_SECONDS)
        self.reply(conn, message)

    def _failed(self, conn: Connection, deferred: Deferred) -> dict[str, Any]:
        log.error("a deferred request from uid %d failed:\n%s", conn.peer.uid,
                  traceback.format_exc())
        with contextlib.suppress(Exception):
            deferred.abandon()
        return protocol.error("internal", "the daemon failed on this request; "
                              "`journalctl -u minipipe` has the details")

    def answer(self, peer: Peer, line: bytes) -> dict[str, Any] | Deferred:
        try:
            request = protocol.decode(line)
        except protocol.ProtocolError as exc:
            return protocol.error("bad_request", str(exc))
        try:
            reply = self.handler(peer, request)
        except Exception:
            log.error("request %r from uid %d failed:\n%s", request.get("op"), peer.uid,
                      traceback.format_exc())
            return protocol.error("internal", "the daemon failed on this request; "
                                  "`journalctl -u minipipe` has the details")
        self.served += 1
        return reply

    def reply(self, conn: Connection, message: dict[str, Any]) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(conn.sock)
        conn.outgoing = protocol.encode(message)
        self.send(conn)

    def send(self, conn: Connection) -> None:
        try:
            sent = conn.sock.send(conn.outgoing)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.close(conn)
            return
        conn.outgoing = conn.outgoing[sent:]
        if not conn.outgoing:
            self.close(conn)
            return
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(conn.sock)
        self.selector.register(conn.sock, selectors.EVENT_WRITE, ("api", conn))

    def expire(self) -> None:
        """Close connections whose client is too slow, with a reply if it still fits;
        answer deferred requests whose work did not finish in time."""
        now = time.monotonic()
        for conn in [c for c in self.connections.values()
                     if c.waiting is not None and c.waiting.deadline <= now]:
            deferred = self.stop_waiting(conn)
            assert deferred is not None
            try:
                message: dict[str, Any] | Deferred = deferred.give_up()
            except Exception:
                message = self._failed(conn, deferred)
            if isinstance(message, Deferred):  # it answered just in time: next stage
                self.wait_on(conn, message)
            else:
                self.reply_late(conn, message)
        for conn in [c for c in self.connections.values()
                     if c.waiting is None and c.deadline <= now]:
            if conn.outgoing:
                self.close(conn)  # it does not read its reply
                continue
            log.warning("API client pid %d (uid %d) sent no complete request within %gs",
                        conn.peer.pid, conn.peer.uid, protocol.REQUEST_TIMEOUT_SECONDS)
            conn.deadline = float("inf")
            self.reply(conn, protocol.error("timeout", "no complete request within "
                                            f"{protocol.REQUEST_TIMEOUT_SECONDS:g}s"))
            if conn.sock.fileno() in self.connections and conn.outgoing:
                conn.deadline = now + 1.0

    def close(self, conn: Connection) -> None:
        if (deferred := self.stop_waiting(conn)) is not None:
            deferred.abandon()
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(conn.sock)
        if self.connections.pop(conn.sock.fileno(), None) is not None:
            left = self.per_user.get(conn.peer.uid, 1) - 1
            if left > 0:
                self.per_user[conn.peer.uid] = left
            else:
                self.per_user.pop(conn.peer.uid, None)
        conn.sock.close()

    def shutdown(self) -> None:
        for conn in list(self.connections.values()):
            self.close(conn)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(self.listener)
        if not self.owned_by_systemd:
            # Ours to remove; systemd keeps its socket listening for the next start.
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                    os.unlink(self.path)
        self.listener.close()
