"""The read commands, `ls`, `show` and `status`: what they print, without click.

Operators and scripts run these in loops (`watch minipipe ls`); importing click
costs three bare Python starts (bench/ figure 7), more than the command. So the
commands live here, importing only the store, the renderer and the standard
library's cheapest parts, and both the click CLI (cli.py, which owns options, help
and every mistake) and the start-up fast path (entry.py, for the plain forms) call
them. Errors are `ReadError`s carrying the exit status; the callers print them.
"""

from __future__ import annotations

import os
import sys

from .model import RunState
from .render import STATE_COLOURS
from .store import NoSuchRun, Store, StoreError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .config import Config

EXIT_FAILURE, EXIT_BAD_INPUT = 1, 2

# SGR codes for the colour names STATE_COLOURS uses (click.style's names).
_COLOURS = {"black": 30, "red": 31, "green": 32, "yellow": 33, "blue": 34, "magenta": 35,
            "cyan": 36, "white": 37, "bright_black": 90}


class ReadError(Exception):
    """A read command cannot answer; `exit_status` is the CLI's (1 failure, 2 input)."""

    def __init__(self, message: str, exit_status: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_status = exit_status


class Printer:
    """Lines to stdout, coloured on a terminal unless NO_COLOR is set."""

    def __init__(self, colour: bool | None = None) -> None:
        self.colour = (sys.stdout.isatty() and "NO_COLOR" not in os.environ
                       if colour is None else colour)

    def style(self, text: str, state: str | None = None, *, fg: str | None = None,
              bold: bool = False) -> str:
        """`text` in a state's colour, or in `fg` and/or bold (as click.style renders)."""
        if not self.colour:
            return text
        if state is not None:
            fg, bold = STATE_COLOURS.get(state, ("white", False))
        codes = ([f"\x1b[{_COLOURS[fg]}m"] if fg else []) + (["\x1b[1m"] if bold else [])
        return "".join(codes) + text + "\x1b[0m" if codes else text

    def state_cell(self, line: str, state: str) -> str:
        """`line` with its first occurrence of `state` coloured."""
        return line.replace(state, self.style(state, state), 1) if self.colour else line

    def echo(self, text: str = "") -> None:
        sys.stdout.write(text + "\n")

    def diff_line(self, line: str) -> str:
        """A unified diff line in git's colours (added green, removed red, hunks cyan)."""
        if not self.colour:
            return line
        if line.startswith(("+++", "---", "diff --git", "index ")):
            return self.style(line, bold=True)
        if line.startswith("+"):
            return self.style(line, fg="green")
        if line.startswith("-"):
            return self.style(line, fg="red")
        if line.startswith("@@"):
            return self.style(line, fg="cyan")
        return line

    def page(self, lines: list[str]) -> None:
        """Through a pager ($PAGER, else less) on a terminal, as git does; else print."""
        if not sys.stdout.isatty() or not lines:
            for line in lines:
                self.echo(line)
            return
        import shlex
        import subprocess

        pager = shlex.split(os.environ.get("PAGER") or "less") or ["less"]
        env = {**os.environ, "LESS": os.environ.get("LESS", "FRX")}
        try:
            with subprocess.Popen(pager, stdin=subprocess.PIPE, env=env) as proc:
                assert proc.stdin is not None
                try:
                    proc.stdin.write(("\n".join(lines) + "\n").encode("utf-8", "replace"))
                    proc.stdin.close()
                except BrokenPipeError:  # the pager was quit early
                    pass
        except OSError:
            for line in lines:
                self.echo(line)

    def json(self, data: Any) -> None:
        import json

        self.echo(json.dumps(data, indent=2))


SHOWN_COMMITS = 10  # by `show`, one line each; `diff` shows them whole


def quoted_path(path: str) -> str:
    """A path as `git diff --name-only` writes one (with core.quotePath off): in
    double quotes with C escapes when it holds a control character, a double quote
    or a backslash, so one name is always one line."""
    if not any(ch < " " or ch in '"\\\x7f' for ch in path):
        return path
    escapes = {"\a": "\\a", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\v": "\\v",
               "\f": "\\f", "\r": "\\r", '"': '\\"', "\\": "\\\\"}
    return '"' + "".join(escapes.get(ch) or (f"\\{ord(ch):03o}" if ch < " " or ch == "\x7f"
                                             else ch) for ch in path) + '"'


class Reading:
    """The DB opened read-only for one command; store errors become ReadErrors."""

    def __init__(self, config: Config) -> None:
        self.path = config.db_path

    def __enter__(self) -> Store:
        try:
            self.store = Store.open(self.path, readonly=True)
        except StoreError as exc:
            raise ReadError(str(exc)) from None
        return self.store

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 _tb: object) -> None:
        self.store.close()
        if isinstance(exc, NoSuchRun):
            raise ReadError(str(exc), EXIT_BAD_INPUT) from None
        if isinstance(exc, StoreError):
            raise ReadError(str(exc)) from None


