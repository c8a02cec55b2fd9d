#!/usr/bin/env python3
"""Monitor figures at scale: first paint and per-tick cost with 10,000 runs / 1,000,000 events.

Builds (once, cached in bench/_work/) a state DB through the store's own API:
10,000 runs of 48 steps each (about 99 events per run), then makes 50 runs active.
Measures, next to the same queries done naively (a full reload per tick):

- first paint: from starting the app (headless) until the runs table is drawn;
- tick cost: `MonitorData.refresh()` + drawing, while a writer appends step events
  to the 50 active runs;
- idle: CPU seconds of a real `minipipe-monitor` in tmux over 30 s with nothing changing.

Usage: .venv/bin/python bench/monitor.py [--runs 10000] [--steps 48]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if (ROOT / "minipipe_svc").is_dir():  # a checkout; inside the container: the package
    sys.path.insert(0, str(ROOT))

from minipipe_svc.model import RunState, StepState  # noqa: E402
from minipipe_svc.monitor.app import MonitorApp  # noqa: E402
from minipipe_svc.monitor.data import MonitorData  # noqa: E402
from minipipe_svc.monitor.widgets.runs import RunsTable  # noqa: E402
from minipipe_svc.plan import parse_plan  # noqa: E402
from minipipe_svc.store import Store  # noqa: E402

WORK = ROOT / "bench" / "_work"
ACTIVE = 50


def build(db: Path, runs: int, steps: int) -> None:
    text = "".join(f'[[steps]]\nid = "s{i}"\nrun = ["true"]\n' for i in range(steps))
    plan = parse_plan(text.encode(), source="b.toml", fmt="toml", base_dir="/").to_dict()
    with Store.open(str(db)) as store:
        store.conn.execute("PRAGMA synchronous = OFF")  # a throwaway benchmark DB
        for n in range(runs):
            run_id = store.submit({**plan, "name": f"bench-{n}"}, source=None,
                                  submitted_by="bench")
            if n >= runs - ACTIVE:
                continue  # stays PENDING, started later
            store.start_run(run_id)
            for idx in range(steps):
                store.start_step(run_id, idx, "main")
                store.finish_step(run_id, idx, StepState.SUCCEEDED, exit_code=0)
            store.finish_run(run_id, RunState.SUCCEEDED, exit_code=0, output_lines=0)
            if n % 1000 == 999:
                print(f"  built {n + 1} runs, {store.last_event_id()} events", flush=True)


def first_paint(db: Path) -> float:
    async def main() -> float:
        app = MonitorApp(str(db), str(db.parent / "logs"), poll_interval=3600)
        start = time.perf_counter()
        async with app.run_test(size=(160, 48)) as pilot:
            while app.query_one(RunsTable).row_count == 0:
                await pilot.pause(0.001)
            return time.perf_counter() - start

    return asyncio.run(main())


def tick_costs(db: Path, ticks: int) -> tuple[list[float], list[float], list[int]]:
    """(incremental refresh seconds, full reload seconds, events per tick)."""
    stop = threading.Event()

    def writer() -> None:
        with Store.open(str(db)) as store:
            active = [r.id for r in store.running_runs()]
            idx = {run_id: 0 for run_id in active}
            while not stop.is_set():
                # Steady load: every active run finishes one step per half second,
                # about 200 events per 0.5 s tick.
                for run_id in active:
                    if idx[run_id] < 47:
                        store.start_step(run_id, idx[run_id], "main")
                        store.finish_step(run_id, idx[run_id], StepState.SUCCEEDED,
                                          exit_code=0)
                        idx[run_id] += 1
                time.sleep(0.5)

    data = MonitorData(str(db))
    data.refresh()
    thread = threading.Thread(target=writer)
    thread.start()
    incremental, full, sizes = [], [], []
    try:
        for _ in range(ticks):
            time.sleep(0.5)
            start = time.perf_counter()
            update = data.refresh()
            incremental.append(time.perf_counter() - start)
            sizes.append(len(update.events))
            naive = MonitorData(str(db))
            start = time.perf_counter()
            naive.refresh()
            full.append(time.perf_counter() - start)
            naive.close()
    finally:
        stop.set()
        thread.join()
        data.close()
    return incremental, full, sizes


def idle_cpu(db: Path, seconds: float, monitor: str) -> float | None:
    if shutil.which("tmux") is None:
        return None
    session = f"mpbench{os.getpid()}"
    command = f"{monitor} --db-path {db} --poll-interval 2"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "160", "-y", "48",
                    f"cd {ROOT} && {command}"], check=True)
    try:
        time.sleep(5)  # start-up and first paint are not idle
        pid = int(subprocess.run(["tmux", "list-panes", "-t", session, "-F",
                                  "#{pane_pid}"], capture_output=True, text=True).stdout)
        children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True,
                                  text=True).stdout.split()
        target = int(children[0]) if children else pid

        def cpu() -> float:
            fields = Path(f"/proc/{target}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

        before = cpu()
        time.sleep(seconds)
        return (cpu() - before) / seconds
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--ticks", type=int, default=20)
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument("--prebuilt", type=Path, help="a DB built earlier by this script")
    parser.add_argument("--monitor-command", default=f"{sys.executable} -m minipipe_svc.monitor",
                        help="how to start the monitor for the idle figure")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    cached = args.prebuilt or WORK / f"monitor-{args.runs}x{args.steps}.db"
    if not cached.exists():
        print(f"building {cached.name} (once)...", flush=True)
        partial = cached.with_suffix(".building")
        for leftover in WORK.glob(partial.name + "*"):
            leftover.unlink()
        build(partial, args.runs, args.steps)
        partial.rename(cached)
    db = WORK / "monitor-run.db"
    shutil.copyfile(cached, db)
    for leftover in WORK.glob("monitor-run.db-*"):
        leftover.unlink()
    # 50 PENDING runs, nothing running
    idle_quiet = idle_cpu(db, args.idle_seconds, args.monitor_command)
    with Store.open(str(db)) as store:
        for run in list(store.pending_runs(ACTIVE)):
            store.start_run(run.id)
        events = store.last_event_id()
        total = len(store.list_runs(limit=None))
    paints = [first_paint(db) for _ in range(3)]
    incremental, full, sizes = tick_costs(db, args.ticks)
    # 50 RUNNING runs whose durations tick
    idle = idle_cpu(db, args.idle_seconds, args.monitor_command)
    print(f"monitor benchmark: {total} runs, {events} events, {ACTIVE} active")
    print(f"first paint (headless, 160x48)  median {statistics.median(paints) * 1000:7.1f} ms"
          f"  (target <= 1000 ms)")
    print(f"tick, incremental refresh       median {statistics.median(incremental) * 1000:7.2f}"
          f" ms for a median {statistics.median(sizes):.0f} new events")
    print(f"  baseline: full reload per tick median {statistics.median(full) * 1000:7.2f} ms"
          f"  (ratio {statistics.median(full) / statistics.median(incremental):.0f}x)")
    if idle is None or idle_quiet is None:
        print("idle CPU: tmux not installed, not measured")
    else:
        print(f"idle CPU, real terminal (tmux 160x48, {args.idle_seconds:g} s, poll 2 s): "
              f"nothing running {idle_quiet * 100:5.2f} %, 50 running runs (live durations) "
              f"{idle * 100:5.2f} %  (target <= 2 %)")


if __name__ == "__main__":
    main()
