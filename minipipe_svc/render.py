"""Turning store rows into what the CLI prints: JSON dicts with stable names, and tables.

Pure functions of their inputs (plus "now" for durations, and `stdout_is_terminal`, the
one question asked of the outside), so they are tested exactly.
Everything in a run (its name, phases, step ids, commands, reasons, output) comes from
users; `printable` is what makes such text safe to show on a terminal.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime

from .model import RunState, StepState
from .quantities import format_duration
from .store import parse_time

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: the read commands do not load `typing`
    from collections.abc import Callable
    from typing import Any

    from .store import EventRow, RunRow, StepRow, WorkspaceRow

STATE_COLOURS: dict[str, tuple[str, bool]] = {
    RunState.PENDING.value: ("yellow", False),
    RunState.RUNNING.value: ("cyan", True),
    RunState.SUCCEEDED.value: ("green", False),
    RunState.FAILED.value: ("red", True),
    RunState.CANCELLED.value: ("magenta", False),
    RunState.TIMED_OUT.value: ("red", False),
    RunState.INTERRUPTED.value: ("yellow", True),
    RunState.AWAITING_REVIEW.value: ("blue", True),
    RunState.REJECTED.value: ("magenta", True),
    StepState.SKIPPED.value: ("bright_black", False),
}


# What a terminal acts on instead of showing: C0 controls but TAB, DEL, the C1
# controls, and the bidi embeddings/overrides/isolates that reorder or hide text.
_UNPRINTABLE = [*range(0x00, 0x09), *range(0x0A, 0x20), 0x7F, *range(0x80, 0xA0),
                *range(0x202A, 0x202F), *range(0x2066, 0x206A),
                # and the marks and separators that reorder or break lines too
                0x061C, 0x200E, 0x200F, 0x2028, 0x2029,
                # and every other Unicode format character (category Cf, Unicode 14:
                # zero-width spaces and joiners, BOM, tags that smuggle invisible
                # text), and the Hangul fillers: all drawn as nothing
                0xAD, *range(0x600, 0x606), 0x6DD, 0x70F, 0x890, 0x891, 0x8E2, 0x180E,
                *range(0x200B, 0x200E), *range(0x2060, 0x2065), *range(0x206A, 0x2070),
                0xFEFF, *range(0xFFF9, 0xFFFC), 0x110BD, 0x110CD, *range(0x13430, 0x13439),
                *range(0x1BCA0, 0x1BCA4), *range(0x1D173, 0x1D17B), 0xE0001,
                *range(0xE0020, 0xE0080), 0x115F, 0x1160, 0x3164, 0xFFA0]
_ESCAPES = {code: rf"\x{code:02x}" if code < 0x100 else
            rf"\u{code:04x}" if code < 0x10000 else rf"\U{code:08x}"
            for code in _UNPRINTABLE}
_UNPRINTABLE_CHARS = frozenset(map(chr, _UNPRINTABLE))


def printable(text: str) -> str:
    r"""`text` with every character a terminal would act on shown as its escape.

    C0 controls except TAB (newline and carriage return included), DEL, the C1
    controls U+0080-U+009F, the Unicode bidi controls U+202A-U+202E and
    U+2066-U+2069, the marks U+061C, U+200E, U+200F, the separators U+2028 and
    U+2029, every other format character (zero-width space, BOM, tags) and the
    Hangul fillers become the Python-style escape of their code point: `\xNN`
    below U+0100 (ESC is `\x1b`, NUL `\x00`, 8-bit CSI `\x9b`), `\uNNNN` above
    (RIGHT-TO-LEFT OVERRIDE is `\u202e`), `\UNNNNNNNN` beyond U+FFFF. Everything
    else, TAB and backslashes included, is kept as it is: text that already held the
    four characters `\x1b` looks like an escaped ESC, and the exact text is what a
    pipe or `minipipe logs --raw` gives.
    """
    if _UNPRINTABLE_CHARS.isdisjoint(text):
        return text
    return text.translate(_ESCAPES)


def keep(text: str) -> str:
    """The identity, for where text goes out as it is (a pipe, `--raw`)."""
    return text


def stdout_is_terminal() -> bool:
    """Whether the CLI prints to a terminal, so user text needs `printable`.

    Apart from colour: NO_COLOR turns colours off, never this. Tests replace it.
    """
    return sys.stdout.isatty()


def run_json(run: RunRow) -> dict[str, Any]:
    return {
        "id": run.id, "name": run.name, "state": run.state.value, "phase": run.phase,
        "priority": run.priority, "steps_total": run.steps_total, "steps_done": run.steps_done,
        "attempt": run.attempt, "exit_code": run.exit_code, "reason": run.reason,
        "created_at": run.created_at, "started_at": run.started_at,
        "finished_at": run.finished_at, "unit": run.unit, "submitted_by": run.submitted_by,
        "run_user": run.run_user,
        "plan_source": run.plan_source, "cancel_requested": run.cancel_requested,
        "not_before": run.not_before, "pool": run.pool, "group": run.group_id,
        "usage": run.usage,
        "slot": run.slot if run.state.value == "RUNNING" else None,
    }


def step_json(step: StepRow) -> dict[str, Any]:
    return {
        "step_id": step.step_id, "phase": step.phase, "stage": step.stage,
        "state": step.state.value,
        "exit_code": step.exit_code, "attempt": step.attempt, "started_at": step.started_at,
        "finished_at": step.finished_at, "reason": step.reason, "command": step.command,
        "usage": step.usage,
    }


def event_json(event: EventRow) -> dict[str, Any]:
    return {"id": event.id, "ts": event.ts, "run_id": event.run_id, "step_id": event.step_id,
            "kind": event.kind, "detail": event.detail}


def elapsed(started_at: str | None, finished_at: str | None,
            now: datetime | None = None) -> str:
    """Duration so far (live for running things), or "-" if it never started."""
    start = parse_time(started_at)
    if start is None:
        return "-"
    end = parse_time(finished_at) or now or datetime.now(UTC)
    return format_duration(max(0.0, (end - start).total_seconds()))


def age(timestamp: str | None, now: datetime | None = None) -> str:
    moment = parse_time(timestamp)
    if moment is None:
        return "-"
    seconds = max(0.0, ((now or datetime.now(UTC)) - moment).total_seconds())
    return "now" if seconds < 1 else f"{format_duration(seconds)} ago"


def table(headers: list[str], rows: list[list[str]]) -> list[str]:
    """Left-aligned columns, two spaces apart; the last column is not padded."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        padded = [c.ljust(w) for c, w in zip(cells[:-1], widths[:-1], strict=True)]
        return "  ".join([*padded, cells[-1]]).rstrip()

    return [line(headers), *(line(r) for r in rows)]


