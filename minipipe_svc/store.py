"""The SQLite store: every SQL statement of minipipe lives in this module.

Writers use `BEGIN IMMEDIATE` transactions so two processes never deadlock on a
lock upgrade; every state change validates against `model` and appends its event
in the same transaction. WAL lets readers (CLI, monitor) never block the writers.
"""

from __future__ import annotations

import os
import sqlite3
from collections import namedtuple
from datetime import UTC, datetime

from . import jsonline
from .model import (
    RUN_RETRYABLE,
    RUN_TERMINAL,
    STAGES,
    IllegalTransition,
    RunState,
    StepState,
    check_run_transition,
    check_step_transition,
)

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: `typing` is not loaded by the read commands
    from collections.abc import Collection, Generator, Iterator
    from typing import Any

BUSY_TIMEOUT_MS = 10_000
# SQLite's unix VFS keeps the WAL locks in -shm from byte 120: write, checkpoint, recover.
WAL_WRITE_LOCK_BYTE = 120

# When a run ends while one of its steps is still RUNNING (its runner died, or the
# run was stopped as a whole), that step ends like this.
_STEP_STATE_FOR_ABANDONED_RUN = {
    RunState.FAILED: StepState.FAILED,
    RunState.INTERRUPTED: StepState.FAILED,
    RunState.CANCELLED: StepState.CANCELLED,
    RunState.TIMED_OUT: StepState.TIMED_OUT,
}

_SCHEMA_V1 = """
CREATE TABLE runs (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    name            TEXT NOT NULL,
    plan            TEXT NOT NULL,              -- normalized plan, JSON
    plan_source     TEXT,
    state           TEXT NOT NULL,
    phase           TEXT,
    priority        INTEGER NOT NULL DEFAULT 0,
    steps_total     INTEGER NOT NULL,
    attempt         INTEGER NOT NULL DEFAULT 1,
    exit_code       INTEGER,
    reason          TEXT,
    created_at      TEXT NOT NULL,
    started_at      TEXT,
    finished_at     TEXT,
    submitted_by    TEXT,
    unit            TEXT,
    runner_pid      INTEGER,
    runner_start    INTEGER,                    -- /proc start time: guards against pid reuse
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX runs_by_queue ON runs (state, priority DESC, id);
CREATE TABLE steps (
    run_id      INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    idx         INTEGER NOT NULL,
    step_id     TEXT NOT NULL,
    phase       TEXT NOT NULL,
    command     TEXT NOT NULL,
    state       TEXT NOT NULL,
    attempt     INTEGER NOT NULL DEFAULT 0,
    started_at  TEXT,
    finished_at TEXT,
    exit_code   INTEGER,
    reason      TEXT,
    pid         INTEGER,
    pid_start   INTEGER,
    PRIMARY KEY (run_id, idx)
);
CREATE TABLE events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    ts      TEXT NOT NULL,
    run_id  INTEGER REFERENCES runs (id) ON DELETE CASCADE,
    step_id TEXT,
    kind    TEXT NOT NULL,
    detail  TEXT                                -- JSON object or NULL
);
CREATE INDEX events_by_run ON events (run_id, id);
CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

# v2: auto-cleanup and `ls --state` over a long history look runs up by end time.
_SCHEMA_V2 = """
CREATE INDEX runs_by_finished ON runs (finished_at) WHERE finished_at IS NOT NULL;
"""

# v3: counts per state kept by triggers. The daemon reports them after every pass and
# `status` shows them; counting 100,000 finished runs each time cost ~40 ms (bench/).
_SCHEMA_V3 = """
CREATE TABLE run_counts (state TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;
INSERT INTO run_counts (state, n) SELECT state, count(*) FROM runs GROUP BY state;
CREATE TRIGGER run_counts_insert AFTER INSERT ON runs BEGIN
    INSERT INTO run_counts (state, n) VALUES (NEW.state, 1)
        ON CONFLICT (state) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER run_counts_update AFTER UPDATE OF state ON runs
WHEN OLD.state != NEW.state BEGIN
    UPDATE run_counts SET n = n - 1 WHERE state = OLD.state;
    INSERT INTO run_counts (state, n) VALUES (NEW.state, 1)
        ON CONFLICT (state) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER run_counts_delete AFTER DELETE ON runs BEGIN
    UPDATE run_counts SET n = n - 1 WHERE state = OLD.state;
END;
"""

# v4: runs have an identity. Who submitted (the uid the daemon got from SO_PEERCRED,
# not a name a client claims), with which umask, and the user the steps run as.
_SCHEMA_V4 = """
ALTER TABLE runs ADD COLUMN submitted_uid INTEGER;
ALTER TABLE runs ADD COLUMN umask INTEGER;
ALTER TABLE runs ADD COLUMN run_user TEXT;
CREATE INDEX runs_by_submitter ON runs (submitted_by, id);
"""

# v5: runs on their own git worktree (workspace.py). What the plan says (repo, ref,
# land, target, review) stays in the plan; this is what happened: the worktree, the
# base the run started from, the reviewed commit and its changes (JSON), the landing.
_SCHEMA_V5 = """
CREATE TABLE workspaces (
    run_id          INTEGER PRIMARY KEY REFERENCES runs (id) ON DELETE CASCADE,
    review          INTEGER NOT NULL DEFAULT 0,
    path            TEXT,
    branch          TEXT,
    base_commit     TEXT,
    head_commit     TEXT,
    changes         TEXT,                       -- JSON: workspace.Git.changes()
    disk_bytes      INTEGER,
    awaiting_since  TEXT,
    approved_by     TEXT,
    landed_commit   TEXT,
    removed_at      TEXT
);
CREATE INDEX workspaces_to_remove ON workspaces (run_id) WHERE removed_at IS NULL;
"""

# v6: a run's steps work in a checkout of their own, not a linked worktree, and an
# approved change lands as its approver (root: the repository's owner): their uid.
_SCHEMA_V6 = """
ALTER TABLE workspaces ADD COLUMN approved_uid INTEGER;
"""

# v7: runs that wait. For other runs (`after`: until they SUCCEEDED, `any_result`:
# until they ended) and for a time (`not_before`, UTC, the format of utc_now()).
_SCHEMA_V7 = """
CREATE TABLE run_dependencies (
    run_id      INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    after_id    INTEGER NOT NULL,
    any_result  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, after_id)
);
CREATE INDEX run_dependencies_by_after ON run_dependencies (after_id);
ALTER TABLE runs ADD COLUMN not_before TEXT;
"""

# v8: pools. A run's pool (config `pools`) and, while RUNNING, its slot in it
# (0..size-1, unique among the pool's running runs; MINIPIPE_SLOT for its steps).
_SCHEMA_V8 = """
ALTER TABLE runs ADD COLUMN pool TEXT;
ALTER TABLE runs ADD COLUMN slot INTEGER;
"""

# v9: matrix runs. The runs one submit made (named by its first run's id) and how many
# of them may run at once (NULL: no limit of their own).
_SCHEMA_V9 = """
ALTER TABLE runs ADD COLUMN group_id INTEGER;
ALTER TABLE runs ADD COLUMN group_max INTEGER;
"""

# v10: what steps and runs consumed (JSON: accounting.py's figures, source, what the
# host could not give).
_SCHEMA_V10 = """
ALTER TABLE steps ADD COLUMN usage TEXT;
ALTER TABLE runs ADD COLUMN usage TEXT;
"""

# v11: when a run's change landed (whatever the land mode; landed_commit is None for
# branch-only): a retry after that runs only the on_approve steps, never lands again.
_SCHEMA_V11 = """
ALTER TABLE workspaces ADD COLUMN landed_at TEXT;
"""

# Migration N (1-based) brings user_version from N-1 to N. Append, never edit.
MIGRATIONS: tuple[str, ...] = (_SCHEMA_V1, _SCHEMA_V2, _SCHEMA_V3, _SCHEMA_V4, _SCHEMA_V5,
                               _SCHEMA_V6, _SCHEMA_V7, _SCHEMA_V8, _SCHEMA_V9, _SCHEMA_V10,
                               _SCHEMA_V11)
SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(Exception):
    """The DB cannot be used; the message says why and what to do."""


class StoreMissing(StoreError):
    pass


class SchemaTooNew(StoreError):
    pass


class NoSuchRun(StoreError):
    pass


class ConflictError(StoreError):
    """The request does not fit the run's current state (e.g. retrying a running run)."""


