#!/usr/bin/env python3
"""Run every benchmark in a booted bookworm container and write bench/RESULTS.md.

    sudo python3 bench/run.py            # the full set, ~10 minutes on 2 cores
    sudo python3 bench/run.py --quick    # small sizes, to check the harness
    sudo python3 bench/run.py --only throughput,idle
    sudo python3 bench/run.py --only worktree --output /tmp/fig9.md  # one figure

Builds the .deb from this checkout, boots the system tests' container image
(tests/system/container.py: debootstrap once, then systemd-nspawn --volatile),
installs the package with apt, copies bench/ in and runs bench/suite.py there as a
transient service of the container's systemd (so its own `systemd-run --scope`
baselines live in the container's cgroup tree). Needs root, systemd-nspawn,
debootstrap and nsenter, like the system tests (`bash scripts/test` installs them).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.system.container import Container, build_deb, install_deb, rootfs  # noqa: E402

MONITOR_DB = ROOT / "bench" / "_work" / "monitor-10000x48.db"

# What the throughput figures showed, and what was done about it (kept with the
# numbers, which the table above it re-measures on every run).
THROUGHPUT_ANALYSIS = """\
**Where the time went, and the cut.** Until issue 7 every run paid for
`systemd-run --scope` (a process start) exec'ing `python3 -m minipipe_svc.runner`
(an interpreter start plus the runner's imports, systemd.journal among them): the
"exec'd runners" row, ~150 ms of CPU per run, with the daemon's own share ~2 ms,
PID 1's ~6 ms and the DB's commits ~0.1 ms each (the table above). The biggest cost
was the interpreter, so it went: the daemon now forks each runner from its own,
already-imported process (~0.5 ms), and the child joins its scope itself with one
`StartTransientUnit` over systemd's private socket (no `systemd-run`, no D-Bus
library: `minipipe_svc/dbus.py`), then drops to the run's user. Next in line were
smaller: journald's config re-read per run, ctypes imported per run, a stack walk per
journal line, decoding every systemd signal the runner's connection saw (it sees all
of them), and a `STATUS=` per scheduler pass (each one a PropertiesChanged signal to
every bus client): all cut. What remains per run is the runner's own work (SQLite
transitions, ~10 ms of Python), systemd's scope job (paid by the baseline too) and the
copy-on-write faults of a forked 20 MB process. task-spooler is far ahead because it
has no isolation, no user switch and no durable state: each of its jobs is a fork
and an exec.

**The trust boundary's share.** Since steps run as their submitter, each step's
Popen forks the (daemon-sized) runner instead of a vfork: it cannot vfork with the
`preexec_fn` that enters the cwd as the user (about 1 ms of CPU per run more than a
step started as root; the cwd check itself, with setfsuid, costs microseconds),
roughly 0.5 ms of wall per run at 8 at once on 2 CPUs. Before the boundary (commit
4d076a4, steps as `run_user`, no cwd check) this figure was 1.52x bare
`systemd-run`: compare the first row's ratio with that."""


def render(figures: list[dict], quick: bool) -> str:
    commit = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                            capture_output=True, text=True).stdout.strip() or "unknown"
    cgroup = "v2" if Path("/sys/fs/cgroup/cgroup.controllers").exists() else "v1/hybrid"
    cpus = len([line for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("processor")])
    lines = [
        "# Benchmark results", "",
        "Written by `sudo python3 bench/run.py`" + (" --quick (small sizes!)" if quick else "")
        + f" on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit `{commit}`: inside a booted",
        "Debian bookworm container (systemd-nspawn, systemd 252 as PID 1) with the .deb",
        f"installed by apt. Host: {cpus} CPUs, kernel {platform.release()}, cgroup {cgroup}.",
        "Every baseline was measured in the same run; compare ratios, not absolute times.",
        "",
    ]
    for figure in figures:
        lines += [f"## {figure['title']}", ""]
        if figure["rows"]:
            lines += ["| measure | minipipe | baseline (same run) | ratio | target |",
                      "|---|---:|---:|---:|---|"]
            for row in figure["rows"]:
                lines.append(f"| {row['what']} | {row['ours']} | {row['baseline']} | "
                             f"{row['ratio']} | {row['target']} |")
            lines.append("")
        micro = figure.get("extra", {}).get("micro")
        if micro:
            lines += ["Where one run's time goes, each part timed alone (p50):", "",
                      "| part | ms |", "|---|---:|"]
            lines += [f"| {part} | {value:.2f} |" for part, value in micro.items()]
            lines += ["", THROUGHPUT_ANALYSIS, ""]
        for note in figure["notes"]:
            lines.append(f"- {note}" if not note.startswith(" ") else f"  {note.strip()}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (harness check)")
    parser.add_argument("--only", help="comma-separated figures: submit,latency,throughput,"
                                       "idle,logs,monitor,store,cli,api,worktree,"
                                       "accounting")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "RESULTS.md")
    args = parser.parse_args()
    print("building the .deb ...", flush=True)
    deb = build_deb()
    box = Container(rootfs(), f"minipipe-bench-{uuid.uuid4().hex[:8]}",
                    ROOT / "bench" / "_work" / "console.log")
    (ROOT / "bench" / "_work").mkdir(exist_ok=True)
    print("booting the container ...", flush=True)
    box.boot()
    try:
        install_deb(box, deb)
        box.copy_in(ROOT / "bench", "/root", exclude=("_work", "RESULTS.md"))
        if MONITOR_DB.exists() and not args.quick:
            box.put(MONITOR_DB, "/root/bench-monitor.db")
        suite = ["python3", "/root/bench/suite.py", "--json", "/root/results.json"]
        if args.quick:
            suite.append("--quick")
        if args.only:
            suite += ["--only", args.only]
        # A transient service of the container's systemd, output piped here live.
        command = ["systemd-run", "--wait", "--pipe", "--quiet", "--collect",
                   "--property=PrivateTmp=no", "--setenv=PYTHONUNBUFFERED=1", *suite]
        status = subprocess.run(["nsenter", "-t", str(box.pid), "-a", "--", *command]).returncode
        if status != 0:
            print(f"the suite failed (status {status})", file=sys.stderr)
            return 1
        figures = json.loads(box.sh("cat /root/results.json").stdout)
        if not MONITOR_DB.exists() and not args.quick and box.sh(
                "test -e /root/bench/_work/monitor-10000x48.db", check=False).returncode == 0:
            with open(MONITOR_DB, "wb") as out:  # keep the slow-to-build DB for next time
                subprocess.run(box.argv("cat /root/bench/_work/monitor-10000x48.db"),
                               stdout=out, check=True)
    finally:
        box.shutdown()
    args.output.write_text(render(figures, args.quick))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
