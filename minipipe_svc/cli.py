"""The `minipipe` command. Each verb parses, calls one store/daemon function, renders.

Exit statuses (also in `minipipe --help` and the README):
  0  success
  1  something outside your input failed (DB unreadable, permission, run ended badly
     for `wait`)
  2  your input is wrong: usage, invalid plan or config, unknown run, a request the
     run's state does not allow
  124  `wait --timeout` expired
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn

import click

from . import __version__
from .config import Config, ConfigError, load_config
from .model import RunState
from .procs import user_name
from .reads import Printer, ReadError, Reading
from .store import Store

if TYPE_CHECKING:
    from .client import ClientError

EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_TIMEOUT = 1, 2, 124

EPILOG = """\b
Exit status: 0 ok; 1 failure (DB, permission, a run that did not succeed for
`wait`); 2 bad input (usage, plan, config, unknown run, not allowed in the
run's state); 124 `wait --timeout` expired.
\b
Config: --config, else $MINIPIPE_CONFIG, else /etc/minipipe/config.json.
"""


class UserError(click.ClickException):
    """Bad input from the user: exit status 2, no traceback."""

    exit_code = EXIT_BAD_INPUT


class Failure(click.ClickException):
    exit_code = EXIT_FAILURE


class RunIdType(click.ParamType):
    name = "RUN"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip()
        if not text.isascii() or not text.isdigit() or int(text) < 1 or len(text) > 18:
            self.fail(f"{value!r} is not a run id; run ids are positive numbers like 42 "
                      "(see `minipipe ls`)", param, ctx)
        return int(text)


RUN_ID = RunIdType()


class Context:
    """What every verb needs: the config, a store opened on demand, colour choice."""

    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self._config: Config | None = None
        self.colour = sys.stdout.isatty() and "NO_COLOR" not in os.environ

    @property
    def config(self) -> Config:
        if self._config is None:
            try:
                self._config = load_config(self.config_path)
            except ConfigError as exc:
                raise UserError(str(exc)) from None
        return self._config

    @contextmanager
    def store(self) -> Iterator[Store]:
        """The DB, read-only (every change goes through the daemon, `call`), its
        errors the CLI's, as for the read commands."""
        try:
            with Reading(self.config) as store:
                yield store
        except ReadError as exc:
            raise _cli_error(exc) from None

    def style(self, text: str, state: str | None = None, **kwargs: Any) -> str:
        if not self.colour:
            return text
        if state is not None:
            return self.printer.style(text, state)
        return click.style(text, **kwargs)

    @property
    def printer(self) -> Printer:
        return Printer(self.colour)

    def read(self, command: Callable[..., None], *args: Any, **options: Any) -> None:
        """Run a read command (reads.py); its ReadError becomes the CLI error."""
        try:
            command(self.config, self.printer, *args, **options)
        except ReadError as exc:
            raise _cli_error(exc) from None

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        """One request to the daemon; its refusal becomes the CLI error it names."""
        from .client import ClientError, call

        try:
            return call(self.config.socket_path, op, **fields)
        except ClientError as exc:
            raise _cli_error(exc) from None


def _cli_error(exc: ClientError | ReadError) -> click.ClickException:
    """A refusal or a failed read as the CLI's error (exit status 2 for bad input)."""
    return UserError(str(exc)) if exc.exit_status == EXIT_BAD_INPUT else Failure(str(exc))


pass_ctx = click.make_pass_decorator(Context)


@click.group(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", metavar="PATH", envvar="MINIPIPE_CONFIG",
              help="Config file (default: $MINIPIPE_CONFIG or /etc/minipipe/config.json).")
@click.version_option(version=__version__, prog_name="minipipe")
@click.pass_context
def cli(click_ctx: click.Context, config_path: str | None) -> None:
    """Queue and run pipeline runs: ordered, phased steps of commands.

    \b
    Quick start:
      minipipe daemon &                  # the scheduler (systemd runs it for you)
      minipipe submit examples/hello.toml
      minipipe ls
      minipipe logs -f 1
    """
    click_ctx.obj = Context(config_path)


@cli.command()
@click.option("--db-path", metavar="PATH",
              help="State DB to use instead of the config's db_path (as the MINI_PIPE "
                   "daemon took it).")
@pass_ctx
def daemon(ctx: Context, db_path: str | None) -> None:
    """Run the scheduler in the foreground (what minipipe.service runs).

    The only writer of state: serves the API socket (submit, cancel, retry,
    pause, resume), starts PENDING runs up to max_concurrent_runs, adopts live
    runs after a restart and marks vanished ones INTERRUPTED. SIGTERM/SIGINT
    stop it without stopping any run; SIGHUP reloads the config.
    """
    from .daemon import serve

    config = ctx.config
    if db_path is not None:
        config = config._replace(db_path=os.path.abspath(db_path))
    sys.exit(serve(config, ctx.config_path))


@cli.command()
@click.argument("plan", metavar="PLAN")
@click.option("--priority", type=click.IntRange(-1000, 1000),
              help="Override the plan's priority (higher starts first).")
@click.option("--format", "fmt", type=click.Choice(["toml", "json"]),
              help="Plan format (default: by extension; TOML unless .json).")
@click.option("--after", "after", metavar="RUN[,RUN...]", multiple=True,
              help="Start only after these runs SUCCEEDED (if one ends otherwise, this "
                   "run ends CANCELLED, saying which). Repeatable.")
@click.option("--after-any", "after_any", metavar="RUN[,RUN...]", multiple=True,
              help="Start only after these runs ended, whatever the result. Repeatable.")
@click.option("--at", "at", metavar="WHEN",
              help='Start no earlier than this local time: "2026-12-01 03:00", "03:00" '
                   '(the next one), "tomorrow 03:00".')
@click.option("--delay", metavar="DURATION",
              help='Start no earlier than this long from now: "90s", "2h", "1h30m".')
@click.option("--max-parallel", type=click.IntRange(1, 1024), metavar="N",
              help="For a plan with [matrix]: at most N of its runs at once.")
@click.option("--pool", metavar="NAME",
              help="Run in this pool (config pools): it starts only while one of the "
                   "pool's slots is free, and its steps get MINIPIPE_SLOT.")
@click.option("--json", "as_json", is_flag=True, help="Print the new run as JSON.")
@pass_ctx
def submit(ctx: Context, plan: str, priority: int | None, fmt: str | None,
           after: tuple[str, ...], after_any: tuple[str, ...], at: str | None,
           delay: str | None, max_parallel: int | None, pool: str | None,
           as_json: bool) -> None:
    """Validate a plan and queue it as a run.

    PLAN is a .toml or .json file, or - for standard input. Prints the new
    run's id. An invalid plan is reported with its file, line and key, and
    nothing is queued (exit status 2).

    A run may wait: for other runs (--after, --after-any, or `after = [12]` in the
    plan) and for a time (--at, --delay); `ls` shows what it waits for. Runs on a
    calendar are systemd's job: see minipipe-submit@.service in the README.
    """
    from .submit import submit_and_report

    status = submit_and_report(ctx.config.socket_path, plan, as_json=as_json, fmt=fmt,
                               priority=priority,
                               stdin=sys.stdin.buffer.read() if plan == "-" else None,
                               waits={**_waits(after, after_any, at, delay),
                                      **({"pool": pool} if pool else {}),
                                      **({"max_parallel": max_parallel} if max_parallel
                                         else {})})
    if status:
        sys.exit(status)


def _waits(after: tuple[str, ...], after_any: tuple[str, ...], at: str | None,
           delay: str | None) -> dict[str, Any]:
    """The submit request's `after`, `after_any` and `not_before` from the options."""
    from datetime import datetime, timedelta

    from .quantities import parse_duration, parse_moment

    def ids(values: tuple[str, ...], option: str) -> list[int]:
        found = []
        for part in ",".join(values).split(","):
            part = part.strip()
            if not part:
                continue
            # (ASCII: int() refuses "²", which isdigit() takes; 18 digits fit SQLite)
            if not (part.isascii() and part.isdigit() and len(part) <= 18) or int(part) < 1:
                raise click.BadParameter(f"{part!r} is not a run id", param_hint=option)
            found.append(int(part))
        return found

    if at and delay:
        raise click.UsageError("use either --at or --delay")
    waits: dict[str, Any] = {"after": ids(after, "--after"),
                             "after_any": ids(after_any, "--after-any")}
    try:
        if at:
            waits["not_before"] = parse_moment(at).isoformat()
        elif delay:
            moment = datetime.now().astimezone() + timedelta(seconds=parse_duration(delay))
            waits["not_before"] = moment.isoformat()
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--at" if at else "--delay") from None
    return waits


@cli.command(name="ls")
@click.option("--all", "show_all", is_flag=True, help="List every run, not only recent ones.")
@click.option("--limit", type=click.IntRange(1), default=20, show_default=True,
              help="How many recent runs to list.")
@click.option("--state", "states", multiple=True, metavar="STATE",
              type=click.Choice([s.value for s in RunState], case_sensitive=False),
              help="Only runs in this state (repeatable).")
@click.option("--mine", is_flag=True, help="Only runs you submitted.")
@click.option("--user", "owner", metavar="NAME", help="Only runs this user submitted.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@pass_ctx
def list_runs(ctx: Context, show_all: bool, limit: int, states: tuple[str, ...],
              mine: bool, owner: str | None, as_json: bool) -> None:
    """List runs, newest first.

    Columns: id, name, state, phase, steps done/total, duration (live while
    running), and how long ago it was submitted. `--json` includes each run's
    submitted_by (the user the daemon saw submit it).
    """
    from . import reads

    if mine and owner:
        raise UserError("use either --mine or --user NAME")
    ctx.read(reads.list_runs, limit=None if show_all else limit, states=states,
             submitted_by=user_name() if mine else owner, as_json=as_json)


@cli.command()
@click.argument("run_id", type=RUN_ID)
@click.option("--events", "event_count", type=click.IntRange(0), default=10,
              show_default=True, help="How many of the latest events to show.")
@click.option("--json", "as_json", is_flag=True, help="Print run, steps and events as JSON.")
@pass_ctx
def show(ctx: Context, run_id: int, event_count: int, as_json: bool) -> None:
    """Show one run: its state, its steps and its latest events.

    On a terminal, control characters in the run's text (name, steps, reasons,
    events) are shown as escapes, e.g. ESC as \\x1b; --json keeps them JSON-escaped.
    """
    from . import reads

    ctx.read(reads.show_run, run_id, event_count=event_count, as_json=as_json)


@cli.command()
@click.argument("run_id", type=RUN_ID)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output until the run ends.")
@click.option("--step", "step_id", metavar="STEP", help="Only this step's output.")
@click.option("--raw", is_flag=True,
              help="Print only the output text, without step prefixes, exactly as the "
                   "steps wrote it (no escaping of control characters, even on a terminal).")
@click.option("--source", type=click.Choice(["auto", "journal", "file"]), default="auto",
              show_default=True,
              help="Where to read: the journal (runs in a scope) or the log_dir file mirror. "
                   "auto uses the journal when the run has one and it is complete.")
@pass_ctx
def logs(ctx: Context, run_id: int, follow: bool, step_id: str | None, raw: bool,
         source: str) -> None:
    """Print a run's output.

    Every line of every step, in order, prefixed with its step id; stderr in red
    on a terminal, minipipe's own notes (step start/end) dimmed. If the journal
    lost lines (journald's rate limit) or cannot be read by you, the complete
    file mirror is used and a note on stderr says so.

    On a terminal, control characters in the output and step ids (which could
    move the cursor, clear the screen, retitle the window or hide text) are
    shown as escapes: ESC as \\x1b, CR as \\x0d, U+202E as \\u202e. Piped or
    redirected, and with --raw, the output is printed exactly as written.
    """
    from .output import OutputReader
    from .render import keep, printable, stdout_is_terminal

    shown = printable if not raw and stdout_is_terminal() else keep

    with ctx.store() as store:
        run = store.get_run(run_id)
        if step_id is not None and step_id not in {s.step_id for s in store.get_steps(run_id)}:
            raise UserError(f"run {run_id} has no step {step_id!r}")
        reader = OutputReader(store, run, ctx.config.log_dir, source)
        for line in reader.lines(follow=follow):
            if step_id is not None and line.step_id != step_id:
                continue
            if raw and line.stream == "minipipe":
                continue
            text = line.text if raw else f"{shown(line.step_id)} | {shown(line.text)}"
            if line.stream == "stderr":
                text = ctx.style(text, fg="red")
            elif line.stream == "minipipe":
                text = ctx.style(text, dim=True)
            click.echo(text, color=True)  # click would strip escapes from a pipe
    for note in reader.notes:
        click.echo(f"minipipe: {note}", err=True)


@cli.command()
@click.argument("run_ids", metavar="[RUN]...", nargs=-1, type=RUN_ID)
@click.option("--all", "cancel_all", is_flag=True,
              help="Cancel every pending and running run you may cancel (yours; an "
                   "admin's: all).")
@pass_ctx
def cancel(ctx: Context, run_ids: tuple[int, ...], cancel_all: bool) -> None:
    """Cancel pending or running runs.

    A pending run ends at once. A running run's current step (its whole process
    group) gets SIGTERM, then SIGKILL after kill_grace_seconds; the run ends
    CANCELLED once its [[finally]] steps ran (cancel again to stop those too,
    else they get finally_grace_seconds). You may cancel your own runs; root
    and members of the admin group (config admin_group) anyone's. `--all`
    cancels every run you may cancel.
    """
    if not run_ids and not cancel_all:
        raise UserError("name the run(s) to cancel, or use --all")
    requests = [{"all": True}] if cancel_all else [{"run": run_id} for run_id in run_ids]
    failed: click.ClickException | None = None
    for fields in requests:
        try:
            reply = ctx.call("cancel", **fields)
        except click.ClickException as exc:
            click.echo(f"Error: {exc.message}", err=True)
            failed = failed or exc
            continue
        for result in reply["results"]:
            click.echo(f"run {result['run']}: " + (
                "cancelled" if result["was"] == "PENDING" else "cancel requested"))
        if cancel_all and not reply["results"]:
            click.echo("nothing to cancel", err=True)
    if failed is not None:
        sys.exit(failed.exit_code)


@cli.command()
@click.argument("run_id", type=RUN_ID)
@pass_ctx
def retry(ctx: Context, run_id: int) -> None:
    """Queue a run that did not succeed again.

    The run keeps its id and becomes attempt N+1; all its steps run again, from a
    fresh checkout for a run with a [workspace]. A run whose change already landed
    (its on_approve steps failed or were cut short) runs only its on_approve steps
    again and lands nothing. You may retry your own runs; root and members of the
    admin group anyone's.
    """
    reply = ctx.call("retry", run=run_id)
    again = ("; its change has landed, so only its on_approve steps run again"
             if reply.get("landed") else "")
    click.echo(f"run {run_id}: queued again (attempt {reply['attempt']}){again}")


@cli.command()
@click.argument("run_ids", metavar="RUN...", type=RUN_ID, nargs=-1, required=True)
@click.option("--group", "as_group", is_flag=True,
              help="Wait for every run of each RUN's matrix group (RUN: any of its runs; "
                   "a run in no group is waited for alone).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Give up after this long (exit status 124).")
@pass_ctx
def wait(ctx: Context, run_ids: tuple[int, ...], as_group: bool,
         timeout: float | None) -> None:
    """Block until runs end; exit status 0 only if all of them SUCCEEDED.

    `minipipe wait $(minipipe submit matrix.toml)` waits for every run a matrix
    made. A run AWAITING_REVIEW has not ended: `wait` goes on until a reviewer
    approves (then it lands and ends) or rejects it; use --timeout to stop waiting.
    """
    from .render import printable

    deadline = None if timeout is None else time.monotonic() + timeout
    ended = []
    with ctx.store() as store:
        waiting = list(run_ids)
        if as_group:  # each RUN's whole group (a run in none: itself)
            waiting = []
            for run_id in run_ids:
                group = store.get_run(run_id).group_id
                waiting += store.group_runs(group) if group is not None else [run_id]
            waiting = list(dict.fromkeys(waiting))
        for run_id in waiting:
            while True:
                run = store.get_run(run_id)
                if run.state.is_terminal:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    click.echo(f"run {run_id} is still {run.state.value} after {timeout:g}s",
                               err=True)
                    sys.exit(EXIT_TIMEOUT)
                time.sleep(0.2)
                store.reopen_if_stale()
            ended.append(run)
    for run in ended:
        reason = run.reason or ""
        if reason and sys.stderr.isatty():
            reason = printable(reason)  # a reason may quote a step's cwd or command
        reason = f": {reason}" if reason else ""
        click.echo(f"run {run.id} {ctx.style(run.state.value, run.state.value)}{reason}",
                   err=True)
    sys.exit(0 if all(run.state.value == "SUCCEEDED" for run in ended) else EXIT_FAILURE)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@pass_ctx
def status(ctx: Context, as_json: bool) -> None:
    """Daemon, queue and run counts at a glance.

    Is the daemon running, is the queue paused, how many runs are in each state.
    """
    from . import reads

    ctx.read(reads.status, as_json=as_json)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@pass_ctx
def review(ctx: Context, as_json: bool) -> None:
    """List the runs awaiting review, oldest first.

    A run with a [workspace] and review = true ends its steps AWAITING_REVIEW when
    they changed something. Look with `minipipe show RUN` and `minipipe diff RUN`,
    then `minipipe approve RUN` or `minipipe reject RUN -m WHY`.
    """
    from . import reads

    ctx.read(reads.review_list, as_json=as_json)


@cli.command()
@click.argument("run_id", type=RUN_ID)
@click.option("--stat", is_flag=True, help="Per-file counts, like `git diff --stat`.")
@click.option("--name-only", is_flag=True,
              help="Only the changed files' names, one per line; a name with a control "
                   "character, a double quote or a backslash is quoted as git quotes it.")
@click.option("-z", "nul", is_flag=True,
              help="With --name-only: each name as it is, ended by NUL (for xargs -0).")
@pass_ctx
def diff(ctx: Context, run_id: int, stat: bool, name_only: bool, nul: bool) -> None:
    """Print what a run changed in its workspace, from the merge-base with its base.

    The commits first, whole (author, committer, the full message: they land too),
    then the diff, which includes files the steps left uncommitted (committed for
    them when the steps ended). Coloured and paged on a terminal ($PAGER,
    else less), plain when piped; control characters are escaped on a terminal.
    """
    from . import reads

    if stat and name_only:
        raise UserError("use either --stat or --name-only")
    if nul and not name_only:
        raise UserError("-z goes with --name-only")
    ctx.read(reads.diff, run_id, stat=stat, name_only=name_only, nul=nul)


@cli.command()
@click.argument("run_id", type=RUN_ID)
@click.option("-m", "--message", metavar="TEXT", help="Why, for the run's events.")
@click.option("--commit", "head", metavar="SHA", required=True,
              help="The change you reviewed: its whole commit id, as `review` and "
                   "`show` print it (required; a prefix is refused). Refused if the "
                   "run's change is another one by now (a cancel and retry records a "
                   "new one).")
@click.option("--unread-ok", is_flag=True,
              help="Approve although the change was recorded cut short (`diff` says so: "
                   "a diff over 8 MiB, over 200 commits or a message over 10,000 "
                   "characters): you accept landing what nobody could read whole.")
@pass_ctx
def approve(ctx: Context, run_id: int, message: str | None, head: str | None,
            unread_ok: bool) -> None:
    """Approve a run awaiting review: land its change, then run its on_approve steps.

    The run is queued; its runner lands exactly the commit that was recorded onto
    the target branch (plan [workspace] land: merge, ff-only or branch-only) and
    ends SUCCEEDED. It lands as you, with your permissions on the repository (when
    root approves: as the repository's owner). If the change conflicts, the target
    is checked out with local changes, or you may not write the repository, nothing
    is changed and the run awaits review again, saying why.
    Reviewers: root and members of reviewer_group (default: admin_group).
    """
    reply = ctx.call("approve", run=run_id, message=message,
                     head=head.lower(), **({"unread_ok": True} if unread_ok else {}))
    click.echo(f"run {run_id}: approved its change {reply['head']}; landing it")


@cli.command()
@click.argument("run_id", type=RUN_ID)
@click.option("-m", "--message", metavar="TEXT", required=True,
              help="Why (required): the submitter reads it in `minipipe show`.")
@pass_ctx
def reject(ctx: Context, run_id: int, message: str) -> None:
    """Reject a run awaiting review: it ends REJECTED and its change never lands.

    Its checkout is removed (after worktree_keep_days). `minipipe retry` runs it
    again from its ref.
    """
    ctx.call("reject", run=run_id, message=message)
    click.echo(f"run {run_id}: rejected")


@cli.command()
@pass_ctx
def pause(ctx: Context) -> None:
    """Stop starting new runs; running runs finish (root and admins only).

    For maintenance: the pause is stored in the DB and survives daemon restarts.
    """
    changed = ctx.call("pause")["changed"]
    click.echo("queue paused" if changed else "queue was already paused")


@cli.command()
@pass_ctx
def resume(ctx: Context) -> None:
    """Start runs again after `minipipe pause` (root and admins only)."""
    changed = ctx.call("resume")["changed"]
    click.echo("queue resumed" if changed else "queue was not paused")


def main() -> NoReturn:
    try:
        cli.main(prog_name="minipipe")
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(0)


if __name__ == "__main__":
    main()