_TERMINAL_SQL = ", ".join(f"'{state.value}'" for state in sorted(RUN_TERMINAL))
# A dependency `d` (run_dependencies) on run `p` (LEFT JOINed) that can never be met:
# it had to succeed and ended otherwise, or is gone. (A gone --after-any one had
# ended: cleanup deletes only ended runs, and none a pending run waits for.)
_DEPENDENCY_FAILED_SQL = ("d.any_result = 0 AND (p.id IS NULL OR (p.state != 'SUCCEEDED' "
                          f"AND p.state IN ({_TERMINAL_SQL})))")


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _statements(script: str) -> Iterator[str]:
    """The SQL statements of a script, trigger bodies (with their own `;`) kept whole."""
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                yield pending
            pending = ""


def _uri_path(path: str) -> str:
    """A path as SQLite's URI syntax wants it: %, ? and # escaped (and nothing else)."""
    return path.replace("%", "%25").replace("?", "%3f").replace("#", "%23")


def _prepare_writable(path: str, directory: str, exists: bool) -> None:
    """Checks and creation for the one writer (the daemon, its runners).

    As root, refuse a DB directory that anyone but root may write: whoever can
    write it can swap the DB or its -wal/-shm for a symlink to any file.
    """
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create {directory}: {exc.strerror}") from None
    if os.geteuid() == 0:
        problem = unsafe_directory(directory)
        if problem:
            raise StoreError(problem)
    if not os.access(directory, os.W_OK | os.X_OK):
        raise StoreError(f"permission denied: cannot write in {directory}; only the daemon "
                         "writes the DB (submit, cancel and retry go through it)")
    if exists and os.path.islink(path):
        raise StoreError(f"{path} is a symbolic link; the state DB must be a regular file")
    if os.geteuid() == 0:
        for name in (path, path + "-wal", path + "-shm"):
            if problem := _unsafe_file(name):
                raise StoreError(problem)
    if not exists:
        # Readable by the group (members read the DB directly), writable by us alone.
        # O_EXCL | O_NOFOLLOW: never create through a link someone else placed.
        # The mode is set explicitly: the service's umask (0077) would take the group's
        # read bit, and SQLite gives -wal and -shm the DB file's mode.
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o640)
        except FileExistsError:
            return
        try:
            os.fchmod(fd, 0o640)
        finally:
            os.close(fd)


def _lock_holders(path: str, first: int, count: int) -> list[int]:
    """Pids holding a lock that conflicts with a write lock on bytes first.. of path."""
    import fcntl
    import struct

    holders = []
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return []
    try:
        for offset in range(first, first + count):
            query = struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, offset, 1, 0)
            kind, _whence, _start, _length, pid = struct.unpack(
                "hhqqi", fcntl.fcntl(fd, fcntl.F_GETLK, query))
            if kind != fcntl.F_UNLCK and pid > 0:
                holders.append(pid)
    except OSError:
        pass
    finally:
        os.close(fd)
    return holders


