"""Runs under real systemd: scopes, users, limits, journald, and surviving the daemon."""

from __future__ import annotations

import json
import re

from tests.integration.conftest import wait_for

from .conftest import Box

GATES = "/srv/gates"  # outside /tmp: the service (and so every run) has a private /tmp


def gated_plan(name: str, exit_code: int = 0) -> str:
    return f"""
name = "{name}"
[[steps]]
id = "who"
phase = "probe"
run = "id -un; cat /proc/self/cgroup | tail -1; echo 'to stderr' >&2"
[[steps]]
id = "wait"
phase = "work"
run = "touch {GATES}/{name}.started; while [ ! -e {GATES}/{name}.open ]; do sleep 0.1; done"
[[steps]]
id = "end"
phase = "work"
run = "echo ending; exit {exit_code}"
"""


def start_gated(box: Box, name: str, exit_code: int = 0) -> int:
    box.sh(f"mkdir -p {GATES} && chmod 1777 {GATES} && rm -f {GATES}/{name}.*")
    run_id = box.submit(gated_plan(name, exit_code))
    wait_for(lambda: box.sh(f"test -e {GATES}/{name}.started", check=False).returncode == 0,
             60, f"run {run_id} to reach its gate")
    return run_id


def open_gate(box: Box, name: str) -> None:
    box.sh(f"touch {GATES}/{name}.open")


def test_a_run_is_a_scope_in_the_slice_steps_as_the_submitter_lines_in_the_journal(
        service: Box) -> None:
    run_id = start_gated(service, "scoped")
    unit = f"minipipe-run-{run_id}.scope"
    listed = service.sh("systemctl list-units --no-legend --plain 'minipipe-run-*'").stdout
    assert unit in listed
    assert service.property(unit, "Slice") == "minipipe.slice"
    assert service.property(unit, "ActiveState") == "active"
    runner = service.run(run_id)
    assert runner["unit"] == unit
    # Every process in the scope's cgroup (short-lived `sleep`s may be gone by the
    # time ps looks: ps then prints the others and exits 1).
    users = service.sh(f"systemctl show -p ControlGroup --value {unit} | xargs -I{{}} "
                       "sh -c 'cat /sys/fs/cgroup/unified{}/cgroup.procs "
                       "2>/dev/null || cat /sys/fs/cgroup{}/cgroup.procs' | "
                       "paste -sd, | xargs ps -o user= -p", check=False).stdout.split()
    # The runner is root (it records state, sends the journal lines); the steps are
    # the submitter's, dropped just before exec.
    assert users and set(users) == {"root", "alice"}, users
    open_gate(service, "scoped")
    run = service.wait_state(run_id, "SUCCEEDED")
    assert run["exit_code"] == 0
    lines = service.journal(f"MINIPIPE_RUN_ID={run_id} MINIPIPE_STEP_ID=who")
    assert "alice" in lines
    assert any(line.endswith(f"/minipipe.slice/{unit}") for line in lines), lines
    by_unit = service.journal(f"-u {unit}")
    assert "ending" in by_unit and "to stderr" in by_unit
    fields = service.sh(f"journalctl -o export MINIPIPE_RUN_ID={run_id} "
                        "MINIPIPE_STREAM=stderr").stdout
    for expected in (f"MINIPIPE_RUN_ID={run_id}", "MINIPIPE_STEP_ID=who", "MINIPIPE_ATTEMPT=1",
                     "MINIPIPE_STREAM=stderr", "PRIORITY=4", "SYSLOG_IDENTIFIER=minipipe-run",
                     f"_SYSTEMD_UNIT={unit}", "MESSAGE=to stderr"):
        assert expected in fields, expected
    logs = service.minipipe(f"logs {run_id}")
    assert "who | alice" in logs.stdout and "end | ending" in logs.stdout
    assert logs.stderr == ""
    decisions = service.journal("-u minipipe")
    assert any(f"run {run_id} (scoped) started" in line and unit in line for line in decisions)


def test_plan_limits_become_scope_properties(service: Box) -> None:
    service.sh(f"mkdir -p {GATES} && chmod 1777 {GATES} && rm -f {GATES}/limited.*")
    run_id = service.submit(f"""
name = "limited"
[limits]
memory_max = "256M"
cpu_quota = "50%"
tasks_max = 64
runtime_max = "1h"
[[steps]]
id = "wait"
run = "touch {GATES}/limited.started; while [ ! -e {GATES}/limited.open ]; do sleep 0.1; done"
""")
    wait_for(lambda: service.sh(f"test -e {GATES}/limited.started", check=False).returncode == 0,
             60, "the run to start")
    unit = f"minipipe-run-{run_id}.scope"
    assert service.property(unit, "MemoryMax") == str(256 * 1024 * 1024)
    assert service.property(unit, "CPUQuotaPerSecUSec") == "500ms"
    assert service.property(unit, "TasksMax") == "64"
    assert service.property(unit, "RuntimeMaxUSec") == "1h 1min"
    open_gate(service, "limited")
    service.wait_state(run_id, "SUCCEEDED")