def runs_table(runs: list[RunRow], now: datetime | None = None, *,
               shown: Callable[[str], str] = keep,
               waiting: dict[int, list[int]] | None = None) -> tuple[list[str], list[str]]:
    """The `ls` table lines, and each row's state (for colouring).

    `shown` is applied to the user's text (name, phase): `printable` on a terminal.
    A pending run's phase says what it waits for: runs (`waiting`: run id -> the
    runs it waits for that have not ended) or its time.
    """
    waiting = waiting or {}

    def phase(r: RunRow) -> str:
        if r.state.value == "PENDING":
            if waiting.get(r.id):
                return "after " + ",".join(str(i) for i in waiting[r.id])
            if r.not_before and (due := parse_time(r.not_before)) and due > (
                    now or datetime.now(UTC)):
                return "at " + local_time(r.not_before)
        return shown(r.phase or "-")

    grouped = any(r.group_id for r in runs)  # a GROUP column only when a matrix is listed
    rows = [[str(r.id), *([str(r.group_id or "-")] if grouped else []),
             _clip(shown(r.name), 40 if grouped else 30), r.state.value, phase(r),
             f"{r.steps_done}/{r.steps_total}", elapsed(r.started_at, r.finished_at, now),
             age(r.created_at, now)] for r in runs]
    lines = table(["ID", *(["GROUP"] if grouped else []), "NAME", "STATE", "PHASE", "STEPS",
                   "DURATION", "CREATED"], rows)
    return lines, [r.state.value for r in runs]


def phase_text(step: StepRow) -> str:
    """A step's phase, and its stage where that is not the plan's main steps
    (`report (finally)`): [[finally]] and on_approve steps stand apart."""
    stage = getattr(step, "stage", "main")
    return step.phase if stage in ("main", step.phase) else f"{step.phase} ({stage})"


