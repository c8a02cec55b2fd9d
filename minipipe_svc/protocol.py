"""The API's wire format, shared by the client and the daemon: JSON lines on a unix socket.

One connection carries one request and one reply, each a single JSON object on
one line (UTF-8, ended by "\\n"):

    -> {"v": 1, "op": "submit", "plan": "...", "source": "/home/alice/ci.toml", ...}
    <- {"ok": true, "run": 42}
    <- {"ok": false, "error": "permission_denied", "message": "run 7 belongs to bob"}

The daemon learns who is asking from the socket itself (SO_PEERCRED), never from
the request. Limits: a request is at most MAX_REQUEST_BYTES and must arrive
within REQUEST_TIMEOUT_SECONDS of connecting; the daemon serves at most
MAX_CONNECTIONS at once, MAX_CONNECTIONS_PER_USER of one uid, and answers `busy`
beyond that. README "API" documents
every operation; this module stays import-light (the submit client loads it).
"""

from __future__ import annotations

from . import jsonline

VERSION = 1
MAX_REQUEST_BYTES = 4 * 1024 * 1024  # a 1 MiB plan, JSON-escaped, with room to spare
MAX_REPLY_BYTES = 16 * 1024 * 1024
REQUEST_TIMEOUT_SECONDS = 10.0
MAX_CONNECTIONS = 512
MAX_CONNECTIONS_PER_USER = 32  # one user's idle connections cannot lock out the others

OPERATIONS = ("submit", "cancel", "retry", "pause", "resume", "approve", "reject", "ping")

# Error codes, and the exit status the CLI gives each (see cli.py's EPILOG).
EXIT_FOR_ERROR = {
    "bad_request": 2,        # malformed JSON, unknown op, wrong field types
    "bad_plan": 2,           # the plan is invalid (message: file:line: what to do)
    "no_such_run": 2,
    "conflict": 2,           # the run's state does not allow it (retry a running run)
    "permission_denied": 1,  # not your run, not an admin
    "too_large": 2,
    "timeout": 1,            # the request did not arrive in time
    "busy": 1,               # too many connections; try again
    "unavailable": 1,        # the daemon cannot serve it now (DB locked, shutting down)
    "internal": 1,           # a bug: the daemon's log has the details
}


class ProtocolError(Exception):
    """A request or reply that breaks the wire format."""


def encode(message: dict[str, object]) -> bytes:
    # ASCII keeps lone surrogates (undecodable plan bytes) representable.
    return jsonline.dumps_flat(message).encode("ascii") + b"\n"


def decode(line: bytes) -> dict[str, object]:
    try:
        message = jsonline.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"not a JSON line: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError("a message must be a JSON object")
    return message


def error(code: str, message: str) -> dict[str, object]:
    assert code in EXIT_FOR_ERROR, code
    return {"ok": False, "error": code, "message": message}