def test_kill_9_of_the_daemon_mid_run_keeps_the_run(service: Box) -> None:
    run_id = start_gated(service, "crash", exit_code=7)
    old = service.main_pid()
    service.sh(f"kill -9 {old}")
    wait_for(lambda: service.main_pid() not in (old, 0)
             and service.property("minipipe", "ActiveState") == "active", 30,
             "systemd to restart the daemon")
    assert service.run(run_id)["state"] == "RUNNING"
    assert any(f"run {run_id}: adopted its live runner" in line
               for line in service.journal("-u minipipe"))
    open_gate(service, "crash")
    run = service.wait_state(run_id, "FAILED")
    assert run["exit_code"] == 7
    assert run["reason"] == "step end: exited with status 7"


def test_systemctl_restart_mid_run_keeps_the_run(service: Box) -> None:
    run_id = start_gated(service, "restart")
    service.sh("systemctl restart minipipe")
    assert service.property(f"minipipe-run-{run_id}.scope", "ActiveState") == "active"
    open_gate(service, "restart")
    run = service.wait_state(run_id, "SUCCEEDED")
    assert run["exit_code"] == 0
    assert [s["state"] for s in run["steps"]] == ["SUCCEEDED"] * 3


def test_scope_stopped_from_outside_is_interrupted_with_the_reason(service: Box) -> None:
    run_id = start_gated(service, "outside")
    service.sh(f"systemctl kill minipipe-run-{run_id}.scope")
    run = service.wait_state(run_id, "INTERRUPTED")
    assert "stopped from outside (runner got SIGTERM)" in run["reason"]


def test_scope_killed_hard_is_interrupted_by_the_daemon(service: Box) -> None:
    run_id = start_gated(service, "sigkill")
    service.sh(f"systemctl kill --signal=SIGKILL minipipe-run-{run_id}.scope")
    run = service.wait_state(run_id, "INTERRUPTED")
    assert re.search(r"runner \(pid \d+\) was killed by SIGKILL", run["reason"]), run["reason"]


def test_cancel_all_stops_running_runs(service: Box) -> None:
    first = start_gated(service, "cancel-a")
    out = service.minipipe("cancel --all").stdout
    assert f"run {first}: cancel requested" in out
    run = service.wait_state(first, "CANCELLED")
    assert run["reason"] == "step wait: cancelled by request"
    wait_for(lambda: service.property(f"minipipe-run-{first}.scope", "ActiveState")
             in ("inactive", "failed", ""), 30, "the scope to go away")


def test_stopping_the_slice_stops_every_run_on_purpose(service: Box) -> None:
    first = start_gated(service, "slice-a")
    second = start_gated(service, "slice-b")
    service.sh("systemctl stop minipipe.slice")
    for run_id in (first, second):
        run = service.wait_state(run_id, "INTERRUPTED")
        assert "stopped from outside" in run["reason"]
    assert service.property("minipipe", "ActiveState") == "active", \
        "the scheduler is not in the slice and keeps running"
    later = service.submit('[[steps]]\nid = "a"\nrun = ["true"]\n')
    service.wait_state(later, "SUCCEEDED")


def test_restart_returns_only_when_the_daemon_serves(service: Box) -> None:
    for _ in range(3):
        service.sh("systemctl restart minipipe")
        status = json.loads(service.minipipe("status --json").stdout)
        assert status["daemon_running"] is True


def test_a_working_directory_the_run_user_cannot_enter_is_explained(service: Box) -> None:
    service.c.write("/root/private.toml", '[[steps]]\nid = "a"\nrun = ["true"]\n')
    before = service.minipipe("ls --all --json").stdout
    # root's runs execute as run_user (minipipe), who cannot enter /root: refused.
    submitted = service.minipipe("submit /root/private.toml", user=None, check=False)
    assert submitted.returncode == 2 and submitted.stdout == ""
    assert "user minipipe (whom this run executes as) cannot enter /root" in submitted.stderr
    # alice's run executes as alice: a cwd only root may enter is refused too.
    denied = service.minipipe("submit -", check=False,
                              input='[[steps]]\nid = "a"\nrun = ["true"]\ncwd = "/root"\n')
    assert denied.returncode == 2 and "user alice" in denied.stderr, denied.stderr
    assert service.minipipe("ls --all --json").stdout == before


def test_steps_keep_the_network_the_service_denies_itself(service: Box) -> None:
    """minipipe.service has IPAddressDeny=any for its own cgroup; a run's scope is
    outside it, so a step still opens TCP connections (here over loopback)."""
    box = service
    assert box.property("minipipe", "IPAddressDeny").strip() != ""
    run_id = box.submit(
        '[[steps]]\nid = "net"\nrun = ["python3", "-c", "import socket; s = socket.socket(); '
        "s.bind(('127.0.0.1', 0)); s.listen(); c = socket.create_connection(s.getsockname(), "
        "timeout=5); c.sendall(b'x'); print(s.accept()[0].recv(1))\"]\n")
    run = box.wait_state(run_id, "SUCCEEDED", "FAILED")
    assert run["state"] == "SUCCEEDED", run["reason"]
