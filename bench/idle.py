#!/usr/bin/env python3
"""The idle daemon: CPU seconds, wake-ups and RSS over a minute with nothing queued.

Starts a private daemon (isolation "none") with the packaged poll interval (5 s)
and watches it from /proc: CPU time (utime + stime), context switches (each is a
wake-up of its one thread) and resident memory. Baseline in the same run: a
`sleep` process over the same time (the floor: zero work, zero wake-ups).

Usage: .venv/bin/python bench/idle.py [--seconds 60]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from minipipe_svc.wake import is_listening  # noqa: E402


def sample(pid: int) -> tuple[float, int, int]:
    """(CPU seconds, context switches, RSS in KiB) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    status = dict(line.split(":", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    switches = int(status["voluntary_ctxt_switches"]) + int(
        status["nonvoluntary_ctxt_switches"])
    return cpu, switches, int(status["VmRSS"].split()[0])


def watch(pid: int, seconds: float) -> tuple[float, int, int]:
    cpu0, sw0, _ = sample(pid)
    time.sleep(seconds)
    cpu1, sw1, rss = sample(pid)
    return cpu1 - cpu0, sw1 - sw0, rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="minipipe-idle-") as tmp:
        config = Path(tmp) / "config.json"
        config.write_text(json.dumps({"db_path": "state.db", "isolation": "none",
                                      "poll_interval_seconds": 5.0}))
        daemon = subprocess.Popen(
            [sys.executable, "-m", "minipipe_svc", "--config", str(config), "daemon"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        floor = subprocess.Popen(["sleep", str(args.seconds + 30)])
        try:
            while not is_listening(str(Path(tmp) / "minipipe.sock")):
                time.sleep(0.05)
            time.sleep(2)  # start-up is not idle
            floor_before = sample(floor.pid)
            cpu, switches, rss = watch(daemon.pid, args.seconds)
            floor_after = sample(floor.pid)
        finally:
            daemon.terminate()
            daemon.wait()
            floor.kill()
            floor.wait()
    print(f"idle daemon over {args.seconds:g} s (poll_interval_seconds 5, isolation none)")
    print(f"  CPU {cpu:.3f} s ({cpu / args.seconds * 100:.2f} %), {switches} wake-ups "
          f"({switches / args.seconds:.2f}/s), RSS {rss / 1024:.1f} MiB (target <= 40 MiB)")
    print(f"  baseline, `sleep` over the same time: CPU "
          f"{floor_after[0] - floor_before[0]:.3f} s, {floor_after[1] - floor_before[1]} "
          f"wake-ups, RSS {floor_after[2] / 1024:.1f} MiB")


if __name__ == "__main__":
    main()
