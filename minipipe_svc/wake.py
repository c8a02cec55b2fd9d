"""The daemon's wake-up socket: a unix datagram socket that carries no commands.

Clients write runs to the DB and then send any datagram to wake the scheduler at
once. Because the content is ignored, garbage or a flood on the socket can at
worst cause extra scheduler passes; the DB stays the only source of truth.
"""

from __future__ import annotations

import contextlib
import os
import socket

MAX_DRAIN = 4096
WAKE = b"wake"


def ping(path: str) -> bool:
    """Wake the daemon; False if no daemon is listening on `path`."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.sendto(WAKE, path)
        return True
    except BlockingIOError:
        return True  # the queue is full: the daemon has plenty of wake-ups pending
    except OSError:
        return False
    finally:
        sock.close()


def is_listening(path: str) -> bool:
    """Whether a daemon has the socket bound (connecting sends nothing)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.connect(path)
        return True
    except OSError:
        return False
    finally:
        sock.close()


class WakeSocket:
    def __init__(self, path: str) -> None:
        self.path = path
        if os.path.exists(path) and is_listening(path):
            raise OSError(f"another daemon is listening on {path}")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.bind(path)
        os.chmod(path, 0o660)  # group minipipe may wake the daemon

    def fileno(self) -> int:
        return self.sock.fileno()

    def drain(self) -> tuple[int, int]:
        """Swallow pending datagrams (bounded, so a flood cannot starve the loop).

        Returns (datagrams read, of which not a plain wake-up): the caller logs the
        odd ones; their content is never interpreted.
        """
        count = odd = 0
        while count < MAX_DRAIN:
            try:
                data = self.sock.recv(64)
            except BlockingIOError:
                break
            count += 1
            odd += data != WAKE
        return count, odd

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
