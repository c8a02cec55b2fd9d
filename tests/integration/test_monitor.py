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

from minipipe_svc.monitor.app import MonitorApp
from minipipe_svc.monitor.widgets.events import EventsTable
from minipipe_svc.monitor.widgets.help import HelpScreen
from minipipe_svc.monitor.widgets.output import OutputLog
from minipipe_svc.monitor.widgets.runs import RunsTable
from minipipe_svc.monitor.widgets.steps import StepsPanel, StepsTable
from minipipe_svc.store import SCHEMA_VERSION, Store

from .conftest import ROOT, Instance
from .monitor_fixtures import NOW, build_db


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
        await pilot.press("j", "j", "e", "a", "a", "slash", *"x", "escape", "r", "f", "k")
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
