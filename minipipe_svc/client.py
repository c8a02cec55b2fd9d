"""The client side of the API: one request to the daemon, one reply.

Every change of state (submit, cancel, retry, pause, resume) goes through the
daemon, which alone may write the DB; reads (ls, show, logs, the monitor) stay
direct and read-only. Kept import-light: `minipipe submit` loads only this,
protocol.py and planfile.py (no click, sqlite3 or tomllib).
"""

from __future__ import annotations

import os

# socket.py's C core: the same socket objects, without socket.py's own import (its
# enums and selectors cost ~2 ms, a quarter of Python's start, for every submit).
from _socket import AF_UNIX, SOCK_STREAM, socket

from . import protocol
from .planfile import PlanError, read_plan_file

REPLY_TIMEOUT_SECONDS = 120.0  # a socket-activated daemon first repairs the DB


class ClientError(Exception):
    """The daemon said no, or could not be reached; `code` is a protocol error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code

    @property
    def exit_status(self) -> int:
        return protocol.EXIT_FOR_ERROR.get(self.code, 1)


def not_running(path: str) -> ClientError:
    return ClientError("unavailable", (
        f"the minipipe daemon is not running: nothing listens on {path}; start it with "
        "`sudo systemctl start minipipe` (or `minipipe daemon` for a private instance)"))


def call(socket_path: str, op: str, **fields: object) -> dict[str, object]:
    """Send one request; the reply's fields, or ClientError with the daemon's words."""
    sock = socket(AF_UNIX, SOCK_STREAM)
    try:
        sock.settimeout(REPLY_TIMEOUT_SECONDS)
        try:
            _connect(sock, socket_path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise not_running(socket_path) from None
        except PermissionError:
            raise ClientError("permission_denied", (
                f"permission denied: cannot connect to {socket_path}; add yourself to group "
                "minipipe (then log in again)")) from None
        except TimeoutError:
            raise ClientError("busy", f"the daemon accepts no connections on {socket_path} "
                              "(too busy or stuck); see `journalctl -u minipipe`") from None
        try:
            # The daemon may answer early (busy, too large): then read why.
            # (try/except, not contextlib.suppress: contextlib costs start-up time)
            try:  # noqa: SIM105
                sock.sendall(protocol.encode({"v": protocol.VERSION, "op": op, **fields}))
            except (BrokenPipeError, ConnectionResetError):
                pass
            reply = _read_line(sock)
        except TimeoutError:
            raise ClientError("unavailable", f"the daemon did not answer within "
                              f"{REPLY_TIMEOUT_SECONDS:g}s; see `journalctl -u minipipe`") \
                from None
        except OSError as exc:
            raise ClientError("unavailable", f"lost the connection to the daemon "
                              f"({exc.strerror or exc}); see `journalctl -u minipipe`") from None
    finally:
        sock.close()
    if not reply:
        raise ClientError("unavailable", "the daemon closed the connection without an answer "
                          "(it may be stopping); try again")
    try:
        message = protocol.decode(reply)
    except protocol.ProtocolError as exc:
        raise ClientError("internal", f"unreadable answer from the daemon: {exc}") from None
    if message.get("ok") is not True:
        raise ClientError(str(message.get("error", "internal")),
                          str(message.get("message", "the daemon refused the request")))
    return message


def _connect(sock: socket, path: str) -> None:
    """connect(), waiting while the daemon's backlog is full (a unix socket with a
    timeout says EAGAIN then, where TCP would wait)."""
    import time

    deadline = time.monotonic() + REPLY_TIMEOUT_SECONDS
    delay = 0.001
    while True:
        try:
            sock.connect(path)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise TimeoutError from None
            time.sleep(delay)
            delay = min(delay * 2, 0.05)


def _read_line(sock: socket) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if chunk.endswith(b"\n"):
            return b"".join(chunks)
        if size > protocol.MAX_REPLY_BYTES:
            raise ClientError("internal", "the daemon's answer is too large")


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def submit(socket_path: str, plan_arg: str, *, fmt: str | None = None,
           priority: int | None = None, stdin: bytes | None = None,
           read_back: bool = False, waits: dict[str, object] | None = None
           ) -> dict[str, object]:
    """Read a plan file and hand it to the daemon, which validates and queues it.

    The daemon reads nothing of the caller's: it gets the plan's text, where it
    came from (for messages and the default working directory) and the caller's
    umask. Raises PlanError for a file that cannot be read, ClientError otherwise;
    an invalid plan comes back as ClientError("bad_plan", "file:line: ...").
    `waits`: `after`, `after_any` (run ids), `not_before` (ISO 8601 with offset).
    """
    if plan_arg == "-":
        data, path = stdin or b"", None
    else:
        data, path = read_plan_file(plan_arg), os.path.abspath(plan_arg)
    return call(socket_path, "submit",
                plan=data.decode("utf-8", "surrogateescape"), source=plan_arg, path=path,
                cwd=os.getcwd(), format=fmt, priority=priority, umask=current_umask(),
                read_back=read_back, **(waits or {}))


__all__ = ["ClientError", "PlanError", "call", "not_running", "submit"]
