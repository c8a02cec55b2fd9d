"""The benchmark harness itself, at small sizes, so it cannot rot between runs.

No figure is judged here (timings belong in bench/RESULTS.md, not in tests): this
checks that every figure is measured, next to its baseline, on the installed package.
"""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import ROOT, Box, minipipe_box


def test_every_benchmark_figure_is_measured_in_quick_mode(tmp_path: Path, deb: Path) -> None:
    # A container of its own: the suite wipes the DB and rewrites the config.
    with minipipe_box("minipipe-bench", tmp_path / "console.log", deb) as service:
        check_quick_suite(service)


def check_quick_suite(service: Box) -> None:
    service.c.copy_in(ROOT / "bench", "/root", exclude=("_work", "RESULTS.md"))
    # Like bench/run.py: a transient service, inside the container's cgroup tree.
    run = service.sh("systemd-run --wait --pipe --quiet --collect --property=PrivateTmp=no "
                     "python3 /root/bench/suite.py --quick --json /root/results.json",
                     check=False, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    figures = {figure["name"]: figure for figure in
               json.loads(service.sh("cat /root/results.json").stdout)}
    assert list(figures) == ["submit", "latency", "throughput", "idle", "logs", "monitor",
                             "store", "cli", "api", "worktree", "accounting"]
    for name in ("submit", "latency", "throughput", "idle", "logs", "store", "cli", "api",
                 "worktree", "accounting"):
        rows = figures[name]["rows"]
        assert rows and all(row["ours"] for row in rows), figures[name]
        assert any(row["baseline"] for row in rows), f"{name} has no baseline"
    assert set(figures["throughput"]["extra"]["micro"]) >= {
        "fork (python, no exec)", "join a scope over D-Bus (fork + join)",
        "systemd-run --scope /bin/true", "python3 start + runner imports"}
    assert any("first paint" in note for note in figures["monitor"]["notes"])
    assert any("cgroup" in note for note in figures["accounting"]["notes"])  # it was on
    # The suite leaves the service as it found it: stock config, empty queue, running.
    assert service.sh("systemctl is-active minipipe").stdout.strip() == "active"
