"""The monitor's pool use (header) and the selected run's usage: live for a running run,
recorded for a finished one, never zeros for what cannot be known. A real daemon
without systemd (no scopes); reading a real scope is tests/system/test_monitor_ssh.py."""

from __future__ import annotations

import os
from pathlib import Path

from textual.widgets import Static

from minipipe_svc.model import RunState, StepState
from minipipe_svc.monitor.app import MonitorApp
from minipipe_svc.monitor.widgets.usage import UsageDetail
from minipipe_svc.store import Store

from .conftest import Instance
from .monitor_fixtures import NOW, plan
from .test_monitor import run_app, select, until
from .test_monitor_hostile import HOSTILE, assert_screen_is_inert

POOLS = {"gpu": 2, "io": 1}


def monitor(db: Path, pools: dict[str, int] | None = None) -> MonitorApp:
    return MonitorApp(str(db), str(db.parent / "logs"), poll_interval=0.2, clock=lambda: NOW,
                      pools=pools)


def title(app: MonitorApp) -> str:
    return str(app.query_one("#title", Static).content)


def usage(app: MonitorApp) -> str:
    widget = app.query_one(UsageDetail)
    return str(widget.content) if widget.has_class("visible") else ""


def gated(instance: Instance, name: str, gate: Path, *extra: str) -> int:
    return instance.submit(f'name = "{name}"\n[[steps]]\nid = "wait"\n'
                           f'run = "while [ ! -e {gate} ]; do sleep 0.05; done"\n', *extra,
                           name=name)


def test_the_header_shows_pool_use_and_a_full_pool_stands_out(instance: Instance) -> None:
    instance.write_config(max_concurrent_runs=4, pools=POOLS)
    instance.start_daemon()
    gate = instance.root / "gate"
    app = monitor(instance.db_path, POOLS)

    async def scenario(pilot) -> None:
        assert "pools gpu 0/2, io 0/1" in title(app)
        runs = [gated(instance, f"gpu-{n}", gate, "--pool", "gpu") for n in range(3)]
        await until(app, pilot, lambda: "pools gpu 2/2, io 0/1" in title(app),
                    what="two of three runs in pool gpu")
        assert sorted(r.state.value for i, r in app.data.runs.items() if i in runs) == [
            "PENDING", "RUNNING", "RUNNING"]  # the third waits for a slot
        text = app.query_one("#title", Static).content
        full = [text.plain[span.start:span.end] for span in text.spans
                if "yellow" in str(span.style)]
        assert full == ["gpu 2/2"]  # io has room: plain
        gate.touch()
        await until(app, pilot, lambda: all(app.data.runs[i].state is RunState.SUCCEEDED
                                            for i in runs), what="the runs to end")
        await until(app, pilot, lambda: "pools gpu 0/2, io 0/1" in title(app),
                    what="the slots freed")

    run_app(app, scenario, size=(160, 48))


def test_no_pools_configured_no_pools_in_the_header(instance: Instance) -> None:
    app = monitor(instance.db_path)

    async def scenario(pilot) -> None:
        assert "pools" not in title(app)

    run_app(app, scenario)


def test_a_run_without_a_scope_has_no_live_figures_then_its_recorded_ones(
        running: Instance) -> None:
    instance = running
    gate = instance.root / "gate"
    app = monitor(instance.db_path)

    async def scenario(pilot) -> None:
        run_id = gated(instance, "busy", gate)
        await until(app, pilot, lambda: run_id in app.data.runs
                    and app.data.runs[run_id].state is RunState.RUNNING, what="RUNNING")
        await select(app, pilot, run_id)
        await until(app, pilot, lambda: usage(app) != "", what="the usage line")
        assert usage(app) == "live figures need a scope (isolation none)"  # not "cpu 0"
        gate.touch()
        await until(app, pilot, lambda: usage(app).startswith("used "), what="recorded usage")
        recorded = app.data.runs[run_id].usage
        assert recorded["source"] == "rusage (steps)"
        assert usage(app).startswith(f"used cpu {recorded['cpu_seconds']:.2f}s · memory peak ")
        assert usage(app).endswith("tasks peak n/a (rusage (steps))")

    run_app(app, scenario, size=(160, 48))


def test_a_runner_outside_the_runs_scope_gives_no_figures(tmp_path: Path) -> None:
    """The DB names the runner's pid; the kernel must put it in the run's own scope
    (here: this test's own process, which is not), or nothing is read."""
    db = tmp_path / "state.db"
    with Store.open(str(db)) as store:
        run_id = store.submit(plan("scoped"), source=None, submitted_by="bob")
        store.start_run(run_id, unit=f"minipipe-run-{run_id}.scope")
        store.set_runner(run_id, os.getpid(), None)
        store.start_step(run_id, 0, "build")
        waiting = store.submit(plan("waiting"), source=None, submitted_by="bob")
    app = monitor(db)

    async def scenario(pilot) -> None:
        await select(app, pilot, run_id)
        await until(app, pilot, lambda: usage(app) != "", what="the usage line")
        assert usage(app) == ("live figures: the run's runner is not in its scope "
                              "(starting or ending)")
        await select(app, pilot, waiting)
        assert usage(app) == ""  # pending: nothing used yet, nothing said

    run_app(app, scenario, size=(160, 48))


def test_hostile_recorded_usage_is_shown_inert(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    with Store.open(str(db)) as store:
        run_id = store.submit(plan("hostile"), source=None, submitted_by="bob")
        store.start_run(run_id)
        store.start_step(run_id, 0, "build")
        store.finish_step(run_id, 0, StepState.FAILED, exit_code=1)
        store.record_usage(run_id, {"cpu_seconds": HOSTILE[0], "memory_peak_bytes": 1e308,
                                    "io_read_bytes": [HOSTILE[1]], "io_write_bytes": -5,
                                    "tasks_peak": {"x": 1}, "source": "".join(HOSTILE)})
        store.finish_run(run_id, RunState.FAILED, exit_code=1)
    app = monitor(db)

    async def scenario(pilot) -> None:
        await select(app, pilot, run_id)
        assert usage(app).startswith("used cpu ? · memory peak ? · read ? · written ? · "
                                     "tasks peak ? ([/x][bold red]pwned[/]")
        assert_screen_is_inert(app)

    run_app(app, scenario, size=(200, 50))
