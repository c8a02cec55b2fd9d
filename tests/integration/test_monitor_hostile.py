"""The monitor shows hostile run text literally: never as markup, never as escape sequences.

Every text of a run (name, phase, step id, command, reason, event kind, output)
is an attacker's: `[/x]` used to crash the monitor for everyone (Rich's
MarkupError), `[link=…]` to forge a link, and `\x1b]0;…\x07` went to the terminal.
The runs come from a real SQLite DB with that text in every field.
"""

from __future__ import annotations

from pathlib import Path

from textual.content import Content
from textual.strip import Strip
from textual.widgets import Input, Static

from minipipe_svc.monitor.app import MonitorApp
from minipipe_svc.monitor.widgets.diff_screen import DiffScreen
from minipipe_svc.monitor.widgets.diff_view import DiffView
from minipipe_svc.monitor.widgets.events import EventsTable
from minipipe_svc.monitor.widgets.output import OutputLog
from minipipe_svc.monitor.widgets.runs import RunsTable
from minipipe_svc.monitor.widgets.steps import StepsPanel, StepsTable
from minipipe_svc.monitor.widgets.workspace import WorkspaceDetail
from minipipe_svc.render import printable
from minipipe_svc.review import write_diff
from minipipe_svc.store import Store

from .monitor_fixtures import CHANGES, HOSTILE, build_hostile_db, in_file, workspace_plan
from .test_monitor import monitor, run_app, settle, until

SIZE = (200, 50)
TERMINAL_CONTROLS = {"\x1b", "\x07", "\x9b", "\r", "\u202e"}


def screen_strips(app: MonitorApp) -> list[Strip]:
    return app.screen._compositor.render_strips()


def assert_screen_is_inert(app: MonitorApp) -> str:
    """Nothing on screen a terminal would act on, no link: returns the screen's text."""
    strips = screen_strips(app)
    for strip in strips:
        for segment in strip:
            assert not TERMINAL_CONTROLS & set(segment.text), repr(segment.text)
            assert segment.style is None or not segment.style.link, segment
    return "\n".join(strip.text for strip in strips)


def row_texts(table, row: int) -> list[str]:
    return [str(cell) for cell in table.get_row_at(row)]


def test_hostile_text_of_every_run_is_shown_literally(tmp_path: Path) -> None:
    app = monitor(build_hostile_db(tmp_path))
    by_id = dict(enumerate(HOSTILE, 1))

    async def scenario(pilot) -> None:
        runs = app.query_one(RunsTable)
        assert sorted(runs.shown) == list(by_id)
        for row, run_id in enumerate(runs.shown):
            text = by_id[run_id]
            shown = printable(text)
            runs.move_cursor(row=row)
            await until(app, pilot, lambda run_id=run_id: app.selected == run_id and any(
                "stdout:" in s.text for s in app.query_one(OutputLog).lines),
                what=f"run {run_id} selected with its output")
            await settle(app, pilot)
            cells = row_texts(runs, row)
            assert cells[1] == printable(text[:28])
            assert cells[3] == shown  # phase
            panel = app.query_one(StepsPanel)
            assert Content.from_markup(panel.border_title).plain == f"Run {run_id} · {shown}"
            steps = app.query_one(StepsTable)
            assert row_texts(steps, 0)[1:3] == [shown, shown]
            detail = str(app.query_one("#step-detail", Static).content)
            assert detail.startswith(f"{shown} [{shown}] ")
            assert f"$ echo {shown}" in detail
            if run_id != len(HOSTILE):  # the last one is still running: no reason yet
                assert detail.endswith(f"\n{shown}")
            events = app.query_one(EventsTable)
            event_rows = [row_texts(events, i) for i in range(events.row_count)]
            assert [str(run_id), shown] in [r[1:3] for r in event_rows]  # the kind
            assert any(r[3] == shown for r in event_rows), event_rows  # step column
            output = [s.text for s in app.query_one(OutputLog).lines]
            logged = printable(in_file(text))
            for stream in ("stdout", "stderr", "minipipe"):
                assert f"{logged} │ {stream}:{logged}" in output
            screen = assert_screen_is_inert(app)
            assert f"Run {run_id} · {shown}" in screen

    run_app(app, scenario, size=SIZE)


def test_markup_in_names_neither_crashes_nor_styles(tmp_path: Path) -> None:
    app = monitor(build_hostile_db(tmp_path))

    async def scenario(pilot) -> None:
        screen = assert_screen_is_inert(app)
        for text in ("[/x]", "[bold red]pwned[/]", "[link=file:///etc/passwd]x[/"):
            assert text in screen
        await pilot.press("e")  # the events of all runs
        await settle(app, pilot)
        kinds = {str(app.query_one(EventsTable).get_row_at(i)[2])
                 for i in range(app.query_one(EventsTable).row_count)}
        assert {printable(text) for text in HOSTILE} <= kinds
        assert_screen_is_inert(app)

    run_app(app, scenario, size=SIZE)


def test_live_updates_of_hostile_cells(tmp_path: Path) -> None:
    """The running run's cells are updated in place each tick: still literal."""
    app = monitor(build_hostile_db(tmp_path), poll=0.05)

    async def scenario(pilot) -> None:
        runs = app.query_one(RunsTable)
        app.data.runs[len(HOSTILE)] = app.data.runs[len(HOSTILE)]._replace(phase="[/x]")
        runs.tick([app.data.runs[len(HOSTILE)]], app.clock())
        await settle(app, pilot)
        row = runs.shown.index(len(HOSTILE))
        assert row_texts(runs, row)[3] == "[/x]"
        assert_screen_is_inert(app)

    run_app(app, scenario, size=SIZE)


