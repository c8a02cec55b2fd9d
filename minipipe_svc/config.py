"""The JSON config: where it is, what each key means, and its validation.

A config with only `db_path` and `isolation: "none"` is enough for a private
instance: every other path is derived from the DB's directory.
"""

from __future__ import annotations

import os

from . import jsonline
from .limits import LIMIT_KEYS, Limits, limit_parsers, valid_pool_name
from .record import Record

DEFAULT_CONFIG_PATH = "/etc/minipipe/config.json"
DEFAULT_DB_PATH = "/var/lib/minipipe/state.db"
CONFIG_ENV = "MINIPIPE_CONFIG"
ISOLATIONS = ("auto", "none", "scope")
DEFAULT_RUN_USER = "minipipe"
DEFAULT_ADMIN_GROUP = "minipipe-admin"

# key -> (default, one line of documentation); README and `minipipe config` show these.
KEYS: dict[str, tuple[object, str]] = {
    "db_path": (DEFAULT_DB_PATH, "SQLite state database (relative paths: to the config file)"),
    "isolation": ("auto", '"scope": one transient systemd scope per run; "none": plain process '
                          'groups; "auto": scope when started by systemd, else none'),
    "run_user": (DEFAULT_RUN_USER, "user that root's runs execute as, and every run's with "
                                   "run_as set to it (never root)"),
    "run_as": ("submitter", '"submitter": steps run as the user who submitted the run, with '
                            'their groups (root\'s runs as run_user); or a fixed user name'),
    "admin_group": (DEFAULT_ADMIN_GROUP, "members may cancel and retry anyone's run and pause "
                                         "or resume the queue"),
    "default_limits": ({}, "limits for runs whose plan sets none: memory_max, cpu_quota, "
                           "runtime_max, tasks_max"),
    "max_concurrent_runs": (4, "runs executing at once (1-1024)"),
    "on_finish": (None, "a command (argv list) the daemon runs each time a run ends, with "
                        "the run's facts in MINIPIPE_RUN_* variables (null: none)"),
    "on_finish_user": ("nobody", "the user on_finish runs as (never root)"),
    "on_finish_timeout_seconds": (60.0, "on_finish is killed after this long"),
    "pools": ({}, "named slot pools, e.g. {\"gpu\": 2}: a run in a pool (plan `pool`, "
                  "`submit --pool`) starts only while one of its slots is free"),
    "poll_interval_seconds": (30.0, "fallback wake-up of the scheduler; queue changes and "
                                    "runner exits wake it at once"),
    "auto_cleanup_completed_runs": (False, "delete finished runs older than the retention"),
    "completed_run_retention_days": (7.0, "age of a finished run before auto-cleanup"),
    "log_dir": (None, "per-run output files (null: <db dir>/logs)"),
    "socket_path": (None, "the daemon's API socket, where clients submit, cancel, retry, "
                          "pause and resume (null: <db dir>/minipipe.sock); its directory "
                          "also holds the daemon's lock file"),
    "minipipe_command": (None, "argv that executes one run, e.g. to wrap the runner in a "
                               "profiler (null: the daemon forks runners, much faster)"),
    "kill_grace_seconds": (10.0, "SIGTERM to SIGKILL grace when a step times out or is cancelled"),
    "finally_grace_seconds": (300.0, "how long a run's [[finally]] steps may take in all once "
                                     "a cancel or runtime_max stopped its other steps"),
    "worktree_dir": (None, "where runs with a [workspace] get their git worktrees, one "
                           "directory per user (null: <db dir>/worktrees)"),
    "review": (False, "whether runs with a [workspace] wait for review when their plan "
                      "does not say (plan key review)"),
    "reviewer_group": (None, "members may approve and reject runs awaiting review (null: "
                             "admin_group); root always may"),
    "review_by_other": (False, "four eyes: nobody approves or rejects their own run"),
    "review_gate": ("enforced", "\"enforced\": a run that needs review may only work on a "
                                "repository its user cannot write (else its steps could move "
                                "the branch themselves); \"advisory\": allow it, and mark "
                                "the run's review advisory"),
    "max_awaiting_review": (0, "when this many runs await review, runs that would need "
                               "review are not started (0: no limit)"),
    "worktree_keep_days": (0.0, "how long a landed or rejected run's worktree is kept"),
    "trusted_filter_programs": (["git-lfs", "git-crypt"], "filter programs (names) a "
                                "landing may run in a checked-out target's work tree after "
                                "the change's files are written there: only ones that run "
                                "nothing they find in the work tree"),
}