def steps_table(steps: list[StepRow], now: datetime | None = None, *,
                shown: Callable[[str], str] = keep) -> list[str]:
    """The `show` steps table; `shown` is applied to the user's text (`printable`).
    A script's lines are joined by blanks there (a cell of a row is one line, piped
    too); `show --json` has it whole."""
    rows = [[str(s.idx + 1), shown(s.step_id), shown(phase_text(s)), s.state.value,
             str(s.attempt),
             "-" if s.exit_code is None else str(s.exit_code),
             elapsed(s.started_at, s.finished_at, now),
             _clip(shown(" ".join(s.command.strip().split("\n"))), 60)]
            for s in steps]
    return table(["#", "STEP", "PHASE", "STATE", "TRY", "EXIT", "DURATION", "COMMAND"], rows)


def usage_text(usage: dict[str, Any]) -> str:
    """`cpu 1.02s · memory peak 205.0 MiB · read 0 B · written 4.0 KiB (cgroup v2)`;
    what the host could not give says so instead of a zero. A figure that is not a
    number in [0, 2**63) (the DB is read as hostile) shows as `?`, never breaks this."""
    from .reads import size_text

    if not isinstance(usage, dict):
        return "usage of an unknown shape"

    def shown(key: str, label: str, kind: str) -> str:
        value = usage.get(key)
        if value is None:
            return f"{label} n/a"
        if isinstance(value, bool) or not isinstance(value, int | float) or not (
                0 <= value < 2**63):  # NaN, infinities and the absurd too
            return f"{label} ?"
        return f"{label} {value:.2f}s" if kind == "s" else (
            f"{label} {size_text(int(value))}" if kind == "b" else f"{label} {int(value)}")

    parts = [shown("cpu_seconds", "cpu", "s"), shown("memory_peak_bytes", "memory peak", "b"),
             shown("io_read_bytes", "read", "b"), shown("io_write_bytes", "written", "b"),
             shown("tasks_peak", "tasks peak", "n")]
    return " · ".join(parts) + f" ({usage.get('source') or '?'})"


def pool_use(sizes: dict[str, int], running: dict[str, int]) -> dict[str, dict[str, int]]:
    """Each configured pool's size and how many of its slots running runs hold
    (`running`: store.pool_use()); `status` and the monitor's title both show this."""
    return {name: {"size": size, "running": running.get(name, 0)}
            for name, size in sizes.items()}


def pool_fill(pool: dict[str, int]) -> str:
    """`1/2`: slots in use of the pool's size."""
    return f"{pool['running']}/{pool['size']}"


def local_time(timestamp: str) -> str:
    """A stored UTC time as local time, to the minute ("2026-12-01 03:00")."""
    moment = parse_time(timestamp)
    return moment.astimezone().strftime("%Y-%m-%d %H:%M") if moment else timestamp


def event_text(event: EventRow) -> str:
    detail = " ".join(f"{k}={v}" for k, v in event.detail.items())
    step = f" [{event.step_id}]" if event.step_id else ""
    return f"{event.ts}  {event.kind}{step}  {detail}".rstrip()


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


# ---------------------------------------------------------------- workspaces, review


def workspace_json(spec: dict[str, Any] | None, row: WorkspaceRow | None) -> dict[str, Any] | None:
    """A run's workspace: what the plan asked (repo, ref, land, target) and what happened."""
    if spec is None:
        return None
    facts = {"repo": spec.get("repo"), "ref": spec.get("ref"), "land": spec.get("land"),
             "target": spec.get("target")}
    if row is not None:
        facts.update(review=row.review, path=row.path, branch=row.branch,
                     base_commit=row.base_commit, head_commit=row.head_commit,
                     changes=row.changes, disk_bytes=row.disk_bytes,
                     awaiting_since=row.awaiting_since, approved_by=row.approved_by,
                     landed_commit=row.landed_commit, removed_at=row.removed_at)
    return facts


def landing_target(workspace: dict[str, Any]) -> str:
    """Where approving a run lands its change, for a reviewer: `release (merge), not
    the branch it started from`. The plan chooses it; the reviewer must see it."""
    ref, target = workspace.get("ref"), workspace.get("target")
    onto = target or (ref if ref != "HEAD" else "the branch checked out in the repository")
    text = f"{onto} ({workspace.get('land') or 'merge'})"
    if target and target != ref:
        text += f", not {ref}, where the run started"
    return text


def change_summary(changes: dict[str, Any] | None) -> str:
    """`+142 −23, 5 files, 2 commits`, or "-" before the steps ended."""
    if not changes:
        return "-"
    files, commits = changes["files_changed"], changes["commit_count"]
    return (f"+{changes['insertions']} −{changes['deletions']}, {files} file"
            f"{'s' if files != 1 else ''}, {commits} commit{'s' if commits != 1 else ''}")