def test_a_hostile_filter_and_banner_are_literal(tmp_path: Path) -> None:
    missing = tmp_path / "[/x]\x1b[2J" / "state.db"
    app = monitor(missing)

    async def scenario(pilot) -> None:
        banner = str(app.query_one("#banner", Static).content)
        assert printable(str(missing)) in banner
        box = app.query_one("#filter", Input)
        app.action_filter()
        box.value = "[/x]\x1b"  # pasted: the operator's own text, as Input shows it
        app.action_close_filter()
        await settle(app, pilot)
        title = str(app.query_one("#title", Static).content)
        assert "filter: [/x]\\x1b" in title
        assert_screen_is_inert(app)

    run_app(app, scenario, size=SIZE)


# ---------------------------------------------------------------- workspaces and diffs

def hostile_change(text: str) -> tuple[dict, bytes]:
    """A recorded change whose file name, commit, and diff lines are all `text`."""
    path = f"src/{text}.py"
    changes = {**CHANGES, "files_changed": 1, "commit_count": 1,
               "files": [{"path": path, "old_path": text, "status": "R", "insertions": 1,
                          "deletions": 1, "binary": False}],
               "commits": [{"sha": text, "author": text, "subject": text}]}
    diff = (f"diff --git a/{text} b/{path}\n--- a/{text}\n+++ b/{path}\n"
            f"@@ -1 +1 @@ {text}\n-{text}\n+{text}\n {text}\n").encode()
    return changes, diff


def build_hostile_workspace_db(root: Path) -> Path:
    """One run per HOSTILE string, awaiting review, with that text in its plan's repo
    and ref, its branch and worktree, and everywhere in its change; the last one
    landed, approved by that text."""
    db = root / "state.db"
    with Store.open(str(db)) as store:
        for number, text in enumerate(HOSTILE, 1):
            plan = workspace_plan("x")
            plan["name"] = text
            plan["workspace"].update(repo=f"/srv/{text}", ref=text)
            run_id = store.submit(plan, source=text, submitted_by=text)
            store.start_run(run_id)
            store.workspace_started(run_id, path=f"/w/{text}", branch=text, base_commit=text)
            changes, diff = hostile_change(text)
            store.workspace_changed(run_id, head_commit=text, changes=changes, disk_bytes=1)
            (root / "logs").mkdir(exist_ok=True)
            write_diff(str(root / "logs"), run_id, diff)
            store.await_review(run_id)
            if number == len(HOSTILE):
                store.approve(run_id, by=text)
                store.start_run(run_id)
                store.landed(run_id, commit=text, target=text, mode="merge")
    return db


def test_hostile_workspace_facts_are_literal(tmp_path: Path) -> None:
    app = monitor(build_hostile_workspace_db(tmp_path))
    by_id = dict(enumerate(HOSTILE, 1))

    async def scenario(pilot) -> None:
        runs = app.query_one(RunsTable)
        for row, run_id in enumerate(runs.shown):
            shown = printable(by_id[run_id])
            runs.move_cursor(row=row)
            await until(app, pilot, lambda run_id=run_id: app.selected == run_id,
                        what=f"run {run_id} selected")
            await settle(app, pilot)
            detail = str(app.query_one(WorkspaceDetail).content).splitlines()
            assert f"repo /srv/{shown} @ {shown} (base {printable(by_id[run_id][:10])})" \
                in detail
            assert f"branch {shown} · worktree /w/{shown}" in detail
            if run_id == len(HOSTILE):
                assert detail[0].startswith(f"landed {printable(by_id[run_id][:10])} on "
                                            f"{shown} · approved by {shown}")
            assert_screen_is_inert(app)

    run_app(app, scenario, size=SIZE)


def test_a_hostile_diff_is_shown_literally_and_searched(tmp_path: Path) -> None:
    app = monitor(build_hostile_workspace_db(tmp_path))

    async def scenario(pilot) -> None:
        runs = app.query_one(RunsTable)
        for run_id, text in enumerate(HOSTILE, 1):
            runs.move_cursor(row=runs.shown.index(run_id))
            await until(app, pilot, lambda run_id=run_id: app.selected == run_id,
                        what=f"run {run_id} selected")
            await pilot.press("d")
            screen = app.screen
            assert isinstance(screen, DiffScreen)
            await until(app, pilot, lambda screen=screen: screen.document is not None,
                        what="the diff read")
            lines = screen.query_one(DiffView).document.lines
            _, diff = hostile_change(text)
            for line in diff.decode().split("\n")[:-1]:  # (a newline in `text` splits)
                assert printable(line) in lines, (printable(line), lines)
            assert any(printable(text) in line and "=>" in line for line in lines)  # stat
            title = str(screen.query_one("#diff-title", Static).content)
            assert title == f"Diff · run {run_id} · {printable(text)} · +4 −1, 1 file, 1 commit"
            screen_text = assert_screen_is_inert(app)
            assert f"+{printable(text.split(chr(10))[0])}" in screen_text
            # the operator searches for the hostile text itself: found, shown literally
            needle = printable(text)[:12]
            await pilot.press("slash")
            screen.query_one(Input).value = needle
            await pilot.press("enter")
            await settle(app, pilot)
            status = str(screen.query_one("#diff-status", Static).content)
            assert f"for “{printable(needle)}”" in status
            assert "match 1 of" in status
            assert_screen_is_inert(app)
            await pilot.press("escape")
            assert not isinstance(app.screen, DiffScreen)

    run_app(app, scenario, size=SIZE)
