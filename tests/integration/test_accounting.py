"""What steps and runs consume, checked against steps that burn a known amount of CPU
and touch a known amount of memory (within 10 %), through a private daemon (no
systemd: the kernel's rusage of each step's process tree; the cgroup side is in
tests/system/test_accounting_system.py)."""

from __future__ import annotations

import json
import shlex
import sys

from .conftest import Instance

BURN = "import time\nwhile time.process_time() < 1.0: pass"
TOUCH = "b = bytearray(200 * 2**20)\nb[::4096] = b'x' * (len(b) // 4096)"
PLAN = f"""
[[steps]]
id = "burn"
run = {json.dumps([sys.executable, "-c", BURN])}
[[steps]]
id = "touch"
run = {json.dumps([sys.executable, "-c", TOUCH])}
"""


def test_steps_and_the_run_account_cpu_and_memory(running: Instance) -> None:
    instance = running
    run_id = instance.submit(PLAN, name="usage")
    run = instance.wait_state(run_id, "SUCCEEDED", "FAILED", timeout=60)
    assert run["state"] == "SUCCEEDED", run["reason"]
    steps = {s["step_id"]: s["usage"] for s in run["steps"]}
    assert 1.0 <= steps["burn"]["cpu_seconds"] <= 1.1
    assert 200 * 2**20 <= steps["touch"]["memory_peak_bytes"] <= 220 * 2**20
    assert steps["burn"]["source"] == "rusage"
    assert steps["burn"]["tasks_peak"] is None and "tasks_peak" in steps["burn"]["unavailable"]
    usage = run["usage"]
    assert usage["source"] == "rusage (steps)"  # no scope: the steps' figures
    assert usage["cpu_seconds"] == round(steps["burn"]["cpu_seconds"]
                                         + steps["touch"]["cpu_seconds"], 3)
    assert usage["memory_peak_bytes"] == steps["touch"]["memory_peak_bytes"]
    shown = instance.cli("show", str(run_id)).stdout
    assert "usage:" in shown and "tasks peak n/a" in shown and "memory peak 2" in shown
    listed = json.loads(instance.cli("ls", "--json").stdout)[0]
    assert listed["usage"]["cpu_seconds"] == usage["cpu_seconds"]


def test_what_a_step_double_forked_counts_as_the_steps(running: Instance) -> None:
    """A burner that left the step's tree (its parent exited: the runner, a
    subreaper, inherits it) still counts: the runner reaps it with wait4."""
    instance = running
    burner = shlex.join([sys.executable, "-c", BURN])
    script = json.dumps(f"( {burner} & ); sleep 2")
    run_id = instance.submit(f'[[steps]]\nid = "hide"\nrun = {script}\n', name="hidden")
    run = instance.wait_state(run_id, "SUCCEEDED", "FAILED", timeout=60)
    assert run["state"] == "SUCCEEDED", run["reason"]
    assert 1.0 <= run["steps"][0]["usage"]["cpu_seconds"] <= 1.1
