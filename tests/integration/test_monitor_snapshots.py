"""How the monitor looks: SVG snapshots at 80x24 and 160x48, and the degraded banner.

After a deliberate change of looks, read the diff (pytest writes a report), then
accept with `pytest tests/integration/test_monitor_snapshots.py --snapshot-update`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from minipipe_svc.monitor.app import MonitorApp

from .monitor_fixtures import NOW, build_db, build_review_db


async def settle(pilot) -> None:
    """Workers done, their results drawn, and the tables' sizes settled."""
    for _ in range(3):
        while any(worker.is_running for worker in pilot.app.workers):
            await asyncio.sleep(0.01)
        await pilot.pause()
    await pilot.wait_for_scheduled_animations()
    await pilot.pause(0.2)


def app_for(db: Path) -> MonitorApp:
    # A long poll interval: the screen is taken after explicit refreshes only.
    return MonitorApp(str(db), str(db.parent / "logs"), poll_interval=3600, clock=lambda: NOW)


def test_main_screen_80x24(snap_compare, tmp_path: Path) -> None:
    assert snap_compare(app_for(build_db(tmp_path)), terminal_size=(80, 24), run_before=settle)


def test_main_screen_160x48(snap_compare, tmp_path: Path) -> None:
    assert snap_compare(app_for(build_db(tmp_path)), terminal_size=(160, 48), run_before=settle)


def test_failed_run_selected_160x48(snap_compare, tmp_path: Path) -> None:
    async def select_failed(pilot) -> None:
        await settle(pilot)
        await pilot.press("j", "j", "j")
        await settle(pilot)

    assert snap_compare(app_for(build_db(tmp_path)), terminal_size=(160, 48),
                        run_before=select_failed)


def test_degraded_banner_80x24(snap_compare) -> None:
    missing = Path("/nonexistent/minipipe/state.db")
    assert snap_compare(app_for(missing), terminal_size=(80, 24), run_before=settle)


def test_run_awaiting_review_selected_160x48(snap_compare, tmp_path: Path) -> None:
    async def select_waiting(pilot) -> None:
        await settle(pilot)
        await pilot.press("j")
        await settle(pilot)

    assert snap_compare(app_for(build_review_db(tmp_path)), terminal_size=(160, 48),
                        run_before=select_waiting)


def test_diff_screen_with_a_search_120x36(snap_compare, tmp_path: Path) -> None:
    async def search(pilot) -> None:
        await settle(pilot)
        await pilot.press("j", "d")
        await settle(pilot)
        await pilot.press("slash", *"print", "enter")
        await settle(pilot)

    assert snap_compare(app_for(build_review_db(tmp_path)), terminal_size=(120, 36),
                        run_before=search)
