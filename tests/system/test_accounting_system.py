"""Accounting under real systemd: a run's figures come from its scope's cgroup (v2
files, or the v1 controllers of a hybrid host like the CI's), checked against steps
that burn 1 s of CPU and touch 200 MiB; what the host cannot give is named, not 0."""

from __future__ import annotations

import json

from .conftest import Box

BURN = "import time\nwhile time.process_time() < 1.0: pass"
TOUCH = "b = bytearray(200 * 2**20)\nb[::4096] = b'x' * (len(b) // 4096)"
PLAN = f"""
[[steps]]
id = "burn"
run = {json.dumps(["python3", "-c", BURN])}
[[steps]]
id = "touch"
run = {json.dumps(["python3", "-c", TOUCH])}
"""


def test_a_runs_usage_comes_from_its_scope(service: Box) -> None:
    box = service
    run_id = box.submit(PLAN)
    run = box.wait_state(run_id, "SUCCEEDED", "FAILED", timeout=90)
    assert run["state"] == "SUCCEEDED", run["reason"]
    usage = run["usage"]
    print("usage under systemd:", usage)  # which figures this host's cgroups give
    assert "cgroup" in usage["source"]
    steps = {s["step_id"]: s["usage"] for s in run["steps"]}
    # The scope's CPU: the steps' (each measured on its own), plus the runner's share.
    steps_cpu = sum(s["cpu_seconds"] for s in steps.values())
    assert steps_cpu <= usage["cpu_seconds"] <= steps_cpu * 1.1 + 0.3, (steps, usage)
    assert 200 * 2**20 <= usage["memory_peak_bytes"] <= 300 * 2**20
    for key in ("cpu_seconds", "memory_peak_bytes", "io_read_bytes", "io_write_bytes",
                "tasks_peak"):
        assert (usage[key] is None) == (key in usage["unavailable"]), (key, usage)
    assert 1.0 <= steps["burn"]["cpu_seconds"] <= 1.1
    assert "usage:" in box.minipipe(f"show {run_id}").stdout