def shown_text() -> Any:
    """What user text goes through: `printable` on a terminal, else unchanged."""
    from .render import keep, printable, stdout_is_terminal

    return printable if stdout_is_terminal() else keep


def list_runs(config: Config, out: Printer, *, limit: int | None = 20,
              states: tuple[str, ...] = (), submitted_by: str | None = None,
              as_json: bool = False) -> None:
    """`minipipe ls`: runs newest first (`limit=None`: all of them)."""
    from .render import run_json, runs_table

    with Reading(config) as store:
        runs = store.list_runs(limit=limit,
                               states=tuple(RunState(s.upper()) for s in states) or None,
                               submitted_by=submitted_by)
        waiting = store.waiting_for([r.id for r in runs if r.state.value == "PENDING"])
    if as_json:
        out.json([run_json(r) for r in runs])
        return
    if not runs:
        sys.stderr.write("no runs yet; submit one with `minipipe submit PLAN`\n")
        return
    lines, row_states = runs_table(runs, shown=shown_text(), waiting=waiting)
    out.echo(out.style(lines[0], bold=True))
    for line, state in zip(lines[1:], row_states, strict=True):
        out.echo(out.state_cell(line, state))


def show_run(config: Config, out: Printer, run_id: int, *, event_count: int = 10,
             as_json: bool = False) -> None:
    """`minipipe show RUN`: one run, its steps and its latest events."""
    from .render import (
        elapsed,
        event_json,
        event_text,
        run_json,
        step_json,
        steps_table,
        workspace_json,
    )

    with Reading(config) as store:
        run = store.get_run(run_id)
        steps = store.get_steps(run_id)
        events = store.last_events(run_id, event_count)
        lost = store.lines_lost(run_id)
        output_lines = store.output_lines(run_id)
        shortfall = _journal_shortfall(store, run)
        workspace = workspace_json(store.workspace_spec(run_id), store.workspace(run_id))
        after = [{"run": after_id, "any_result": any_result, "state": state}
                 for after_id, any_result, state in store.dependencies(run_id)]
    if as_json:
        out.json({**run_json(run), "after": after, "steps": [step_json(s) for s in steps],
                  "events": [event_json(e) for e in events], "log_lines_lost": lost,
                  "output_lines": output_lines,
                  "journal_lines_missing": shortfall[1] - shortfall[0] if shortfall else 0,
                  "workspace": workspace})
        return
    shown = shown_text()
    out.echo(f"{out.style(f'run {run.id}', bold=True)}  {shown(run.name)}  "
             f"{out.style(run.state.value, run.state.value)}")
    facts = [("phase", run.phase or "-"), ("steps", f"{run.steps_done}/{run.steps_total}"),
             ("attempt", str(run.attempt)), ("priority", str(run.priority)),
             ("duration", elapsed(run.started_at, run.finished_at)),
             ("created", run.created_at), ("started", run.started_at or "-"),
             ("finished", run.finished_at or "-"),
             ("exit code", "-" if run.exit_code is None else str(run.exit_code))]
    if run.reason:
        facts.append(("reason", run.reason))
    if after:
        facts.append(("after", ", ".join(
            f"run {d['run']} " + ("ended" if d["any_result"] else "succeeded")
            + f" ({d['state'] or 'gone'})" for d in after)))
    if run.usage:
        from .render import usage_text

        facts.append(("usage", usage_text(run.usage)))
    if run.pool:
        facts.append(("pool", run.pool + (f", slot {run.slot}" if run.slot is not None
                                          and run.state.value == "RUNNING" else "")))
    if run.not_before:
        from .render import local_time

        facts.append(("not before", local_time(run.not_before)))
    if run.cancel_requested:
        facts.append(("cancel", "requested"))
    if run.submitted_by:
        facts.append(("by", run.submitted_by + (f" (steps ran as {run.run_user})"
                                                if run.run_user and run.run_user
                                                != run.submitted_by else "")))
    if run.plan_source:
        facts.append(("plan", run.plan_source))
    if output_lines is not None:
        facts.append(("output", f"{output_lines} line(s)"))
    if lost:
        facts.append(("lost", f"{lost} line(s) could not be stored anywhere"))
    if shortfall:
        facts.append(("journal", f"kept {shortfall[0]} of {shortfall[1]} lines (journald "
                                 f"dropped {shortfall[1] - shortfall[0]}); `minipipe logs` "
                                 "shows the complete file mirror"))
    if workspace is not None:
        facts += _workspace_facts(workspace, run.state.value)
    for key, value in facts:
        out.echo(f"  {key + ':':<11}{shown(value)}")
    changes = (workspace or {}).get("changes") or {}
    if changes.get("gate") == "advisory":
        out.echo(out.style(f"  warning:   its steps could write {shown(changes['writable'])}: "
                           "they could have changed the repository without review",
                           fg="yellow"))
    commits = changes.get("commits") or []
    for index, commit in enumerate(commits[:SHOWN_COMMITS]):
        out.echo(f"  {'commits:' if index == 0 else '':<11}{shown(commit['sha'][:12])} "
                 f"{shown(commit.get('subject', ''))} ({shown(commit.get('author', ''))})")
    if changes.get("commit_count", 0) > min(len(commits), SHOWN_COMMITS):
        out.echo(f"  {'':<11}(`minipipe diff {run.id}` shows all "
                 f"{changes['commit_count']}, whole)")
    out.echo()
    lines = steps_table(steps, shown=shown)
    out.echo(out.style(lines[0], bold=True))
    for line, step in zip(lines[1:], steps, strict=True):
        out.echo(out.state_cell(line, step.state.value))
    if events:
        out.echo()
        out.echo(out.style("events", bold=True))
        for event in events:
            out.echo(f"  {shown(event_text(event))}")


