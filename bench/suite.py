#!/usr/bin/env python3
"""Every benchmark, run inside the bookworm container against the installed .deb.

Started by bench/run.py (which boots the container, installs the package and writes
bench/RESULTS.md); not meant to run on a workstation: it restarts minipipe.service,
rewrites /etc/minipipe/config.json and wipes the state DB between figures.

Each figure is printed as it is measured, next to its baseline measured in the same
run, and all of them are written as JSON (--json) for RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIG = Path("/etc/minipipe/config.json")
DB = "/var/lib/minipipe/state.db"
LOG_DIR = Path("/var/log/minipipe")
WORK = Path("/var/lib/minipipe-bench")  # writable by the run user (not /tmp: PrivateTmp)
# The package's config as installed, kept aside on first use: figures rewrite CONFIG.
STOCK = Path("/var/lib/minipipe-bench.stock-config.json")
if not STOCK.exists() and CONFIG.exists():
    STOCK.write_text(CONFIG.read_text())
STOCK_CONFIG = json.loads(STOCK.read_text()) if STOCK.exists() else {}

sys.path.append("/usr/lib/minipipe/vendor")  # Textual, for the monitor figure


@dataclass
class Row:
    what: str
    ours: str
    baseline: str = ""
    ratio: str = ""
    target: str = ""


@dataclass
class Figure:
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, what: str, ours: str, baseline: str = "", ratio: str = "",
            target: str = "") -> None:
        self.rows.append(Row(what, ours, baseline, ratio, target))
        line = f"  {what:<46} {ours:>14}"
        if baseline:
            line += f"   baseline {baseline:>14}"
        if ratio:
            line += f"   {ratio}"
        if target:
            line += f"   (target {target})"
        print(line, flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  - {text}", flush=True)


# ---------------------------------------------------------------- helpers


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def ratio(ours: float, base: float) -> str:
    return f"{ours / base:.2f}x" if base > 0 else "-"


def sh(command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, shell=True, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"{command!r} failed: {result.stderr.strip()}")
    return result


def wall(argv: list[str], times: int, before: Callable[[int], None] | None = None,
         stdin: bytes | None = None) -> list[float]:
    """Wall seconds of `times` sequential runs of argv (each must succeed)."""
    results = []
    for i in range(times):
        if before:
            before(i)
        start = time.perf_counter()
        done = subprocess.run(argv, input=stdin, capture_output=True)
        results.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise RuntimeError(f"{argv} failed: {done.stderr.decode(errors='replace')}")
    return results


def reset(**config: object) -> None:
    """Stop the service, start from an empty DB and logs with this config, start again."""
    sh("systemctl stop minipipe")
    for suffix in ("", "-wal", "-shm"):
        with_suffix = Path(DB + suffix)
        if with_suffix.exists():
            with_suffix.unlink()
    for log in LOG_DIR.glob("*"):
        log.unlink()
    CONFIG.write_text(json.dumps({**STOCK_CONFIG, **config}, indent=2))
    sh("systemctl reset-failed minipipe; systemctl start minipipe")


def store():
    from minipipe_svc.store import Store

    return Store.open(DB)


def plan_dict(run: list[str], name: str = "bench") -> dict:
    from minipipe_svc.plan import parse_plan

    text = f'name = "{name}"\n[[steps]]\nid = "s"\nrun = {json.dumps(run)}\n'
    return parse_plan(text.encode(), source="bench.toml", fmt="toml", base_dir="/").to_dict()


def queue(count: int, run: list[str]) -> None:
    """Queue `count` runs through the store's API (fast; the CLI is measured elsewhere)."""
    plan = plan_dict(run)
    with store() as db:
        for _ in range(count):
            db.submit(plan, source=None, submitted_by="bench")


def wait_until(condition: Callable[[], bool], timeout: float, what: str,
               interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}: {counts()}\n" + sh(
                "journalctl -u minipipe --no-pager | tail -30", check=False).stdout)
        time.sleep(interval)


def counts() -> dict[str, int]:
    from minipipe_svc.store import Store

    with Store.open(DB, readonly=True) as db:
        return db.counts()


def main_pid() -> int:
    return int(sh("systemctl show -p MainPID --value minipipe").stdout)


