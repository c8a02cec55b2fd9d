#!/usr/bin/env python3
"""Engine figures without systemd: submit CLI time, submit -> start latency, throughput.

Runs a private daemon (isolation "none") in a temp dir and prints each figure next to
a baseline measured in the same run. Usage:

    .venv/bin/python bench/engine.py [--runs 200] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from minipipe_svc.store import Store  # noqa: E402
from minipipe_svc.wake import is_listening  # noqa: E402

TRIVIAL = '[[steps]]\nid = "a"\nrun = ["true"]\n'


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f} ms"


class Bench:
    def __init__(self, root: Path, concurrency: int) -> None:
        self.root = root
        self.config = root / "config.json"
        self.config.write_text(json.dumps({
            "db_path": "state.db", "isolation": "none", "max_concurrent_runs": concurrency,
            "poll_interval_seconds": 5.0}))
        self.plan = root / "trivial.toml"
        self.plan.write_text(TRIVIAL)
        self.cli = [sys.executable, "-m", "minipipe_svc", "--config", str(self.config)]

    def start_daemon(self) -> subprocess.Popen[bytes]:
        daemon = subprocess.Popen([*self.cli, "daemon"], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        sock = str(self.root / "minipipe.sock")
        while not is_listening(sock):
            time.sleep(0.01)
        return daemon

    def submit(self) -> int:
        return int(subprocess.run([*self.cli, "submit", str(self.plan)], check=True,
                                  capture_output=True, text=True).stdout)

    def wait_all_done(self, count: int) -> None:
        with Store.open(str(self.root / "state.db"), readonly=True) as store:
            while store.counts()["SUCCEEDED"] < count:
                time.sleep(0.005)


def timed_parallel(argv: list[str], count: int, parallel: int) -> float:
    start = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(lambda _: subprocess.run(argv, check=True), range(count)))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    # Installed packages ship byte-compiled; make sure a source checkout is too, even
    # when PYTHONDONTWRITEBYTECODE is set, or every runner start pays for compiling.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "minipipe_svc")],
                   check=True, env={k: v for k, v in os.environ.items()
                                    if k != "PYTHONDONTWRITEBYTECODE"})
    with tempfile.TemporaryDirectory(prefix="minipipe-bench-") as tmp:
        bench = Bench(Path(tmp), args.concurrency)
        daemon = bench.start_daemon()
        try:
            # 1. submit CLI wall time and submit -> first step started, one at a time
            submit_times, ids = [], []
            for _ in range(args.runs):
                start = time.perf_counter()
                ids.append(bench.submit())
                submit_times.append(time.perf_counter() - start)
                bench.wait_all_done(len(ids))
            latencies = []
            with Store.open(str(bench.root / "state.db"), readonly=True) as store:
                for run_id in ids:
                    events = {e.kind: e.ts for e in store.events(run_id=run_id)}
                    latencies.append((datetime.fromisoformat(events["step_started"])
                                      - datetime.fromisoformat(events["run_submitted"]))
                                     .total_seconds())
            floor_python = [timed_parallel([sys.executable, "-c", "pass"], 1, 1)
                            for _ in range(50)]
            floor_runner = [timed_parallel([sys.executable, "-c",
                                            "import minipipe_svc.runner"], 1, 1)
                            for _ in range(50)]
            # 2. throughput: N runs queued while paused, timed from resume to all done
            subprocess.run([*bench.cli, "pause"], check=True, capture_output=True)
            for _ in range(args.runs):
                bench.submit()
            start = time.perf_counter()
            subprocess.run([*bench.cli, "resume"], check=True, capture_output=True)
            bench.wait_all_done(2 * args.runs)
            throughput = time.perf_counter() - start
        finally:
            daemon.terminate()
            daemon.wait()
        base_true = timed_parallel(["/bin/true"], args.runs, args.concurrency)
        base_python = timed_parallel([sys.executable, "-c", "import minipipe_svc.runner"],
                                     args.runs, args.concurrency)

    print(f"minipipe engine benchmark (isolation none, {os.cpu_count()} CPUs, "
          f"{args.runs} runs, max_concurrent_runs {args.concurrency})")
    print(f"submit CLI wall time    p50 {ms(percentile(submit_times, 50))}  "
          f"p95 {ms(percentile(submit_times, 95))}")
    print(f"submit -> step started  p50 {ms(percentile(latencies, 50))}  "
          f"p95 {ms(percentile(latencies, 95))}  p99 {ms(percentile(latencies, 99))}")
    print(f"  floor: python3 -c pass          p50 {ms(statistics.median(floor_python))}")
    print(f"  floor: python3 + runner imports p50 {ms(statistics.median(floor_runner))}")
    ratio = percentile(latencies, 50) / statistics.median(floor_runner)
    print(f"  ratio p50 / runner floor        {ratio:.2f}x")
    print(f"{args.runs} trivial runs (paused, then resume): {throughput:.2f} s "
          f"= {args.runs / throughput:.0f} runs/s")
    print(f"  baseline: /bin/true x{args.runs}, {args.concurrency} parallel: {base_true:.2f} s")
    print(f"  baseline: python3 + runner imports x{args.runs}, {args.concurrency} parallel: "
          f"{base_python:.2f} s  (ratio {throughput / base_python:.2f}x)")


if __name__ == "__main__":
    main()