def _unsafe_file(path: str) -> str | None:
    """Why a DB file root is about to write is not root's alone, or None.

    A hard link or a writable mode kept from an older install (0.1.0's DB was 0660 in a
    group-writable directory) would let someone else change what root reads back.
    """
    import stat

    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot check {path}: {exc.strerror}"
    if (not stat.S_ISREG(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o022
            or info.st_nlink != 1):
        return (f"{path} is not a file only root may write (mode "
                f"{stat.filemode(info.st_mode)}, owner uid {info.st_uid}, {info.st_nlink} "
                "link(s)); copy it to a new file owned by root, 0640, and move that in place")
    return None


def unsafe_directory(directory: str) -> str | None:
    """Why a directory root writes in is unsafe (others may write it), or None."""
    try:
        info = os.lstat(directory)
    except OSError as exc:
        return f"cannot check {directory}: {exc.strerror}"
    import stat

    if not stat.S_ISDIR(info.st_mode):
        return f"{directory} is not a directory"
    if info.st_uid != os.geteuid() or info.st_mode & 0o022:
        return (f"{directory} may be written by others than root (mode "
                f"{stat.filemode(info.st_mode)}, owner uid {info.st_uid}); a process running "
                f"as root refuses to write there: `chown root {directory} && chmod go-w "
                f"{directory}`")
    return None


def _connect(path: str, readonly: bool,
             busy_timeout_ms: int) -> tuple[sqlite3.Connection, bool]:
    """A connection; a reader falls back to an immutable view when nobody writes.

    A WAL database needs its -wal and -shm files, which only the writer may create.
    While any writer has the DB open they exist and a read-only connection uses
    them; after the last writer closed cleanly they are gone, the DB file holds
    everything, and `immutable=1` reads it without them.
    """
    base = "file:" + _uri_path(os.path.abspath(path))
    conn = _connect_uri(base + ("?mode=ro" if readonly else "?mode=rwc"), busy_timeout_ms)
    if not readonly:
        return conn, False
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error:
        conn.close()
        if os.path.exists(path + "-wal"):
            raise
        return _connect_uri(base + "?mode=ro&immutable=1", busy_timeout_ms), True
    return conn, False


def _connect_uri(uri: str, busy_timeout_ms: int) -> sqlite3.Connection:
    conn = sqlite3.connect(uri, uri=True, isolation_level=None,
                           timeout=busy_timeout_ms / 1000, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


# Rows as the readers get them. Plain namedtuples, not typing.NamedTuple: `minipipe ls`
# must not pay for importing `typing` (bench/ figure 7). Field types, for readers:
#   RunRow: id int, name str, state RunState, phase str|None, priority int, steps_total
#     int, steps_done int, attempt int, exit_code int|None, reason str|None, created_at
#     str, started_at/finished_at str|None, plan_source str|None, submitted_by str|None,
#     unit str|None, runner_pid/runner_start int|None, cancel_requested bool,
#     submitted_uid int|None, umask int|None, run_user str|None
#   StepRow: run_id int, idx int, step_id str, phase str, command str, state StepState,
#     attempt int, started_at/finished_at str|None, exit_code int|None, reason str|None,
#     pid/pid_start int|None
#   EventRow: id int, ts str, run_id int|None, step_id str|None, kind str, detail dict
RunRow = namedtuple("RunRow", [
    "id", "name", "state", "phase", "priority", "steps_total", "steps_done", "attempt",
    "exit_code", "reason", "created_at", "started_at", "finished_at", "plan_source",
    "submitted_by", "unit", "runner_pid", "runner_start", "cancel_requested",
    "submitted_uid", "umask", "run_user", "not_before", "pool", "slot", "group_id",
    "group_max", "usage"], defaults=(None,) * 6)  # the fields added since v7
StepRow = namedtuple("StepRow", [
    "run_id", "idx", "step_id", "phase", "command", "state", "attempt", "started_at",
    "finished_at", "exit_code", "reason", "pid", "pid_start", "usage", "stage"],
    defaults=(None, "main"))  # stage: model.STAGES, from the run's plan
EventRow = namedtuple("EventRow", ["id", "ts", "run_id", "step_id", "kind", "detail"])
#   WorkspaceRow: run_id int, review bool, path/branch/base_commit/head_commit str|None,
#     changes dict|None (workspace.Git.changes), disk_bytes int|None, awaiting_since,
#     approved_by, landed_commit, removed_at str|None, approved_uid int|None,
#     landed_at str|None
WorkspaceRow = namedtuple("WorkspaceRow", [
    "run_id", "review", "path", "branch", "base_commit", "head_commit", "changes",
    "disk_bytes", "awaiting_since", "approved_by", "landed_commit", "removed_at",
    "approved_uid", "landed_at"], defaults=(None,))


def _dumps(value: object) -> str:
    """JSON text for the DB; `json` is imported by writers only (it loads `re`)."""
    import json

    return json.dumps(value)


def _loads(text: str) -> Any:
    return jsonline.loads(text)


_RUN_COLUMNS = """
    r.id, r.name, r.state, r.phase, r.priority, r.steps_total,
    (SELECT count(*) FROM steps s WHERE s.run_id = r.id AND s.state = 'SUCCEEDED') AS steps_done,
    r.attempt, r.exit_code, r.reason, r.created_at, r.started_at, r.finished_at,
    r.plan_source, r.submitted_by, r.unit, r.runner_pid, r.runner_start, r.cancel_requested,
    r.submitted_uid, r.umask, r.run_user, r.not_before, r.pool, r.slot, r.group_id,
    r.group_max, r.usage
"""


def _run_row(row: sqlite3.Row | dict[str, Any]) -> RunRow:
    values = dict(row)
    values["state"] = RunState(values["state"])
    values["cancel_requested"] = bool(values["cancel_requested"])
    values["usage"] = _loads(values["usage"]) if values.get("usage") else None
    return RunRow(**values)


def _step_row(row: sqlite3.Row, stage: object = "main") -> StepRow:
    values = dict(row)
    values["state"] = StepState(values["state"])
    values["usage"] = _loads(values["usage"]) if values.get("usage") else None
    # (from the plan row, read as hostile: anything else is a plain step)
    values["stage"] = stage if stage in STAGES else "main"
    return StepRow(**values)


def _event_row(row: sqlite3.Row) -> EventRow:
    values = dict(row)
    values["detail"] = _loads(values["detail"]) if values["detail"] else {}
    return EventRow(**values)


def _workspace_row(row: sqlite3.Row | dict[str, Any]) -> WorkspaceRow:
    values = dict(row)
    values["review"] = bool(values["review"])
    values["changes"] = _loads(values["changes"]) if values["changes"] else None
    return WorkspaceRow(**values)


# A run's row and its workspace's in one SELECT (`w_` marks the workspace's columns).
_WORKSPACE_COLUMNS = ", ".join(f"w.{name} AS w_{name}" for name in WorkspaceRow._fields)


def _run_and_workspace(row: sqlite3.Row) -> tuple[RunRow, WorkspaceRow]:
    values = dict(row)
    workspace = {name[2:]: values.pop(name) for name in list(values)
                 if name.startswith("w_")}
    return _run_row(values), _workspace_row(workspace)


def _friendly(exc: sqlite3.Error, path: str) -> StoreError:
    message = str(exc)
    if "readonly" in message or "unable to open" in message:
        return StoreError(f"permission denied: cannot use {path} ({message}); only the "
                          "daemon writes it, and reading it needs group minipipe (then log "
                          "in again)")
    if "locked" in message or "busy" in message:
        return StoreError(f"{path} is locked by another process for too long; try again")
    if "malformed" in message or "not a database" in message:
        return StoreError(f"{path} is damaged or not a minipipe database ({message})")
    return StoreError(f"{path}: {message}")


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception. A class rather than
    contextlib.contextmanager: the read commands must not import contextlib."""

    def __init__(self, conn: sqlite3.Connection, path: str) -> None:
        self.conn, self.path = conn, path

    def __enter__(self) -> sqlite3.Connection:
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise _friendly(exc, self.path) from None
        return self.conn

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 _tb: object) -> None:
        if exc is not None:
            self.conn.execute("ROLLBACK")
            return
        try:
            self.conn.execute("COMMIT")
        except sqlite3.Error as error:
            self.conn.execute("ROLLBACK")
            raise _friendly(error, self.path) from None


class Store:
    """One connection to the state DB. Not shared between threads or processes."""

    def __init__(self, conn: sqlite3.Connection, path: str, readonly: bool,
                 immutable: bool = False, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
        self.conn, self.path, self.readonly = conn, path, readonly
        self.busy_timeout_ms = busy_timeout_ms
        # Opened while no writer had the DB open: this view never changes by itself.
        self.immutable = immutable
        self.is_open = True

    # ------------------------------------------------------------ opening

    @classmethod
    def open(cls, path: str, *, readonly: bool = False, create: bool = True,
             busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> Store:
        """Open (and for writers, create and migrate) the DB at `path`.

        Only the daemon and its runners write; everyone else opens it read-only.
        `busy_timeout_ms` is how long a write waits for another writer's lock.
        """
        exists = os.path.lexists(path)
        directory = os.path.dirname(os.path.abspath(path))
        if not exists and os.path.isdir(directory) and not os.access(directory, os.X_OK):
            raise StoreError(f"permission denied: cannot reach {path}; add yourself to group "
                             "minipipe (then log in again)")
        if not exists and (readonly or not create):
            raise StoreMissing(f"{path} does not exist yet; start the daemon "
                               "(`minipipe daemon` or `systemctl start minipipe`)")
        if exists and not os.access(path, os.R_OK):
            raise StoreError(f"permission denied: cannot read {path}; add yourself to group "
                             "minipipe (then log in again)")
        if not readonly:
            _prepare_writable(path, directory, exists)
        try:
            conn, immutable = _connect(path, readonly, busy_timeout_ms)
            store = cls(conn, path, readonly, immutable, busy_timeout_ms)
            if not readonly:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
                store._migrate()
            else:
                store._check_version()
        except sqlite3.Error as exc:
            raise _friendly(exc, path) from None
        return store

    def close(self) -> None:
        self.conn.close()
        self.is_open = False

    def reopen(self) -> None:
        """A fresh connection in this same Store, after close() (the daemon closes its
        own around fork(): SQLite's locks do not survive one). Holders of this object
        keep using it. StoreError if the DB cannot be opened now: the Store stays
        closed, and `ensure_open` tries again."""
        fresh = Store.open(self.path, readonly=self.readonly, create=False,
                           busy_timeout_ms=self.busy_timeout_ms)
        self.conn, self.immutable, self.is_open = fresh.conn, fresh.immutable, True

    def ensure_open(self) -> None:
        """Reopen after a reopen that failed (StoreError while it still fails)."""
        if not self.is_open:
            self.reopen()

    def reopen_if_stale(self) -> None:
        """For readers that poll: an immutable view is replaced by a live one as soon
        as a writer has the DB open again (its -wal exists)."""
        if self.immutable and os.path.exists(self.path + "-wal"):
            conn, self.immutable = _connect(self.path, True, BUSY_TIMEOUT_MS)
            self.conn.close()
            self.conn = conn

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def schema_version(self) -> int:
        return self.conn.execute("PRAGMA user_version").fetchone()[0]

    def _check_version(self) -> None:
        version = self.schema_version()
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(f"{self.path} has schema version {version}, newer than this "
                               f"minipipe understands ({SCHEMA_VERSION}); upgrade minipipe")
        if version == 0:
            raise StoreMissing(f"{self.path} is not initialised yet; start the daemon")
        if version < SCHEMA_VERSION:
            raise StoreError(f"{self.path} has schema version {version}, older than this "
                             f"minipipe's ({SCHEMA_VERSION}); the daemon upgrades it when it "
                             "starts: restart it (`sudo systemctl restart minipipe`)")

    def _migrate(self) -> None:
        if self.schema_version() == SCHEMA_VERSION:
            return
        with self._write() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise SchemaTooNew(f"{self.path} has schema version {version}, newer than "
                                   f"this minipipe understands ({SCHEMA_VERSION}); upgrade "
                                   "minipipe")
            for number in range(version, SCHEMA_VERSION):
                for statement in _statements(MIGRATIONS[number]):
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def repair_schema(self) -> list[str]:
        """Make the schema exactly minipipe's: drop every view, trigger, table and index
        it does not define, recreate its own triggers and recount run_counts.

        Until 0.2.0 every group member could write the DB: a trigger planted then would
        run inside the root daemon's own writes (e.g. rewrite who submitted a run).
        The daemon calls this once at start. Returns what it dropped, for the log.
        """
        known_tables = {"runs", "steps", "events", "settings", "run_counts", "sqlite_sequence",
                        "workspaces", "run_dependencies"}
        known_indexes = {"runs_by_queue", "events_by_run", "runs_by_finished",
                         "runs_by_submitter", "workspaces_to_remove",
                         "run_dependencies_by_after"}
        triggers = [statement for statement in _statements(_SCHEMA_V3)
                    if statement.lstrip().upper().startswith("CREATE TRIGGER")]
        dropped = []
        with self._write() as conn:
            for kind, name in conn.execute(
                    "SELECT type, name FROM sqlite_master WHERE type IN "
                    "('view', 'trigger', 'table', 'index') ORDER BY type = 'table'").fetchall():
                ours = (kind == "trigger" or (kind == "table" and name in known_tables)
                        or (kind == "index" and (name in known_indexes
                                                 or name.startswith("sqlite_autoindex_"))))
                if kind == "trigger":
                    conn.execute(f'DROP TRIGGER "{name.replace(chr(34), chr(34) * 2)}"')
                elif not ours:
                    conn.execute(f'DROP {kind.upper()} IF EXISTS '
                                 f'"{name.replace(chr(34), chr(34) * 2)}"')
                    dropped.append(f"{kind} {name}")
            for statement in triggers:
                conn.execute(statement)
            conn.execute("DELETE FROM run_counts")
            conn.execute("INSERT INTO run_counts (state, n) "
                         "SELECT state, count(*) FROM runs GROUP BY state")
        return dropped

    def _write(self) -> _Transaction:
        """`with self._write() as conn:` one write transaction (BEGIN IMMEDIATE)."""
        if self.readonly:
            raise StoreError("this store was opened read-only")
        return _Transaction(self.conn, self.path)

    # ------------------------------------------------------------ events

    @staticmethod
    def _event(conn: sqlite3.Connection, run_id: int | None, kind: str, *,
               step_id: str | None = None, **detail: Any) -> None:
        conn.execute(
            "INSERT INTO events (ts, run_id, step_id, kind, detail) VALUES (?, ?, ?, ?, ?)",
            (utc_now(), run_id, step_id, kind,
             _dumps({k: v for k, v in detail.items() if v is not None}) if detail else None),
        )

    def events(self, *, run_id: int | None = None, after_id: int = 0,
               limit: int = 1000) -> list[EventRow]:
        if run_id is None:
            rows = self.conn.execute(
                "SELECT * FROM events WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit))
        else:
            rows = self.conn.execute(
                "SELECT * FROM events WHERE run_id = ? AND id > ? ORDER BY id LIMIT ?",
                (run_id, after_id, limit))
        return [_event_row(row) for row in rows]

    def last_events(self, run_id: int, count: int) -> list[EventRow]:
        rows = self.conn.execute(
            "SELECT * FROM events WHERE run_id = ? ORDER BY id DESC LIMIT ?", (run_id, count))
        return [_event_row(row) for row in reversed(rows.fetchall())]

    def lines_lost(self, run_id: int) -> int:
        """Output lines the run's runners could store nowhere (their log_lines_lost)."""
        return sum(_loads(detail or "{}").get("lines", 0) for (detail,) in self.conn.execute(
            "SELECT detail FROM events WHERE run_id = ? AND kind = 'log_lines_lost'",
            (run_id,)))

    def output_lines(self, run_id: int) -> int | None:
        """Lines the run's runners wrote over all attempts; None if one did not say."""
        total = 0
        for event in self.conn.execute(
                "SELECT detail FROM events WHERE run_id = ? AND kind = 'run_finished'",
                (run_id,)):
            lines = _loads(event[0] or "{}").get("output_lines")
            if lines is None:
                return None
            total += lines
        return total

    def count_events(self) -> int:
        return self.conn.execute("SELECT count(*) FROM events").fetchone()[0]

    # ------------------------------------------------------------ reading runs

    def get_run(self, run_id: int) -> RunRow:
        row = self.conn.execute(
            f"SELECT {_RUN_COLUMNS} FROM runs r WHERE r.id = ?", (run_id,)).fetchone()
        if row is None:
            raise NoSuchRun(f"no run with id {run_id}; `minipipe ls --all` lists them")
        return _run_row(row)

    def run_plan(self, run_id: int) -> dict[str, Any]:
        row = self.conn.execute("SELECT plan FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise NoSuchRun(f"no run with id {run_id}")
        return _loads(row[0])

    def workspace_spec(self, run_id: int) -> dict[str, Any] | None:
        """The plan's [workspace] as stored, or None, also for a plan row that is not
        a JSON object: a reader (`show`, the monitor) must not break on a damaged row."""
        try:
            plan = self.run_plan(run_id)
        except (ValueError, RecursionError):
            return None
        spec = plan.get("workspace") if isinstance(plan, dict) else None
        return spec if isinstance(spec, dict) else None

    def list_runs(self, *, limit: int | None = 20,
                  states: tuple[RunState, ...] | None = None,
                  submitted_by: str | None = None) -> list[RunRow]:
        """Newest first; `limit=None` lists every run."""
        conditions: list[str] = []
        args: list[Any] = []
        if states:
            conditions.append(f"r.state IN ({','.join('?' * len(states))})")
            args = [s.value for s in states]
        if submitted_by is not None:
            conditions.append("r.submitted_by = ?")
            args.append(submitted_by)
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        sql = f"SELECT {_RUN_COLUMNS} FROM runs r {where} ORDER BY r.id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return [_run_row(row) for row in self.conn.execute(sql, args)]

    def runs_by_ids(self, ids: list[int]) -> list[RunRow]:
        """The given runs (those that still exist), for incremental refreshes."""
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        rows = self.conn.execute(f"SELECT {_RUN_COLUMNS} FROM runs r WHERE r.id IN ({marks})",
                                 list(ids))
        return [_run_row(row) for row in rows]

    def active_and_recent_runs(self, finished: int) -> list[RunRow]:
        """Every PENDING and RUNNING run, plus the `finished` most recent other runs."""
        rows = self.conn.execute(
            f"SELECT {_RUN_COLUMNS} FROM runs r WHERE r.state IN ('PENDING', 'RUNNING') "
            f"UNION ALL SELECT * FROM (SELECT {_RUN_COLUMNS} FROM runs r "
            "WHERE r.state NOT IN ('PENDING', 'RUNNING') ORDER BY r.id DESC LIMIT ?)",
            (finished,))
        return [_run_row(row) for row in rows]

    def last_event_id(self) -> int:
        return self.conn.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0]

    def get_steps(self, run_id: int) -> list[StepRow]:
        """A run's steps, each with its stage from the run's plan."""
        # The plan (up to 1 MiB) is parsed once, by SQLite, not once per step.
        stages = dict(self.conn.execute(
            "SELECT p.key, json_extract(p.value, '$.stage') FROM runs r, json_each(CASE WHEN "
            "json_valid(r.plan) THEN r.plan ELSE '{}' END, '$.steps') p WHERE r.id = ?",
            (run_id,)).fetchall())
        rows = self.conn.execute("SELECT * FROM steps WHERE run_id = ? ORDER BY idx", (run_id,))
        return [_step_row(row, stages.get(row["idx"])) for row in rows]

    def counts(self) -> dict[str, int]:
        counts = {state.value: 0 for state in RunState}
        for state, count in self.conn.execute("SELECT state, n FROM run_counts"):
            counts[state] = count
        return counts

    def pending_runs(self, limit: int = -1, *, hold_review: bool = False,
                     skip_pools: Collection[str] = (), skip_groups: Collection[int] = ()
                     ) -> Generator[RunRow, None, None]:
        """The runs that may start next, lazily: highest priority first, then oldest;
        not those due later, nor those waiting for other runs, nor those in
        `skip_pools` or `skip_groups` (full ones). `hold_review` leaves out runs that
        would need review (not yet approved ones). The caller stops reading when it
        has enough: thousands of runs that cannot start yet (a full pool, a matrix
        limited to one at a time) neither cost a pass nor hide the runs behind them."""
        held = (" AND NOT EXISTS (SELECT 1 FROM workspaces w WHERE w.run_id = r.id AND "
                "w.review = 1 AND w.approved_by IS NULL)") if hold_review else ""
        pools = ",".join("?" * len(skip_pools))
        groups = ",".join("?" * len(skip_groups))
        full = (f" AND (r.pool IS NULL OR r.pool NOT IN ({pools}))" if pools else "") + (
            f" AND (r.group_id IS NULL OR r.group_id NOT IN ({groups}))" if groups else "")
        cursor = self.conn.execute(
            f"SELECT {_RUN_COLUMNS} FROM runs r WHERE r.state = 'PENDING'{held}{full} "
            "AND (r.not_before IS NULL OR r.not_before <= ?) "
            "AND NOT EXISTS (SELECT 1 FROM run_dependencies d JOIN runs p ON p.id = d.after_id "
            f"WHERE d.run_id = r.id AND (p.state NOT IN ({_TERMINAL_SQL}) "
            "OR (d.any_result = 0 AND p.state != 'SUCCEEDED'))) "
            "ORDER BY r.priority DESC, r.id LIMIT ?",
            (*skip_pools, *skip_groups, utc_now(), limit))
        try:
            for row in cursor:
                yield _run_row(row)
        finally:
            cursor.close()

    def next_due(self, after: str) -> str | None:
        """When the earliest run waiting for its time may start, of those due after
        `after` (None: none). Runs due already are not waited for: if one could
        not start (its pool is full, it waits for a run), a run's end or a request
        wakes the loop for it, and a due time in the past would make it spin."""
        row = self.conn.execute("SELECT min(not_before) FROM runs WHERE state = 'PENDING' "
                                "AND not_before > ?", (after,)).fetchone()
        return row[0] if row else None

    def dependencies(self, run_id: int) -> list[tuple[int, bool, str | None]]:
        """(run id, any result?, its state now or None if it is gone) per dependency."""
        return [(after, bool(any_result), state) for after, any_result, state in
                self.conn.execute(
                    "SELECT d.after_id, d.any_result, p.state FROM run_dependencies d "
                    "LEFT JOIN runs p ON p.id = d.after_id WHERE d.run_id = ? "
                    "ORDER BY d.after_id", (run_id,))]

    def waiting_for(self, run_ids: list[int]) -> dict[int, list[int]]:
        """For each of these runs: the runs it waits for that have not ended yet."""
        if not run_ids:
            return {}
        marks = ",".join("?" * len(run_ids))
        waiting: dict[int, list[int]] = {}
        for run_id, after_id in self.conn.execute(
                f"SELECT d.run_id, d.after_id FROM run_dependencies d JOIN runs p ON "
                f"p.id = d.after_id WHERE d.run_id IN ({marks}) AND p.state NOT IN "
                f"({_TERMINAL_SQL}) ORDER BY d.run_id, d.after_id", run_ids):
            waiting.setdefault(run_id, []).append(after_id)
        return waiting

    def cancel_blocked(self) -> list[tuple[int, str]]:
        """PENDING runs that can never start: a run they need to have SUCCEEDED ended
        otherwise (or is gone, which cleanup does not do to a run still waited for),
        or one they wait for was cancelled for that reason in turn. They end
        CANCELLED with the reason (event dependency_failed); returns
        (run id, reason) for each, chains included."""
        ended: list[tuple[int, str]] = []
        with self._write() as conn:
            while True:
                blocked = conn.execute(
                    "SELECT d.run_id, d.after_id, p.state FROM run_dependencies d "
                    "JOIN runs r ON r.id = d.run_id AND r.state = 'PENDING' "
                    "LEFT JOIN runs p ON p.id = d.after_id "
                    f"WHERE {_DEPENDENCY_FAILED_SQL} ORDER BY d.run_id").fetchall()
                if not blocked:
                    return ended
                done = set()
                for run_id, after_id, state in blocked:
                    if run_id in done:
                        continue
                    done.add(run_id)
                    reason = (f"dependency {after_id} ended {state}" if state
                              else f"dependency {after_id} no longer exists")
                    self._finish_run(conn, run_id, RunState.CANCELLED, exit_code=None,
                                     reason=reason)
                    self._event(conn, run_id, "dependency_failed", run=after_id, state=state)
                    ended.append((run_id, reason))

    def running_runs(self) -> list[RunRow]:
        rows = self.conn.execute(
            f"SELECT {_RUN_COLUMNS} FROM runs r WHERE r.state = 'RUNNING' ORDER BY r.id")
        return [_run_row(row) for row in rows]

    def count_running(self) -> int:
        return self.conn.execute("SELECT count(*) FROM runs WHERE state = 'RUNNING'").fetchone()[0]

    # ------------------------------------------------------------ submitting

    def submit(self, plan: dict[str, Any], *, source: str | None, submitted_by: str | None,
               priority: int | None = None, submitted_uid: int | None = None,
               umask: int | None = None, not_before: str | None = None) -> int:
        """A new PENDING run. Its plan's `after` / `after_any` runs must exist (they
        are earlier runs, so waits never form a cycle); ConflictError names one that
        does not, or one that already ended so that this run could never start."""
        return self.submit_group([plan], source=source, submitted_by=submitted_by,
                                 priority=priority, submitted_uid=submitted_uid, umask=umask,
                                 not_before=not_before)[0]

    def submit_group(self, plans: list[dict[str, Any]], *, source: str | None,
                     submitted_by: str | None, priority: int | None = None,
                     submitted_uid: int | None = None, umask: int | None = None,
                     not_before: str | None = None, max_parallel: int | None = None
                     ) -> list[int]:
        """New PENDING runs in one transaction (a matrix: all or none). More than one
        form a group, named by its first run's id; at most `max_parallel` of them run
        at once."""
        with self._write() as conn:
            ids: list[int] = []
            for plan in plans:
                ids.append(self._insert_run(conn, plan, source, submitted_by, priority,
                                            submitted_uid, umask, not_before))
            if len(ids) > 1:
                conn.execute(f"UPDATE runs SET group_id = ?, group_max = ? WHERE id IN "
                             f"({','.join('?' * len(ids))})", (ids[0], max_parallel, *ids))
                self._event(conn, ids[0], "group_submitted", runs=ids,
                            max_parallel=max_parallel)
        return ids

    def _insert_run(self, conn: sqlite3.Connection, plan: dict[str, Any], source: str | None,
                    submitted_by: str | None, priority: int | None,
                    submitted_uid: int | None, umask: int | None,
                    not_before: str | None) -> int:
        priority = plan["priority"] if priority is None else priority
        after = [(i, 0) for i in plan.get("after", ())]
        after += [(i, 1) for i in plan.get("after_any", ()) if (i, 0) not in after]
        for after_id, any_result in after:
            row = conn.execute("SELECT state FROM runs WHERE id = ?", (after_id,)).fetchone()
            if row is None:
                raise NoSuchRun(f"no run {after_id} to wait for")
            if not any_result and row[0] != "SUCCEEDED" and RunState(row[0]).is_terminal:
                raise ConflictError(f"run {after_id} ended {row[0]}, so this run would "
                                    f"never start: retry {after_id} first, or wait for "
                                    "it with --after-any")
        cursor = conn.execute(
            "INSERT INTO runs (name, plan, plan_source, state, priority, steps_total, "
            "created_at, submitted_by, submitted_uid, umask, not_before, pool) "
            "VALUES (?, ?, ?, 'PENDING', ?, ?, ?, ?, ?, ?, ?, ?)",
            (plan["name"], _dumps(plan), source, priority, len(plan["steps"]),
             utc_now(), submitted_by, submitted_uid, umask, not_before, plan.get("pool")))
        run_id = cursor.lastrowid
        assert run_id is not None
        conn.executemany("INSERT INTO run_dependencies (run_id, after_id, any_result) "
                         "VALUES (?, ?, ?)", [(run_id, a, k) for a, k in after])
        conn.executemany(
            "INSERT INTO steps (run_id, idx, step_id, phase, command, state) "
            "VALUES (?, ?, ?, ?, ?, 'PENDING')",
            [(run_id, idx, step["id"], step["phase"], step["command"])
             for idx, step in enumerate(plan["steps"])])
        if plan.get("workspace"):
            conn.execute("INSERT INTO workspaces (run_id, review) VALUES (?, ?)",
                         (run_id, bool(plan.get("review"))))
        self._event(conn, run_id, "run_submitted", name=plan["name"], priority=priority,
                    source=source, by=submitted_by)
        return run_id

    def group_use(self) -> dict[int, tuple[int, int | None]]:
        """Per group with runs running: how many, and how many may (--max-parallel)."""
        return {group: (running, most) for group, running, most in self.conn.execute(
            "SELECT group_id, count(*), min(group_max) FROM runs WHERE state = 'RUNNING' "
            "AND group_id IS NOT NULL GROUP BY group_id")}

    def group_runs(self, group_id: int) -> list[int]:
        return [row[0] for row in self.conn.execute(
            "SELECT id FROM runs WHERE group_id = ? ORDER BY id", (group_id,))]

    # ------------------------------------------------------------ transitions

    def _run_state(self, conn: sqlite3.Connection, run_id: int) -> RunState:
        row = conn.execute("SELECT state FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise NoSuchRun(f"no run with id {run_id}")
        return RunState(row[0])

    def _step_state(self, conn: sqlite3.Connection, run_id: int, idx: int) -> tuple[StepState,
                                                                                    str]:
        row = conn.execute("SELECT state, step_id FROM steps WHERE run_id = ? AND idx = ?",
                           (run_id, idx)).fetchone()
        if row is None:
            raise NoSuchRun(f"run {run_id} has no step #{idx}")
        return StepState(row[0]), row[1]

    def start_run(self, run_id: int, *, unit: str | None = None,
                  run_user: str | None = None, pool_size: int | None = None) -> bool:
        """PENDING -> RUNNING, by the daemon just before it launches the runner; a run
        in a pool (of `pool_size` slots) takes the lowest free slot.

        Returns False when the run is no longer PENDING (cancelled meanwhile), or its
        pool has no free slot.
        """
        with self._write() as conn:
            state = self._run_state(conn, run_id)
            if state is not RunState.PENDING:
                return False
            check_run_transition(state, RunState.RUNNING)
            slot = None
            if pool_size is not None:
                pool = conn.execute("SELECT pool FROM runs WHERE id = ?", (run_id,)).fetchone()[0]
                taken = {row[0] for row in conn.execute(
                    "SELECT slot FROM runs WHERE state = 'RUNNING' AND pool = ?", (pool,))}
                free = [n for n in range(pool_size) if n not in taken]
                if not free:
                    return False
                slot = free[0]
            conn.execute(
                "UPDATE runs SET state = 'RUNNING', started_at = ?, unit = ?, run_user = ?, "
                "runner_pid = NULL, runner_start = NULL, slot = ? WHERE id = ?",
                (utc_now(), unit, run_user, slot, run_id))
            self._event(conn, run_id, "run_started", unit=unit, user=run_user,
                        **({"slot": slot} if slot is not None else {}))
        return True

    def pool_use(self) -> dict[str, int]:
        """Running runs per pool."""
        return dict(self.conn.execute(
            "SELECT pool, count(*) FROM runs WHERE state = 'RUNNING' AND pool IS NOT NULL "
            "GROUP BY pool").fetchall())

    def requeue_run(self, run_id: int, reason: str) -> None:
        """RUNNING -> PENDING before any step began: the runner could not start the run."""
        with self._write() as conn:
            state = self._run_state(conn, run_id)
            begun = conn.execute("SELECT count(*) FROM steps WHERE run_id = ? AND "
                                 "state != 'PENDING'", (run_id,)).fetchone()[0]
            if state is not RunState.RUNNING or begun:
                raise ConflictError(f"run {run_id} is {state.value} with {begun} step(s) "
                                    "begun: it cannot go back to the queue")
            check_run_transition(state, RunState.PENDING)
            conn.execute(
                "UPDATE runs SET state = 'PENDING', phase = NULL, started_at = NULL, "
                "unit = NULL, runner_pid = NULL, runner_start = NULL WHERE id = ?", (run_id,))
            self._event(conn, run_id, "run_requeued", reason=reason)

    def set_runner(self, run_id: int, pid: int, start_time: int | None) -> None:
        """Record which process executes the run (daemon and runner both call it)."""
        with self._write() as conn:
            conn.execute("UPDATE runs SET runner_pid = ?, runner_start = ? WHERE id = ?",
                         (pid, start_time, run_id))

    def finish_run(self, run_id: int, state: RunState, *, exit_code: int | None = None,
                   reason: str | None = None, output_lines: int | None = None) -> None:
        """RUNNING (or PENDING, for a cancel) -> a terminal state; leftover steps are SKIPPED.

        `output_lines` (from the runner) is how many lines this attempt wrote, which
        lets readers tell whether the journal kept them all.
        """
        with self._write() as conn:
            self._finish_run(conn, run_id, state, exit_code=exit_code, reason=reason,
                             output_lines=output_lines)

    def _finish_run(self, conn: sqlite3.Connection, run_id: int, state: RunState, *,
                    exit_code: int | None, reason: str | None,
                    output_lines: int | None = None) -> None:
        check_run_transition(self._run_state(conn, run_id), state)
        now = utc_now()
        # A step still RUNNING here lost its runner (or was stopped with the run).
        for (idx,) in conn.execute(
                "SELECT idx FROM steps WHERE run_id = ? AND state = 'RUNNING'",
                (run_id,)).fetchall():
            if state not in _STEP_STATE_FOR_ABANDONED_RUN:
                raise IllegalTransition(f"run {run_id} cannot end {state.value} while step "
                                        f"#{idx} is still RUNNING")
            self._step_transition(conn, run_id, idx, _STEP_STATE_FOR_ABANDONED_RUN[state],
                                  now=now, reason=reason)
        for (idx,) in conn.execute(
                "SELECT idx FROM steps WHERE run_id = ? AND state = 'PENDING' ORDER BY idx",
                (run_id,)).fetchall():
            self._step_transition(conn, run_id, idx, StepState.SKIPPED, now=now)
        conn.execute(
            "UPDATE runs SET state = ?, exit_code = ?, reason = ?, finished_at = ?, "
            "cancel_requested = 0 WHERE id = ?", (state.value, exit_code, reason, now, run_id))
        self._event(conn, run_id, "run_finished", state=state.value, exit_code=exit_code,
                    reason=reason, output_lines=output_lines)

    def _step_transition(self, conn: sqlite3.Connection, run_id: int, idx: int,
                         new: StepState, *, now: str, exit_code: int | None = None,
                         reason: str | None = None) -> str:
        current, step_id = self._step_state(conn, run_id, idx)
        check_step_transition(current, new)
        if new is StepState.RUNNING:
            conn.execute(
                "UPDATE steps SET state = 'RUNNING', attempt = attempt + 1, started_at = ?, "
                "finished_at = NULL, exit_code = NULL, reason = NULL, pid = NULL, "
                "pid_start = NULL WHERE run_id = ? AND idx = ?", (now, run_id, idx))
            attempt = conn.execute("SELECT attempt FROM steps WHERE run_id = ? AND idx = ?",
                                   (run_id, idx)).fetchone()[0]
            self._event(conn, run_id, "step_started", step_id=step_id, attempt=attempt)
        elif new is StepState.PENDING:
            conn.execute(
                "UPDATE steps SET state = 'PENDING', attempt = 0, started_at = NULL, "
                "finished_at = NULL, exit_code = NULL, reason = NULL, pid = NULL, "
                "pid_start = NULL WHERE run_id = ? AND idx = ?", (run_id, idx))
        else:
            conn.execute(
                "UPDATE steps SET state = ?, finished_at = ?, exit_code = ?, reason = ? "
                "WHERE run_id = ? AND idx = ?",
                (new.value, now, exit_code, reason, run_id, idx))
            kind = "step_skipped" if new is StepState.SKIPPED else "step_completed"
            self._event(conn, run_id, kind, step_id=step_id, state=new.value,
                        exit_code=exit_code, reason=reason)
        return step_id

    def start_step(self, run_id: int, idx: int, phase: str) -> int:
        """A step (or its retry) begins; returns its attempt number."""
        with self._write() as conn:
            self._step_transition(conn, run_id, idx, StepState.RUNNING, now=utc_now())
            conn.execute("UPDATE runs SET phase = ? WHERE id = ?", (phase, run_id))
            return conn.execute("SELECT attempt FROM steps WHERE run_id = ? AND idx = ?",
                                (run_id, idx)).fetchone()[0]

    def set_step_process(self, run_id: int, idx: int, pid: int, start_time: int | None) -> None:
        with self._write() as conn:
            conn.execute("UPDATE steps SET pid = ?, pid_start = ? WHERE run_id = ? AND idx = ?",
                         (pid, start_time, run_id, idx))

    def finish_step(self, run_id: int, idx: int, state: StepState, *,
                    exit_code: int | None, reason: str | None = None,
                    usage: dict[str, Any] | None = None) -> None:
        with self._write() as conn:
            self._step_transition(conn, run_id, idx, state, now=utc_now(),
                                  exit_code=exit_code, reason=reason)
            if usage is not None:
                conn.execute("UPDATE steps SET usage = ? WHERE run_id = ? AND idx = ?",
                             (_dumps(usage), run_id, idx))

    def record_usage(self, run_id: int, usage: dict[str, Any]) -> None:
        """What the run consumed (this attempt), as it ends or awaits review."""
        with self._write() as conn:
            conn.execute("UPDATE runs SET usage = ? WHERE id = ?", (_dumps(usage), run_id))

    def note(self, run_id: int | None, kind: str, **detail: Any) -> None:
        """Append an event that is not a state change (e.g. lost log lines, adoption)."""
        with self._write() as conn:
            self._event(conn, run_id, kind, **detail)

    # ------------------------------------------------------------ operator requests

    def request_cancel(self, run_id: int, *, by: str | None = None) -> RunState:
        """Cancel a run: PENDING ends at once, RUNNING is flagged for the daemon to stop.

        Returns the state the run was in. Finished runs raise ConflictError.
        """
        with self._write() as conn:
            state = self._run_state(conn, run_id)
            if state is RunState.PENDING:
                self._finish_run(conn, run_id, RunState.CANCELLED, exit_code=None,
                                 reason=f"cancelled before it started{f' by {by}' if by else ''}")
            elif state is RunState.AWAITING_REVIEW:
                self._finish_run(conn, run_id, RunState.CANCELLED, exit_code=None,
                                 reason="cancelled while awaiting review"
                                 + (f" by {by}" if by else ""))
            elif state is RunState.RUNNING:
                # A count: the runner stops its [[finally]] steps at a second request.
                conn.execute("UPDATE runs SET cancel_requested = cancel_requested + 1 "
                             "WHERE id = ?", (run_id,))
                self._event(conn, run_id, "run_cancel_requested", by=by)
            else:
                raise ConflictError(f"run {run_id} already ended ({state.value}); "
                                    "nothing to cancel")
            return state

    def cancel_requests(self) -> dict[int, int]:
        """Running runs asked to cancel: run id -> how many times."""
        return dict(self.conn.execute(
            "SELECT id, cancel_requested FROM runs WHERE state = 'RUNNING' "
            "AND cancel_requested > 0").fetchall())

    def cancel_count(self, run_id: int) -> int:
        row = self.conn.execute("SELECT cancel_requested FROM runs WHERE id = ?",
                                (run_id,)).fetchone()
        return row[0] if row else 0

    def retry(self, run_id: int, *, by: str | None = None) -> int:
        """A run that did not succeed goes back to PENDING as a new attempt.

        A run whose change already landed (its on_approve steps failed, or its runner
        died in them) keeps its workspace and approval: the new attempt runs the
        on_approve steps again and lands nothing (an approval is used once).
        """
        with self._write() as conn:
            state = self._run_state(conn, run_id)
            if state not in RUN_RETRYABLE:
                detail = ("it succeeded; submit the plan again to rerun it"
                          if state is RunState.SUCCEEDED else "it has not ended yet")
                raise ConflictError(f"run {run_id} is {state.value}: {detail}")
            check_run_transition(state, RunState.PENDING)
            # Retried, it would only end CANCELLED again at once: say why instead.
            blocked = conn.execute(
                "SELECT d.after_id, p.state FROM run_dependencies d LEFT JOIN runs p ON "
                f"p.id = d.after_id WHERE d.run_id = ? AND {_DEPENDENCY_FAILED_SQL} "
                "ORDER BY d.after_id LIMIT 1", (run_id,)).fetchone()
            if blocked:
                after_id, after_state = blocked
                raise ConflictError(
                    f"run {run_id} waits for run {after_id} to succeed, and run {after_id} "
                    + (f"ended {after_state}: retry {after_id} first" if after_state
                       else "is gone: submit the plan again without it"))
            now = utc_now()
            landed = conn.execute("SELECT landed_at FROM workspaces WHERE run_id = ? AND "
                                  "landed_at IS NOT NULL", (run_id,)).fetchone()
            again = None
            if landed:
                plan = _loads(conn.execute("SELECT plan FROM runs WHERE id = ?",
                                           (run_id,)).fetchone()[0])
                steps = plan.get("steps") if isinstance(plan, dict) else None
                again = {idx for idx, step in enumerate(steps or [])
                         if isinstance(step, dict) and step.get("stage") == "on_approve"}
            for (idx,) in conn.execute("SELECT idx FROM steps WHERE run_id = ?",
                                       (run_id,)).fetchall():
                if again is None or idx in again:
                    self._step_transition(conn, run_id, idx, StepState.PENDING, now=now)
            conn.execute(
                "UPDATE runs SET state = 'PENDING', attempt = attempt + 1, phase = NULL, "
                "exit_code = NULL, reason = NULL, started_at = NULL, finished_at = NULL, "
                "unit = NULL, runner_pid = NULL, runner_start = NULL, cancel_requested = 0 "
                "WHERE id = ?", (run_id,))
            if not landed:
                conn.execute(
                    "UPDATE workspaces SET head_commit = NULL, changes = NULL, "
                    "approved_by = NULL, approved_uid = NULL, awaiting_since = NULL, "
                    "landed_commit = NULL WHERE run_id = ?", (run_id,))
            attempt = conn.execute("SELECT attempt FROM runs WHERE id = ?",
                                   (run_id,)).fetchone()[0]
            self._event(conn, run_id, "run_retried", attempt=attempt, previous=state.value,
                        by=by, **({"landed_at": landed[0]} if landed else {}))
            return attempt

    # ------------------------------------------------------------ workspaces, review

    def workspace(self, run_id: int) -> WorkspaceRow | None:
        row = self.conn.execute("SELECT * FROM workspaces WHERE run_id = ?",
                                (run_id,)).fetchone()
        return _workspace_row(row) if row else None

    def workspace_started(self, run_id: int, *, path: str, branch: str,
                          base_commit: str) -> None:
        """The runner made the run's worktree (each attempt afresh) from `base_commit`."""
        with self._write() as conn:
            conn.execute(
                "UPDATE workspaces SET path = ?, branch = ?, base_commit = ?, "
                "head_commit = NULL, changes = NULL, disk_bytes = NULL, removed_at = NULL "
                "WHERE run_id = ?", (path, branch, base_commit, run_id))
            self._event(conn, run_id, "workspace_created", base=base_commit, branch=branch,
                        path=path)

    def workspace_changed(self, run_id: int, *, head_commit: str, changes: dict[str, Any],
                          disk_bytes: int | None) -> None:
        """What the steps changed: the commit a reviewer sees and approving lands."""
        with self._write() as conn:
            conn.execute(
                "UPDATE workspaces SET head_commit = ?, changes = ?, disk_bytes = ? "
                "WHERE run_id = ?", (head_commit, _dumps(changes), disk_bytes, run_id))
            self._event(conn, run_id, "workspace_changes", head=head_commit,
                        files=changes["files_changed"], insertions=changes["insertions"],
                        deletions=changes["deletions"], commits=changes["commit_count"])

    def await_review(self, run_id: int) -> None:
        """RUNNING -> AWAITING_REVIEW: the steps succeeded with changes; the slot is free."""
        with self._write() as conn:
            check_run_transition(self._run_state(conn, run_id), RunState.AWAITING_REVIEW)
            now = utc_now()
            conn.execute("UPDATE runs SET state = 'AWAITING_REVIEW', phase = 'review', "
                         "exit_code = 0, reason = NULL, runner_pid = NULL, runner_start = NULL, "
                         "cancel_requested = 0 WHERE id = ?", (run_id,))
            conn.execute("UPDATE workspaces SET awaiting_since = ?, approved_by = NULL, "
                         "approved_uid = NULL WHERE run_id = ?", (now, run_id))
            self._event(conn, run_id, "run_awaiting_review")

    def approve(self, run_id: int, *, by: str, uid: int | None = None,
                message: str | None = None, head: str | None = None,
                unread_ok: bool = False) -> str:
        """AWAITING_REVIEW -> PENDING: queued for its runner to land the change.

        `head`, the commit the reviewer looked at, whole, must still be the run's: a
        run cancelled and retried meanwhile has another change (and a prefix can be
        matched by a commit ground for it: 7 hex digits take a minute). Returns the
        commit approved. A change recorded cut short (a diff over 8 MiB, more commits
        or longer messages than recorded), which nobody could read whole, is approved
        only with `unread_ok`.
        """
        with self._write() as conn:
            state = self._run_state(conn, run_id)
            if state is not RunState.AWAITING_REVIEW:
                raise ConflictError(f"run {run_id} is {state.value}, not AWAITING_REVIEW: "
                                    "there is nothing to approve")
            row = conn.execute("SELECT head_commit, changes FROM workspaces WHERE run_id = ?",
                               (run_id,)).fetchone()
            current = (row[0] if row else None) or ""
            changes = _loads(row[1]) if row and row[1] else {}
            cut = [what for what, key in (("its diff (at 8 MiB)", "diff_truncated"),
                                          ("its commits", "commits_truncated"))
                   if isinstance(changes, dict) and changes.get(key)]
            if cut and not unread_ok:
                raise ConflictError(f"run {run_id}'s change was recorded cut short "
                                    f"({' and '.join(cut)}): nobody could read all of what "
                                    "would land; reject it, or approve it with --unread-ok "
                                    "if you accept that")
            if head is not None and head.lower() != current:
                if current.startswith(head.lower()):
                    raise ConflictError(f"name run {run_id}'s change by its whole commit id "
                                        f"({len(current)} hex digits, as `minipipe show "
                                        f"{run_id}` prints it), not a prefix")
                raise ConflictError(f"run {run_id}'s change is now {current}, not the "
                                    f"{head[:40]} you name; look again (`minipipe diff "
                                    f"{run_id}`) and approve that")
            check_run_transition(state, RunState.PENDING)
            conn.execute("UPDATE runs SET state = 'PENDING', reason = NULL, unit = NULL, "
                         "runner_pid = NULL, runner_start = NULL WHERE id = ?", (run_id,))
            conn.execute("UPDATE workspaces SET approved_by = ?, approved_uid = ? "
                         "WHERE run_id = ?", (by, uid, run_id))
            self._event(conn, run_id, "run_approved", by=by, message=message, head=current)
            return current

    def reject(self, run_id: int, *, by: str, message: str) -> None:
        """AWAITING_REVIEW -> REJECTED (terminal; a retry starts the run afresh)."""
        with self._write() as conn:
            state = self._run_state(conn, run_id)
            if state is not RunState.AWAITING_REVIEW:
                raise ConflictError(f"run {run_id} is {state.value}, not AWAITING_REVIEW: "
                                    "there is nothing to reject")
            self._event(conn, run_id, "run_rejected", by=by, message=message)
            self._finish_run(conn, run_id, RunState.REJECTED, exit_code=None,
                             reason=f"rejected by {by}: {message}")

    def land_refused(self, run_id: int, reason: str, files: list[str] | None = None) -> None:
        """RUNNING -> AWAITING_REVIEW: approving could not land the change (a conflict,
        the target moved); nothing was changed and a reviewer decides again."""
        with self._write() as conn:
            check_run_transition(self._run_state(conn, run_id), RunState.AWAITING_REVIEW)
            conn.execute("UPDATE runs SET state = 'AWAITING_REVIEW', phase = 'review', "
                         "reason = ?, runner_pid = NULL, runner_start = NULL, "
                         "cancel_requested = 0 WHERE id = ?", (reason, run_id))
            conn.execute("UPDATE workspaces SET approved_by = NULL, approved_uid = NULL "
                         "WHERE run_id = ?", (run_id,))
            self._event(conn, run_id, "land_refused", reason=reason, files=files)

    def landed(self, run_id: int, *, commit: str | None, target: str, mode: str,
               as_user: str | None = None) -> None:
        with self._write() as conn:
            conn.execute("UPDATE workspaces SET landed_commit = ?, landed_at = ? "
                         "WHERE run_id = ?", (commit, utc_now(), run_id))
            self._event(conn, run_id, "run_landed", commit=commit, target=target, mode=mode,
                        as_user=as_user)

    def awaiting_review(self) -> list[tuple[RunRow, WorkspaceRow]]:
        """Runs awaiting review, oldest first, with their workspaces."""
        return [_run_and_workspace(row) for row in self.conn.execute(
            f"SELECT {_RUN_COLUMNS}, {_WORKSPACE_COLUMNS} FROM runs r "
            "JOIN workspaces w ON w.run_id = r.id WHERE r.state = 'AWAITING_REVIEW' "
            "ORDER BY r.id")]

    def count_awaiting_review(self) -> int:
        row = self.conn.execute(
            "SELECT n FROM run_counts WHERE state = 'AWAITING_REVIEW'").fetchone()
        return row[0] if row else 0

    def workspaces_due(self, *, ended_before: str, landed_or_rejected_before: str
                       ) -> list[tuple[RunRow, WorkspaceRow]]:
        """Worktrees to remove: of runs landed or rejected before the second time, and
        of any other ended run before the first (its retention)."""
        rows = self.conn.execute(
            f"SELECT {_RUN_COLUMNS}, {_WORKSPACE_COLUMNS} FROM runs r "
            "JOIN workspaces w ON w.run_id = r.id WHERE w.path IS NOT NULL "
            "AND w.removed_at IS NULL AND r.finished_at IS NOT NULL "
            "AND r.state NOT IN ('PENDING', 'RUNNING', 'AWAITING_REVIEW') AND ("
            "r.finished_at < ? OR ((r.state = 'REJECTED' OR (r.state = 'SUCCEEDED' AND "
            "w.approved_by IS NOT NULL)) AND r.finished_at < ?)) ORDER BY r.id",
            (ended_before, landed_or_rejected_before))
        return [_run_and_workspace(row) for row in rows]

    def workspace_removed(self, run_id: int) -> None:
        with self._write() as conn:
            conn.execute("UPDATE workspaces SET removed_at = ? WHERE run_id = ?",
                         (utc_now(), run_id))
            self._event(conn, run_id, "workspace_removed")

    def worktree_disk_bytes(self) -> tuple[int, int]:
        """(worktrees on disk, their bytes as last measured)."""
        count, total = self.conn.execute(
            "SELECT count(*), coalesce(sum(disk_bytes), 0) FROM workspaces "
            "WHERE path IS NOT NULL AND removed_at IS NULL").fetchone()
        return count, total

    # ------------------------------------------------------------ queue settings

    def setting(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_setting(self, key: str, value: str) -> None:
        with self._write() as conn:
            conn.execute("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)",
                         (key, value))

    def forget_setting(self, key: str) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM settings WHERE key = ?", (key,))

    def runs_ended_after(self, event_id: int, limit: int
                         ) -> list[tuple[int, RunRow, dict[str, Any]]]:
        """Runs that ended after event `event_id`: (its run_finished event's id, the
        run as it is now, how it ended then: state, exit_code, reason)."""
        rows = self.conn.execute(
            f"SELECT e.id AS e_id, e.detail AS e_detail, {_RUN_COLUMNS} FROM events e "
            "JOIN runs r ON r.id = e.run_id WHERE e.kind = 'run_finished' AND e.id > ? "
            "ORDER BY e.id LIMIT ?", (event_id, limit)).fetchall()
        ended = []
        for row in rows:
            values = dict(row)
            event, detail = values.pop("e_id"), values.pop("e_detail")
            ended.append((event, _run_row(values), _loads(detail) if detail else {}))
        return ended

    def is_paused(self) -> bool:
        row = self.conn.execute("SELECT value FROM settings WHERE key = 'paused'").fetchone()
        return row is not None and row[0] == "1"

    def set_paused(self, paused: bool, *, by: str | None = None) -> bool:
        """Returns whether anything changed."""
        with self._write() as conn:
            row = conn.execute("SELECT value FROM settings WHERE key = 'paused'").fetchone()
            if (row is not None and row[0] == "1") == paused:
                return False
            conn.execute("INSERT OR REPLACE INTO settings (key, value) VALUES ('paused', ?)",
                         ("1" if paused else "0",))
            self._event(conn, None, "queue_paused" if paused else "queue_resumed", by=by)
            return True

    # ------------------------------------------------------------ housekeeping

    def delete_finished_before(self, cutoff: str) -> list[int]:
        """Delete finished runs (with their steps and events) that ended before `cutoff`."""
        with self._write() as conn:
            # A run whose worktree is still on disk stays until the daemon removed it;
            # one a pending run waits for stays until that run started or ended.
            ids = [row[0] for row in conn.execute(
                "SELECT id FROM runs WHERE finished_at IS NOT NULL AND finished_at < ? "
                "AND state NOT IN ('PENDING', 'RUNNING', 'AWAITING_REVIEW') AND NOT EXISTS "
                "(SELECT 1 FROM workspaces w WHERE w.run_id = runs.id AND w.path IS NOT NULL "
                "AND w.removed_at IS NULL) AND NOT EXISTS (SELECT 1 FROM run_dependencies d "
                "JOIN runs w ON w.id = d.run_id AND w.state = 'PENDING' "
                "WHERE d.after_id = runs.id)", (cutoff,))]
            conn.executemany("DELETE FROM runs WHERE id = ?", [(i,) for i in ids])
            if ids:
                # The runs' own events go with them; this one tells followers (the
                # monitor) which runs to forget.
                self._event(conn, None, "runs_deleted", ids=ids, before=cutoff)
        return ids

    def write_lock_holders(self) -> list[int]:
        """Other processes holding a lock that keeps writers out (SQLite's WAL write,
        checkpoint and recovery bytes in -shm), as the kernel reports them (F_GETLK).

        Any reader with the -shm open may take them and stall every write; the daemon
        names them in its log when writes keep failing on a lock. Asked from a forked
        child: closing a descriptor of -shm here would drop this process's own SQLite
        locks on it (POSIX), and /proc/locks names another inode on overlayfs.
        """
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(read_end)
                os.write(write_end, " ".join(map(str, _lock_holders(
                    self.path + "-shm", WAL_WRITE_LOCK_BYTE, 3))).encode())
            finally:
                os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            answer = pipe.read().decode()
        os.waitpid(pid, 0)
        return sorted({int(p) for p in answer.split() if p.isdigit()} - {os.getpid()})

    def integrity_check(self) -> str:
        return self.conn.execute("PRAGMA integrity_check").fetchone()[0]