def _workspace_facts(workspace: dict[str, Any], state: str) -> list[tuple[str, str]]:
    from .render import age_since, change_summary, landing_target

    facts = [("repo", f"{workspace['repo']} at {workspace['ref']}"
              + (f" ({workspace['base_commit'][:12]})" if workspace.get("base_commit")
                 else ""))]
    facts.append(("lands on", landing_target(workspace)))
    if workspace.get("path"):
        facts.append(("worktree", f"{workspace['path']} on {workspace['branch']}"
                      + (" (removed)" if workspace.get("removed_at") else "")))
    facts.append(("changes", change_summary(workspace.get("changes"))
                  + (f" at {workspace['head_commit']}" if workspace.get("head_commit")
                     else "")))
    review = "required" if workspace.get("review") else "not required"
    gate = (workspace.get("changes") or {}).get("gate")
    if gate == "advisory":
        review += " (advisory: the run's user may write the repository)"
    if workspace.get("awaiting_since") and state == "AWAITING_REVIEW":
        review += f", waiting {age_since(workspace['awaiting_since'])}"
    if workspace.get("approved_by"):
        review += f", approved by {workspace['approved_by']}"
    facts.append(("review", review))
    if workspace.get("landed_commit"):
        facts.append(("landed", f"{workspace['landed_commit'][:12]} on "
                                f"{workspace.get('target') or workspace['ref']}"))
    return facts


def review_list(config: Config, out: Printer, *, as_json: bool = False) -> None:
    """`minipipe review`: the runs awaiting review, oldest first."""
    from .render import (
        age_since,
        change_summary,
        landing_target,
        run_json,
        table,
        workspace_json,
    )

    with Reading(config) as store:
        waiting = [(run, workspace_json(store.workspace_spec(run.id), row))
                   for run, row in store.awaiting_review()]
    if as_json:
        out.json([{**run_json(run), "workspace": workspace} for run, workspace in waiting])
        return
    if not waiting:
        sys.stderr.write("no runs await review\n")
        return
    shown = shown_text()
    rows = [[str(run.id), shown(run.name)[:30], shown(run.submitted_by or "-"),
             age_since(workspace["awaiting_since"]), shown(workspace["head_commit"] or "-"),
             shown(landing_target(workspace)), change_summary(workspace["changes"]),
             shown(run.reason or "")]
            for run, workspace in waiting]
    lines = table(["ID", "NAME", "OWNER", "WAITING", "COMMIT", "LANDS ON", "CHANGES", "NOTE"],
                  rows)
    out.echo(out.style(lines[0], bold=True))
    for line in lines[1:]:
        out.echo(line)