REVIEW_GATES = ("enforced", "advisory")



class ConfigError(Exception):
    """A config file that cannot be used, phrased for the operator."""


_FIELDS = {
    "db_path": DEFAULT_DB_PATH, "isolation": "auto", "run_user": DEFAULT_RUN_USER,
    "run_as": "submitter", "admin_group": DEFAULT_ADMIN_GROUP, "default_limits": Limits(),
    "max_concurrent_runs": 4, "pools": {}, "on_finish": (), "on_finish_user": "nobody",
    "on_finish_timeout_seconds": 60.0, "poll_interval_seconds": 30.0,
    "auto_cleanup_completed_runs": False, "completed_run_retention_days": 7.0,
    "log_dir": "", "socket_path": "", "minipipe_command": (), "kill_grace_seconds": 10.0,
    "finally_grace_seconds": 300.0, "worktree_dir": "", "review": False,
    "reviewer_group": None, "review_by_other": False,
    "review_gate": "enforced", "max_awaiting_review": 0, "worktree_keep_days": 0.0,
    "trusted_filter_programs": ("git-lfs", "git-crypt"), "source": None,
}


class Config(Record):
    """A validated config: the KEYS above (paths absolute, log_dir and socket_path
    resolved, minipipe_command an argv tuple, default_limits a Limits) plus `source`,
    the file it came from (None for the built-in defaults).

    A `Record`, not a NamedTuple: the submit client loads this module, and `typing`
    alone costs about a bare Python start (bench/ figure 0).
    """

    FIELDS = _FIELDS
    __slots__ = tuple(_FIELDS)
    db_path: str
    isolation: str
    run_user: str | None
    run_as: str
    admin_group: str | None
    default_limits: Limits
    max_concurrent_runs: int
    on_finish: tuple[str, ...]
    on_finish_user: str
    on_finish_timeout_seconds: float
    pools: dict[str, int]
    poll_interval_seconds: float
    auto_cleanup_completed_runs: bool
    completed_run_retention_days: float
    log_dir: str
    socket_path: str
    minipipe_command: tuple[str, ...]
    kill_grace_seconds: float
    finally_grace_seconds: float
    worktree_dir: str
    review: bool
    reviewer_group: str | None
    review_by_other: bool
    review_gate: str
    max_awaiting_review: int
    worktree_keep_days: float
    trusted_filter_programs: tuple[str, ...]
    source: str | None

    @property
    def lock_path(self) -> str:
        """The single-instance lock: beside the socket, in a directory only the daemon's
        user may write (/run/minipipe under systemd)."""
        return os.path.join(os.path.dirname(self.socket_path), "minipipe.lock")

    @property
    def pid_path(self) -> str:
        """Who holds the lock, "PID START_TIME", for `minipipe status` (0644, beside it)."""
        return os.path.join(os.path.dirname(self.socket_path), "minipipe.pid")

    def effective_isolation(self) -> str:
        """"auto" resolved: a scope per run when systemd started us, else none."""
        if self.isolation != "auto":
            return self.isolation
        started_by_systemd = "NOTIFY_SOCKET" in os.environ or "INVOCATION_ID" in os.environ
        return "scope" if started_by_systemd and os.path.isdir("/run/systemd/system") else "none"


def resolve_config_path(explicit: str | None) -> tuple[str, bool]:
    """The config path to read and whether the user asked for it explicitly."""
    if explicit:
        return explicit, True
    from_env = os.environ.get(CONFIG_ENV)
    if from_env:
        return from_env, True
    return DEFAULT_CONFIG_PATH, False


def load_config(explicit: str | None = None) -> Config:
    path, required = resolve_config_path(explicit)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(1024 * 1024 + 1)
    except FileNotFoundError:
        if required:
            raise ConfigError(f"{path}: no such config file") from None
        return build_config({}, source=None)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config: {exc.strerror or exc}") from None
    if len(raw) > 1024 * 1024:
        raise ConfigError(f"{path}: too large for a config file (over 1 MiB)")
    try:
        document = jsonline.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte offset {exc.start})") from None
    except ValueError as exc:  # json.JSONDecodeError, from jsonline's fallback to json
        raise ConfigError(f"{path}:{getattr(exc, 'lineno', '?')}: invalid JSON: "
                          f"{getattr(exc, 'msg', exc)} (column {getattr(exc, 'colno', '?')})") \
            from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a config") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: the config must be a JSON object")
    return build_config(document, source=path)