def diffstat(changes: dict[str, Any], width: int = 80) -> list[str]:
    """`git diff --stat`-like lines from recorded per-file stats."""
    files = changes["files"]
    if not files:
        return [" 0 files changed"]
    names = [(f"{f['old_path']} => {f['path']}" if f.get("old_path") else f["path"])
             + (" ... [name not exact: see the diff]" if f.get("cut") else "") for f in files]
    counts = [None if f["binary"] else f["insertions"] + f["deletions"] for f in files]
    name_width = min(max(len(n) for n in names), max(20, width // 2))
    largest = max([c for c in counts if c] or [1])
    bar_width = max(10, width - name_width - 12)
    scale = min(1.0, bar_width / largest)
    lines = []
    for name, count, entry in zip(names, counts, files, strict=True):
        shown = name if len(name) <= name_width else "..." + name[-(name_width - 3):]
        if count is None:
            lines.append(f" {shown:<{name_width}} | Bin")
            continue
        plus = round(entry["insertions"] * scale) or (1 if entry["insertions"] else 0)
        minus = round(entry["deletions"] * scale) or (1 if entry["deletions"] else 0)
        lines.append(f" {shown:<{name_width}} | {count:>4} {'+' * plus}{'-' * minus}")
    if changes.get("files_truncated"):
        lines.append(f" ... and {max(0, changes['files_changed'] - len(files))} more "
                     "(too many to list)")
    lines.append(f" {change_summary(changes)}")
    return lines


# Before each line of a commit's message or headers: `git apply` reads no indented
# line as a patch, but GNU patch reads one indented by blanks alone ("Patch is
# indented 4 spaces"): a message holding a patch would be applied with the change.
GUTTER = "| "


def commit_lines(changes: dict[str, Any]) -> list[str]:
    """Every recorded commit whole, as `git log --format=fuller` shows it (newest
    first; merges name their parents), with every other header its object holds
    (`encoding`, `gpgsig`, anything else) as it holds it, then what was not recorded.
    Only the `commit <id>` lines start at the left edge, and what commits carry
    follows a GUTTER.
    A reviewer reads these before approving: identities, headers and trailers land
    with the code. Raw text: callers escape it for a terminal."""
    commits = changes.get("commits") or []
    lines: list[str] = []
    for commit in commits:
        lines.append(f"commit {commit.get('sha', '')}")
        parents = commit.get("parents") or []
        if len(parents) > 1:
            lines.append(f"Merge:      {' '.join(parent[:12] for parent in parents)}")
        if "committer" in commit:
            lines.append(f"Author:     {commit['author']}   {commit.get('author_date', '')}")
            lines.append(f"Commit:     {commit['committer']}   "
                         f"{commit.get('committer_date', '')}")
        else:  # recorded by an older minipipe: the author's name and the subject
            lines.append(f"Author:     {commit.get('author', '')}")
        for header in commit.get("headers") or []:
            first, *more = str(header).split("\n")
            lines += [f"Header:     {first}", *(f"{GUTTER:>13}{line}" for line in more)]
        lines.append("")
        message = str(commit.get("message", commit.get("subject", "")))
        lines += [f"    {GUTTER}{line}" for line in message.split("\n")]
        cut = commit.get("cut") or []
        if cut:
            lines.append(f"    (more of this commit's {' and '.join(map(str, cut))} lands "
                         "than minipipe recorded: it keeps 500 characters of an identity, "
                         "10,000 of a message or of the other headers)")
        lines.append("")
    missing = changes.get("commit_count", 0) - len(commits)
    if missing > 0:
        lines.append(f"(and {missing} older commit{'s' if missing != 1 else ''} "
                     "minipipe did not record)")
        lines.append("")
    return lines


def diff_after_commits(data: bytes, changes: dict[str, Any]) -> bytes:
    """The recorded diff without its `commit <id>` line when `commit_lines` just
    showed that commit, whole, first."""
    commits = changes.get("commits") or []
    first = f"commit {commits[0].get('sha', '')}\n".encode() if commits else None
    return data.removeprefix(first) if first and data.startswith(first) else data


def age_since(timestamp: str | None, now: datetime | None = None) -> str:
    """How long ago, without "ago" ("3m05s"), for waiting times."""
    moment = parse_time(timestamp)
    if moment is None:
        return "-"
    return format_duration(max(0.0, ((now or datetime.now(UTC)) - moment).total_seconds()))