def diff(config: Config, out: Printer, run_id: int, *, stat: bool = False,
         name_only: bool = False, nul: bool = False) -> None:
    """`minipipe diff RUN`: the change the run recorded (never git run by the reader:
    the run's repository is its user's, and its config could run code)."""
    from .render import commit_lines, diff_after_commits, diffstat
    from .review import read_diff

    with Reading(config) as store:
        store.get_run(run_id)
        row = store.workspace(run_id)
    if row is None:
        raise ReadError(f"run {run_id} has no workspace, so no diff", EXIT_BAD_INPUT)
    if not row.changes:
        raise ReadError(f"run {run_id} has not recorded its change yet (its steps have "
                        "not ended)", EXIT_BAD_INPUT)
    shown = shown_text()
    if name_only:  # for scripts: the names alone, the commit only for a person
        if sys.stdout.isatty():
            out.echo(f"commit {shown(row.head_commit or '-')}")
        for entry in row.changes["files"]:
            if entry.get("cut"):
                continue
            if nul:
                sys.stdout.buffer.write(os.fsencode(entry["path"]) + b"\0")
            else:
                out.echo(shown(quoted_path(entry["path"])))
        sys.stdout.flush()
        if row.changes.get("files_truncated"):  # a script must not take it for all
            raise ReadError(f"run {run_id}'s file list was cut (over 2,000 files, or "
                            "names not kept exactly): the names above are not all of them")
        return
    if stat:
        out.echo(f"commit {shown(row.head_commit or '-')}")
        for line in diffstat(row.changes):
            out.echo(shown(line))
        return
    data = read_diff(config.log_dir, run_id)
    if data is None:
        raise ReadError(f"run {run_id}'s diff is missing from {config.log_dir}")
    # The commits first, whole, as `git log -p` shows them (their messages indented,
    # so no line of theirs reads as a patch header to `git apply`).
    lines = [out.style(text, fg="yellow") if text.startswith("commit ") else text
             for text in map(shown, commit_lines(row.changes))]
    # Lines end at "\n" only, as in git: str.splitlines() would also break at CR, VT,
    # FF, U+2028 and more, and a "+" line split there would show as context.
    text = diff_after_commits(data, row.changes).decode("utf-8", "backslashreplace")
    lines += [out.diff_line(shown(line)) for line in text.removesuffix("\n").split("\n")]
    if row.changes.get("diff_truncated"):
        lines.append(out.style("(the diff was cut at 8 MiB; `minipipe diff --stat` lists "
                               "every file)", fg="yellow"))
    out.page(lines)


def _journal_shortfall(store: Store, run: Any) -> tuple[int, int] | None:
    """Only runs that had a journal, and only for readers who may read it, pay for
    loading python-systemd and counting (see output.journal_shortfall)."""
    if not run.unit or not run.state.is_terminal:
        return None
    from .output import journal_shortfall

    return journal_shortfall(store, run)


def status(config: Config, out: Printer, *, as_json: bool = False) -> None:
    """`minipipe status`: is the daemon up, is the queue paused, runs per state."""
    alive = daemon_running(config.lock_path, config.pid_path)
    with Reading(config) as store:
        counts = store.counts()
        paused = store.is_paused()
        worktrees, worktree_bytes = store.worktree_disk_bytes()
        use = store.pool_use()
    from .render import pool_fill, pool_use

    pools = pool_use(config.pools, use)
    awaiting = counts.get("AWAITING_REVIEW", 0)
    gate_closed = bool(config.max_awaiting_review) and awaiting >= config.max_awaiting_review
    if as_json:
        out.json({"daemon_running": alive, "paused": paused, "counts": counts,
                  "db_path": config.db_path, "awaiting_review": awaiting,
                  "max_awaiting_review": config.max_awaiting_review,
                  "review_gate_full": gate_closed,
                  "worktrees": {"count": worktrees, "bytes": worktree_bytes},
                  "pools": pools})
        return
    activation = "; socket-activated: the next request starts it" if (
        not alive and os.path.exists(config.socket_path)) else ""
    out.echo(f"daemon: {'running' if alive else out.style('not running', fg='red')}"
             f"{activation}")
    out.echo(f"queue:  {out.style('paused', fg='yellow') if paused else 'accepting'}")
    for state, count in counts.items():
        out.echo(f"  {out.style(f'{state:<16}', state)}{count}")
    if gate_closed:
        out.echo(out.style(f"review: {awaiting} runs await review (max_awaiting_review "
                           f"{config.max_awaiting_review}): runs that need review wait until "
                           "some are approved or rejected", fg="yellow"))
    if worktrees:
        out.echo(f"worktrees: {worktrees} on disk, {size_text(worktree_bytes)}")
    for name, pool in pools.items():
        out.echo(f"pool {name}: {pool_fill(pool)} slots in use")


def size_text(count: int) -> str:
    """Bytes for people: "512 B", "4.0 KiB", "1.2 GiB"."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024  # type: ignore[assignment]
    return f"{count} B"


def daemon_running(lock_path: str, pid_path: str | None = None) -> bool:
    """Whether a daemon holds its lock: without asking it (asking would start a
    socket-activated one) and without opening its lock file (root's alone).

    The daemon's pid file names it with its start time (a reused pid does not
    match); without one, /proc/locks says who holds the lock.
    """
    from .procs import exclusive_flock_held, start_time

    try:
        with open(pid_path or "", "rb") as handle:
            pid, started = (int(field) for field in handle.read(64).split())
    except (OSError, ValueError):
        pass
    else:
        return pid > 0 and start_time(pid) == started
    if exclusive_flock_held(lock_path):
        return True
    # /proc/locks names the underlying inode on overlayfs (a container's disk). Whoever
    # may open the lock (the private instance's own user, root) may also just test it:
    # a daemon starting meanwhile waits a moment for it.
    import fcntl

    try:
        fd = os.open(lock_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
