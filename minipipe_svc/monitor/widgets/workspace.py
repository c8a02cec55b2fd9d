"""The selected run's workspace: where its change comes from, how big it is, its review.

Hidden for runs without a [workspace]. The facts are read from the DB when the
selection changes or the run's events arrive (app.sync), never on a bare tick.
Repo, ref, branch, path and reviewer are the run's (or a user's) text: appended
to a Text through `printable`, never read as markup.
"""

from __future__ import annotations

from datetime import datetime

from rich.text import Text
from textual.widgets import Static

from ...model import RunState
from ...render import change_summary, landing_target, printable
from ...store import RunRow
from ..data import WorkspaceFacts

SHORT_SHA = 10


def when(timestamp: str, now: datetime) -> str:
    """`11:58:03` today, else `2026-11-25 11:58`: a wait may last days."""
    if timestamp[:10] == now.strftime("%Y-%m-%d"):
        return timestamp[11:19]
    return f"{timestamp[:10]} {timestamp[11:16]}"


def review_status(facts: WorkspaceFacts, run: RunRow, now: datetime) -> Text:
    row = facts.row
    text = Text()
    if row is not None and row.landed_commit:
        text.append(f"landed {printable(row.landed_commit[:SHORT_SHA])}", style="green")
        # The target, else the branch `ref` names (HEAD: whichever was checked out).
        target = facts.spec.get("target") or facts.spec.get("ref")
        if target and target != "HEAD":
            text.append(f" on {printable(str(target))}")
        if row.approved_by:
            text.append(f" · approved by {printable(row.approved_by)}")
    elif run.state is RunState.AWAITING_REVIEW:
        since = f" since {when(row.awaiting_since, now)}" if row and row.awaiting_since else ""
        text.append(printable(f"awaiting review{since}"), style="bold blue")
    elif run.state is RunState.REJECTED:
        text.append("rejected", style="magenta")
    elif row is not None and row.approved_by:
        text.append(f"approved by {printable(row.approved_by)}", style="green")
    elif row is not None and row.review:
        text.append("review required", style="dim")
    else:
        text.append("no review", style="dim")
    return text


def workspace_text(facts: WorkspaceFacts, run: RunRow, now: datetime) -> Text:
    """Most important first (the pane may be short): the review and the change, the
    warning, then where the change comes from and where it lives."""
    spec, row = facts.spec, facts.row
    changes = row.changes if row is not None else None
    text = Text(no_wrap=True, overflow="ellipsis", end="")
    text.append_text(review_status(facts, run, now))
    text.append(" · ", style="dim")
    if changes:
        text.append(printable(change_summary(changes)), style="bold")
    else:
        text.append("no change recorded yet", style="dim")
    if changes and changes.get("gate") == "advisory":
        text.append("\n⚠ advisory review: the run's user may write the repository, so its "
                    "steps could have changed it without review", style="bold yellow")
    text.append("\nrepo ", style="dim")
    text.append(printable(f"{spec.get('repo')} @ {spec.get('ref')}"))
    if row is not None and row.base_commit:
        text.append(f" (base {printable(row.base_commit[:SHORT_SHA])})")
    text.append("\nlands on ", style="dim")
    text.append(printable(landing_target(spec)),
                style="bold yellow" if spec.get("target") and spec.get("target") != spec.get(
                    "ref") else "")
    if row is not None and row.branch:
        text.append("\nbranch ", style="dim")
        text.append(printable(row.branch))
        if row.path:
            text.append(" · worktree ", style="dim")
            text.append(printable(row.path) + (" (removed)" if row.removed_at else ""))
    return text


class WorkspaceDetail(Static):

    def show(self, facts: WorkspaceFacts | None, run: RunRow | None, now: datetime) -> None:
        if facts is None or run is None:
            if self.has_class("visible"):  # (with no run selected, called every tick)
                self.remove_class("visible")
                self.update("")
            return
        self.add_class("visible")
        self.update(workspace_text(facts, run, now))