def build_config(document: dict[str, object], *, source: str | None) -> Config:
    label = source or "config"

    def bad(key: str, expected: str) -> ConfigError:
        return ConfigError(f"{label}: {key!r} must be {expected}, got {document[key]!r}")

    for key in document:
        if key not in KEYS:
            raise ConfigError(f"{label}: unknown key {key!r}; valid keys: {', '.join(KEYS)}")
    values = {key: document.get(key, default) for key, (default, _doc) in KEYS.items()}
    base_dir = os.path.dirname(os.path.abspath(source)) if source else os.getcwd()

    def path_value(key: str) -> str | None:
        value = values[key]
        if value is None:
            return None
        if not isinstance(value, str) or not value or "\0" in value:
            raise bad(key, "a non-empty path string")
        return os.path.normpath(os.path.join(base_dir, value))

    db_path = path_value("db_path")
    if db_path is None:
        raise bad("db_path", "a path")
    db_dir = os.path.dirname(db_path)
    if values["isolation"] not in ISOLATIONS:
        raise bad("isolation", " or ".join(f'"{i}"' for i in ISOLATIONS))
    run_user = values["run_user"]
    if run_user is not None and (not isinstance(run_user, str) or not run_user.strip()
                                 or "\0" in run_user):
        raise bad("run_user", "a user name")
    if run_user in ("root", "0"):
        raise ConfigError(f"{label}: 'run_user' must not be root: runs never execute as root; "
                          "use the minipipe system user (the default)")
    run_as = values["run_as"]
    if not isinstance(run_as, str) or not run_as.strip() or "\0" in run_as:
        raise bad("run_as", '"submitter" or a user name')
    if run_as in ("root", "0"):
        raise ConfigError(f"{label}: 'run_as' must not be root: steps never execute as root")
    for key in ("admin_group", "reviewer_group"):
        group = values[key]
        if group is not None and (not isinstance(group, str) or not group.strip()
                                  or "\0" in group):
            raise bad(key, "a group name or null")
    admin_group = values["admin_group"]
    default_limits = _limits(values["default_limits"], label)
    concurrency = values["max_concurrent_runs"]
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or not (
            1 <= concurrency <= 1024):
        raise bad("max_concurrent_runs", "an integer from 1 to 1024")
    pools = values["pools"]
    if not isinstance(pools, dict) or not all(
            isinstance(name, str) and valid_pool_name(name) and isinstance(size, int)
            and not isinstance(size, bool) and 1 <= size <= 1024
            for name, size in pools.items()):
        raise bad("pools", 'an object of pool names (1-64 of A-Z a-z 0-9 _ - .) and slot '
                  'counts (1-1024), like {"gpu": 2}')
    pools = dict(pools)
    on_finish = values["on_finish"]
    if on_finish is None:
        on_finish = ()
    elif isinstance(on_finish, list) and on_finish and all(
            isinstance(a, str) and a and "\0" not in a for a in on_finish) and (
            os.path.isabs(on_finish[0])):
        on_finish = tuple(on_finish)
    else:
        raise bad("on_finish", 'null or an argv list with an absolute program, like '
                  '["/usr/local/bin/notify-run"]')
    hook_user = values["on_finish_user"]
    if not isinstance(hook_user, str) or not hook_user.strip() or "\0" in hook_user:
        raise bad("on_finish_user", "a user name")
    if hook_user in ("root", "0"):
        raise ConfigError(f"{label}: 'on_finish_user' must not be root: hooks never run as "
                          "root")
    run_users = [user for user in (run_user, None if run_as == "submitter" else run_as)
                 if user is not None]
    if on_finish and any(_same_user(hook_user, user) for user in run_users):
        raise ConfigError(f"{label}: 'on_finish_user' {hook_user!r} is a user runs execute as "
                          "(run_user or run_as): their steps could read the hook's "
                          "environment, other users' output; pick a user no run executes "
                          "as (the default is nobody)")
    numbers = {}
    for key, low, high in (("poll_interval_seconds", 0.05, 3600.0),
                           ("completed_run_retention_days", 0.0, 36500.0),
                           ("kill_grace_seconds", 0.0, 3600.0),
                           ("finally_grace_seconds", 0.0, 86400.0),
                           ("on_finish_timeout_seconds", 0.1, 86400.0),
                           ("worktree_keep_days", 0.0, 36500.0)):
        value = values[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not (
                low <= value <= high):
            raise bad(key, f"a number from {low:g} to {high:g}")
        numbers[key] = float(value)
    for key in ("auto_cleanup_completed_runs", "review", "review_by_other"):
        if not isinstance(values[key], bool):
            raise bad(key, "true or false")
    if values["review_gate"] not in REVIEW_GATES:
        raise bad("review_gate", '"enforced" or "advisory"')
    awaiting = values["max_awaiting_review"]
    if isinstance(awaiting, bool) or not isinstance(awaiting, int) or not (
            0 <= awaiting <= 100000):
        raise bad("max_awaiting_review", "an integer from 0 (no limit) to 100000")
    trusted = values["trusted_filter_programs"]
    if not isinstance(trusted, list) or not all(
            isinstance(name, str) and name and "/" not in name and name.strip() == name
            for name in trusted):
        raise bad("trusted_filter_programs", 'a list of program names, like ["git-lfs"]')
    command = values["minipipe_command"]
    argv: tuple[str, ...] = ()  # the daemon forks its runners
    if command is None:
        pass
    elif isinstance(command, str) and command.strip():
        import shlex

        argv = tuple(shlex.split(command))
    elif isinstance(command, list) and command and all(
            isinstance(a, str) and a for a in command):
        argv = tuple(command)
    else:
        raise bad("minipipe_command", "a command line string or a list of strings")
    return Config(
        db_path=db_path,
        isolation=values["isolation"],
        run_user=run_user,
        run_as=run_as,
        admin_group=admin_group,
        default_limits=default_limits,
        max_concurrent_runs=concurrency,
        on_finish=on_finish,
        on_finish_user=hook_user,
        on_finish_timeout_seconds=numbers["on_finish_timeout_seconds"],
        pools=pools,
        poll_interval_seconds=numbers["poll_interval_seconds"],
        auto_cleanup_completed_runs=values["auto_cleanup_completed_runs"],
        completed_run_retention_days=numbers["completed_run_retention_days"],
        log_dir=path_value("log_dir") or os.path.join(db_dir, "logs"),
        socket_path=_current_socket(path_value("socket_path")) or os.path.join(db_dir,
                                                                               "minipipe.sock"),
        minipipe_command=argv,
        kill_grace_seconds=numbers["kill_grace_seconds"],
        finally_grace_seconds=numbers["finally_grace_seconds"],
        worktree_dir=path_value("worktree_dir") or os.path.join(db_dir, "worktrees"),
        review=values["review"],
        reviewer_group=values["reviewer_group"] or admin_group,
        review_by_other=values["review_by_other"],
        review_gate=values["review_gate"],
        max_awaiting_review=awaiting,
        worktree_keep_days=numbers["worktree_keep_days"],
        trusted_filter_programs=tuple(trusted),
        source=source,
    )


# 0.1.0's packaged config named the wake-up socket; an edited conffile keeps it.
OLD_PACKAGED_SOCKET, PACKAGED_SOCKET = "/run/minipipe/wake.sock", "/run/minipipe/api.sock"


def _current_socket(path: str | None) -> str | None:
    return PACKAGED_SOCKET if path == OLD_PACKAGED_SOCKET else path


def _limits(value: object, label: str) -> Limits:
    if not isinstance(value, dict):
        raise ConfigError(f"{label}: 'default_limits' must be an object, got {value!r}")
    parsers = limit_parsers() if value else {}
    parsed: dict[str, object] = {}
    for key, raw in value.items():
        if key not in LIMIT_KEYS:
            raise ConfigError(f"{label}: unknown key {key!r} in 'default_limits'; valid keys: "
                              + ", ".join(LIMIT_KEYS))
        try:
            parsed[key] = parsers[key](raw)
        except ValueError as exc:
            raise ConfigError(f"{label}: default_limits.{key}: {exc}") from None
    return Limits(**parsed)


def _same_user(a: str, b: str) -> bool:
    """Two user names (or numeric ids) naming one user, as far as the system knows."""
    if a == b:
        return True
    import pwd

    def uid(name: str) -> int | None:
        try:
            return pwd.getpwnam(name).pw_uid
        except KeyError:
            return int(name) if name.isdigit() else None

    first = uid(a)
    return first is not None and first == uid(b)