def cpu_seconds(pid: int, children: bool = False) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def status_field(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise KeyError(name)


def journald_pid() -> int:
    return int(sh("systemctl show -p MainPID --value systemd-journald").stdout)


@contextmanager
def cpu_meter() -> Iterator[dict[str, float]]:
    """CPU seconds spent meanwhile by the daemon (with its reaped runners), PID 1, journald."""
    daemon, journald = main_pid(), journald_pid()
    before = (cpu_seconds(daemon), cpu_seconds(daemon, children=True), cpu_seconds(1),
              cpu_seconds(journald))
    result: dict[str, float] = {}
    yield result
    after = (cpu_seconds(daemon), cpu_seconds(daemon, children=True), cpu_seconds(1),
             cpu_seconds(journald))
    result.update(daemon=after[0] - before[0],
                  runners=(after[1] - before[1]) - (after[0] - before[0]),
                  systemd=after[2] - before[2], journald=after[3] - before[3])


# ---------------------------------------------------------------- figures


def submit_cli(quick: bool) -> Figure:
    figure = Figure("0. Submit CLI: wall time of one `minipipe submit plan.toml`")
    n = 30 if quick else 200
    reset()
    sh("minipipe pause")
    plan = WORK / "trivial.toml"
    plan.write_text('[[steps]]\nid = "a"\nrun = ["/bin/true"]\n')
    python = pct(wall(["python3", "-c", "pass"], n), 50)
    empty = pct(wall(["minipipe", "submit", str(plan)], n), 50)
    figure.add("p50, empty queue", ms(empty), f"{ms(python)} python3 -c pass",
               ratio(empty, python), "<= 40 ms")
    clicked = pct(wall(["minipipe", "submit", "--priority", "0", str(plan)], n // 2), 50)
    figure.add("p50 through click (any option, e.g. --priority)", ms(clicked))
    queue(2000 - n - n // 2, ["/bin/true"])
    full = pct(wall(["minipipe", "submit", str(plan)], n), 50)
    figure.add("p50 with 2,000 queued", ms(full), ms(empty) + " empty", ratio(full, empty),
               "flat")
    figure.note("as root on the installed package; pueue's `add` for reference: ~5 ms "
                "empty, ~24 ms with 2,000 queued (its docs, not measured here)")
    return figure


def submit_to_start(quick: bool) -> Figure:
    figure = Figure("1. Submit -> first step started (idle daemon, isolation scope)")
    n = 30 if quick else 200
    reset()
    shutil.rmtree(WORK / "started", ignore_errors=True)
    (WORK / "started").mkdir()
    shutil.chown(WORK / "started", "minipipe", "minipipe")
    latencies = []
    for i in range(n):
        marker = WORK / "started" / str(i)
        plan = WORK / f"touch-{i}.toml"
        plan.write_text(f'[[steps]]\nid = "t"\nrun = ["/usr/bin/touch", "{marker}"]\n')
        start = time.time()
        subprocess.run(["minipipe", "submit", str(plan)], check=True, capture_output=True)
        wait_until(marker.exists, 30, f"run {i} to start", interval=0.001)
        latencies.append(marker.stat().st_mtime_ns / 1e9 - start)
        wait_until(lambda: counts()["RUNNING"] == 0, 30, "the run to end", interval=0.005)
    scope = pct(wall(["systemd-run", "--scope", "--quiet", "--collect", "/usr/bin/touch",
                      str(WORK / "scope-touch")], n), 50)
    imports = pct(wall(["python3", "-c", "import minipipe_svc.runner, systemd.journal"], n), 50)
    floor = scope + imports
    p50, p95, p99 = (pct(latencies, q) for q in (50, 95, 99))
    figure.add("p50", ms(p50), ms(floor) + " floor", ratio(p50, floor), "<= 1.5x floor")
    figure.add("p95", ms(p95), ms(floor) + " floor", ratio(p95, floor))
    figure.add("p99", ms(p99), ms(floor) + " floor", ratio(p99, floor))
    figure.note(f"floor = one bare `systemd-run --scope touch` ({ms(scope)}) + one python3 "
                f"start with the runner's imports ({ms(imports)}), p50 each, same run")
    figure.note("measured from starting `minipipe submit` to the step's file mtime; the "
                "design this replaces polled every 5 s (~2.5 s mean)")
    return figure


def throughput(quick: bool) -> Figure:
    figure = Figure("2. Throughput: one-step runs of /bin/true, 8 at once")
    n = 100 if quick else 1000
    results = {}
    for label, extra in (("forked runners (default)", {}),
                         ("exec'd runners (minipipe_command, the old way)",
                          {"minipipe_command": ["/usr/bin/python3", "-m",
                                                "minipipe_svc.runner"]})):
        reset(max_concurrent_runs=8, **extra)
        sh("minipipe pause")
        queue(n, ["/bin/true"])
        with cpu_meter() as cpu:
            start = time.perf_counter()
            sh("minipipe resume")
            wait_until(lambda: counts()["PENDING"] + counts()["RUNNING"] == 0, 600,
                       f"{n} runs to finish")
            elapsed = time.perf_counter() - start
        if counts()["SUCCEEDED"] != n:
            raise RuntimeError(f"not all runs succeeded: {counts()}\n" + sh(
                "journalctl -u minipipe --no-pager | grep -v 'started: runner\\|ended SUCC' "
                "| tail -30").stdout)
        results[label] = (elapsed, dict(cpu))
    ours = results["forked runners (default)"][0]
    old = results["exec'd runners (minipipe_command, the old way)"][0]
    base_scope = scope_parallel(n)
    base_tsp = tsp_parallel(n)
    figure.add(f"{n} runs, resume -> all SUCCEEDED", f"{ours:.2f} s ({n / ours:.0f}/s)",
               f"{base_scope:.2f} s systemd-run", ratio(ours, base_scope), "<= 2x systemd-run")
    figure.add("  same vs task-spooler (tsp -S 8, no isolation)", f"{ours:.2f} s",
               f"{base_tsp:.2f} s tsp ({n / base_tsp:.0f}/s)", ratio(ours, base_tsp))
    figure.add("  before the cut: runner exec'd per run", f"{old:.2f} s ({n / old:.0f}/s)",
               f"{base_scope:.2f} s systemd-run", ratio(old, base_scope))
    for label, (elapsed, cpu) in results.items():
        per_run = {k: v / n * 1000 for k, v in cpu.items()}
        figure.note(f"CPU per run, {label}: daemon {per_run['daemon']:.1f} ms, runner+step "
                    f"{per_run['runners']:.1f} ms, systemd (PID 1) {per_run['systemd']:.1f} "
                    f"ms, journald {per_run['journald']:.1f} ms; wall {elapsed / n * 1000:.1f}"
                    f" ms per run at 8 at once")
    figure.extra = {"micro": micro_costs(quick)}  # type: ignore[attr-defined]
    return figure


def scope_parallel(n: int) -> float:
    start = time.perf_counter()
    sh(f"seq {n} | xargs -P 8 -I{{}} systemd-run --scope --quiet --collect /bin/true")
    return time.perf_counter() - start


def tsp_parallel(n: int) -> float:
    env = {**os.environ, "TS_SOCKET": "/run/minipipe-bench.tsp", "TS_MAXFINISHED": str(n + 10)}
    subprocess.run(["tsp", "-K"], env=env, capture_output=True)
    subprocess.run(["tsp", "-S", "8"], env=env, check=True, capture_output=True)
    start = time.perf_counter()
    for _ in range(n):
        subprocess.run(["tsp", "/bin/true"], env=env, check=True, capture_output=True)

    def done() -> bool:
        listing = subprocess.run(["tsp", "-l"], env=env, capture_output=True, text=True).stdout
        return sum(" finished " in line for line in listing.splitlines()) >= n

    wait_until(done, 600, "tsp to finish")
    elapsed = time.perf_counter() - start
    subprocess.run(["tsp", "-K"], env=env, capture_output=True)
    return elapsed


def micro_costs(quick: bool) -> dict[str, float]:
    """The parts of one run's cost, each timed on its own (milliseconds)."""
    n = 20 if quick else 100
    code = """
import os, time
from minipipe_svc.plan import Limits
from minipipe_svc.systemd import join_new_scope
times = []
for i in range(COUNT):
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        join_new_scope(900000 + i, Limits(), "bench")
        os._exit(0)
    os.waitpid(pid, 0)
    times.append(time.perf_counter() - start)
times.sort()
print(times[len(times) // 2] * 1000)
"""
    join = float(sh(f"python3 -c '{code.replace('COUNT', str(n))}'").stdout)
    fork = float(sh("python3 -c 'import os, time\n"
                    "t = []\n"
                    f"for _ in range({n}):\n"
                    "    s = time.perf_counter(); p = os.fork()\n"
                    "    if p == 0: os._exit(0)\n"
                    "    os.waitpid(p, 0); t.append(time.perf_counter() - s)\n"
                    "t.sort(); print(t[len(t) // 2] * 1000)'").stdout)
    imports = pct(wall(["python3", "-c", "import minipipe_svc.runner, systemd.journal"], n), 50)
    python = pct(wall(["python3", "-c", "pass"], n), 50)
    scope = pct(wall(["systemd-run", "--scope", "--quiet", "--collect", "/bin/true"], n), 50)
    commit = commit_cost(n * 10)
    return {"fork (python, no exec)": fork, "join a scope over D-Bus (fork + join)": join,
            "systemd-run --scope /bin/true": scope * 1000, "python3 -c pass": python * 1000,
            "python3 start + runner imports": imports * 1000,
            "one DB transition (commit, synchronous=NORMAL)": commit * 1000}


def commit_cost(n: int) -> float:
    from minipipe_svc.model import RunState

    reset()
    sh("minipipe pause")
    queue(n, ["/bin/true"])
    with store() as db:
        ids = [r.id for r in db.list_runs(limit=None)]
        start = time.perf_counter()
        for run_id in ids:
            db.start_run(run_id)
        for run_id in ids:
            db.finish_run(run_id, RunState.SUCCEEDED, exit_code=0)
        return (time.perf_counter() - start) / (2 * len(ids))


def idle(quick: bool) -> Figure:
    figure = Figure("3. Idle daemon: nothing queued")
    seconds = 5 if quick else 60
    reset()
    time.sleep(2)
    env = {**os.environ, "TS_SOCKET": "/run/minipipe-bench-idle.tsp"}
    subprocess.run(["tsp", "true"], env=env, check=True, capture_output=True)
    time.sleep(1)
    tsp = int(sh("pgrep -n -x tsp || pgrep -n ts").stdout.split()[0])
    pid = main_pid()
    before = {p: (cpu_seconds(p), status_field(p, "voluntary_ctxt_switches")
                  + status_field(p, "nonvoluntary_ctxt_switches")) for p in (pid, tsp)}
    time.sleep(seconds)
    after = {p: (cpu_seconds(p), status_field(p, "voluntary_ctxt_switches")
                 + status_field(p, "nonvoluntary_ctxt_switches")) for p in (pid, tsp)}
    rss = {p: status_field(p, "VmRSS") / 1024 for p in after}
    subprocess.run(["tsp", "-K"], env=env, capture_output=True)
    cpu = {p: after[p][0] - before[p][0] for p in after}
    wakes = {p: after[p][1] - before[p][1] for p in after}
    figure.add(f"CPU over {seconds} s", f"{cpu[pid]:.2f} s", f"{cpu[tsp]:.2f} s tsp server")
    figure.add("wake-ups per second (context switches)", f"{wakes[pid] / seconds:.2f}",
               f"{wakes[tsp] / seconds:.2f} tsp server", "",
               "only the watchdog's, every 10 s: 0.10")
    figure.add("RSS", f"{rss[pid]:.1f} MiB", f"{rss[tsp]:.1f} MiB tsp server", "", "<= 40 MB")
    return figure


def log_path(quick: bool) -> Figure:
    from minipipe_svc.journal import count_journal_lines

    figure = Figure("4. Log path: steps printing 100,000 lines each into the journal")
    lines = 20_000 if quick else 100_000
    for parallel in (1, 10):
        reset(max_concurrent_runs=10)
        sh("minipipe pause")
        queue(parallel, ["/usr/bin/seq", str(lines)])
        sh("minipipe resume")
        wait_until(lambda: counts()["RUNNING"] + counts()["PENDING"] == 0, 600,
                   "the printing runs")
        with store() as db:
            runs = db.list_runs(limit=None)
            from minipipe_svc.store import parse_time

            first = min(parse_time(r.started_at) for r in runs)
            last = max(parse_time(r.finished_at) for r in runs)
            # Both counts include minipipe's own lines (step started/ended).
            kept = sum(count_journal_lines(r.id, since=r.created_at) for r in runs)
            written = sum(db.output_lines(r.id) or 0 for r in runs)
        seconds = (last - first).total_seconds()
        total = lines * parallel
        shown = sh(f"minipipe logs {runs[0].id} | wc -l").stdout.strip()
        cat_rate, cat_kept = baseline_cat(lines, parallel)
        figure.add(f"{parallel} step(s) x {lines:,} lines: lines/s through the runner into "
                   "the journal", f"{total / seconds:,.0f}/s", cat_rate)
        figure.add(f"  lines lost (the journal holds {kept:,} of {written:,} written)",
                   f"{written - kept:,}", cat_kept, "", "0, or counted")
        figure.note(f"{parallel} step(s): `minipipe logs {runs[0].id}` printed {shown} lines "
                    f"({lines:,} from the step)")
    return figure


def baseline_cat(lines: int, parallel: int) -> tuple[str, str]:
    """`systemd-cat seq N` (journald's stream path, no minipipe): the rate it writes at
    (journald reads behind it) and how many lines the journal keeps."""
    tag = f"bench-cat-{time.monotonic_ns()}"
    start = time.perf_counter()
    sh(" & ".join([f"systemd-cat -t {tag} seq {lines}"] * parallel) + " & wait")
    seconds = time.perf_counter() - start
    time.sleep(1)
    kept = int(sh(f"journalctl -q -o cat -t {tag} | wc -l").stdout)
    return (f"{lines * parallel / seconds:,.0f}/s written by systemd-cat",
            f"systemd-cat: {lines * parallel - kept:,} lost of {lines * parallel:,}")


def monitor(quick: bool) -> Figure:
    figure = Figure("5. Monitor: 10,000 runs / ~1,000,000 events")
    args = ["--runs", "200", "--steps", "4", "--ticks", "3", "--idle-seconds", "2"] if quick \
        else ["--idle-seconds", "20"]
    prebuilt = Path("/root/bench-monitor.db")
    if prebuilt.exists() and not quick:
        args += ["--prebuilt", str(prebuilt)]
    result = subprocess.run([sys.executable, str(HERE / "monitor.py"), *args,
                             "--monitor-command", "minipipe-monitor"],
                            capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": "/usr/lib/minipipe/vendor"})
    if result.returncode != 0:
        raise RuntimeError(result.stderr)
    for line in result.stdout.splitlines():
        if line.startswith("  built"):
            continue
        print(f"  {line}", flush=True)
        figure.notes.append(line)
    return figure


def store_scale(quick: bool) -> Figure:
    from minipipe_svc.model import RunState

    figure = Figure("6. Store scale: CLI latency with 100,000 finished runs in the DB")
    n, finished = (20, 5_000) if quick else (50, 100_000)
    plan = WORK / "trivial.toml"
    reset()
    sh("minipipe pause")
    commands = {"submit": ["minipipe", "submit", str(plan)], "ls": ["minipipe", "ls"],
                "show RUN": ["minipipe", "show", "1"], "status": ["minipipe", "status"]}
    queue(1, ["/bin/true"])
    empty = {name: pct(wall(argv, n), 50) for name, argv in commands.items()}
    with store() as db:
        db.conn.execute("PRAGMA synchronous = OFF")  # filling a throwaway DB
        plan_data = plan_dict(["/bin/true"])
        for i in range(finished):
            run_id = db.submit(plan_data, source=None, submitted_by="bench")
            db.start_run(run_id)
            db.finish_run(run_id, RunState.SUCCEEDED, exit_code=0)
            if i % 20000 == 19999:
                print(f"  filled {i + 1:,} runs", flush=True)
    full = {name: pct(wall(argv, n), 50) for name, argv in commands.items()}
    for name in commands:
        figure.add(f"`minipipe {name}` p50", ms(full[name]), ms(empty[name]) + " near-empty DB",
                   ratio(full[name], empty[name]), "flat")
    size = sum(Path(DB + s).stat().st_size for s in ("", "-wal") if Path(DB + s).exists())
    figure.note(f"DB with {finished + 1 + n:,} runs: {size / 1e6:.0f} MB")
    return figure


FIGURES: dict[str, Callable[[bool], Figure]] = {
    "submit": submit_cli, "latency": submit_to_start, "throughput": throughput,
    "idle": idle, "logs": log_path, "monitor": monitor, "store": store_scale}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    parser.add_argument("--only", default=",".join(FIGURES), help="comma-separated figures")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    WORK.mkdir(exist_ok=True)
    shutil.chown(WORK, "minipipe", "minipipe")
    (WORK / "trivial.toml").write_text('[[steps]]\nid = "a"\nrun = ["/bin/true"]\n')
    results = []
    try:
        for name in args.only.split(","):
            started = time.perf_counter()
            print(f"== {name}", flush=True)
            figure = FIGURES[name](args.quick)
            print(f"   ({time.perf_counter() - started:.0f} s)", flush=True)
            results.append({"name": name, **asdict(figure),
                            "extra": getattr(figure, "extra", {})})
    finally:
        reset()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
