"""The fault suite, under real systemd: each fault, then nothing lost and every state right.

Faults covered elsewhere under systemd: kill -9 of the daemon, a scope stopped or
SIGKILLed from outside, the slice stopped (test_scopes.py); SIGSTOP and the watchdog
(test_service.py).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import wait_for

from .conftest import OPERATOR, Box, minipipe_box
from .test_scopes import GATES, open_gate, start_gated

# Reads the DB as root, read-only: integrity, states, and events checked against the
# transitions they record.
AUDIT = r"""
import json, sqlite3
db = sqlite3.connect("file:/var/lib/minipipe/state.db?mode=ro", uri=True)
one = lambda sql: db.execute(sql).fetchone()[0]
print(json.dumps({
    "integrity": one("PRAGMA integrity_check"),
    "states": dict(db.execute("SELECT state, count(*) FROM runs GROUP BY state").fetchall()),
    "counted": dict(db.execute("SELECT state, n FROM run_counts WHERE n != 0").fetchall()),
    # Every run: one submit event, and one start (not given back) and one finish event
    # per attempt; an attempt cancelled while it was still queued never started.
    "runs_with_odd_events": db.execute('''
        SELECT r.id FROM runs r WHERE
          (SELECT count(*) FROM events e WHERE e.run_id = r.id AND e.kind = 'run_submitted') != 1
          OR (r.state NOT IN ('PENDING') AND (SELECT count(*) FROM events e
              WHERE e.run_id = r.id AND e.kind = 'run_started') - (SELECT count(*)
              FROM events e WHERE e.run_id = r.id AND e.kind = 'run_requeued') != r.attempt
              - (SELECT count(*) FROM events e WHERE e.run_id = r.id
                 AND e.kind = 'run_finished'
                 AND json_extract(e.detail, '$.reason') LIKE 'cancelled before it started%'))
          OR (r.state NOT IN ('PENDING', 'RUNNING') AND (SELECT count(*) FROM events e
              WHERE e.run_id = r.id AND e.kind = 'run_finished') != r.attempt)
    ''').fetchall(),
    # Every step that ran: as many start events as attempts, a completion if it ended.
    "steps_with_odd_events": db.execute('''
        SELECT s.run_id, s.step_id FROM steps s WHERE s.attempt > 0 AND (
          (SELECT count(*) FROM events e WHERE e.run_id = s.run_id AND e.kind = 'step_started'
             AND e.step_id = s.step_id) != s.attempt
          OR (s.state NOT IN ('PENDING', 'RUNNING') AND (SELECT count(*) FROM events e
             WHERE e.run_id = s.run_id AND e.kind = 'step_completed'
             AND e.step_id = s.step_id) < 1))
    ''').fetchall(),
}))
"""


def audit(box: Box) -> dict:
    return json.loads(box.sh("python3 -", input=AUDIT).stdout)


def assert_consistent(box: Box) -> dict:
    report = audit(box)
    assert report["integrity"] == "ok", report
    assert report["counted"] == report["states"], "the trigger-kept counts drifted"
    assert report["runs_with_odd_events"] == [], report
    assert report["steps_with_odd_events"] == [], report
    return report


def no_process(box: Box, pattern: str) -> bool:
    """No process matches `pattern` (the bracket keeps pgrep's own shell from matching)."""
    return box.sh(f"pgrep -f '[{pattern[0]}]{pattern[1:]}'", check=False).stdout == ""


def runner_pid(box: Box, run_id: int) -> int:
    query = ("import sqlite3; print(sqlite3.connect('file:/var/lib/minipipe/state.db?mode=ro',"
             f" uri=True).execute('SELECT runner_pid FROM runs WHERE id = {int(run_id)}')"
             ".fetchone()[0])")
    return int(box.sh(f'python3 -c "{query}"').stdout)


def configure(box: Box, **overrides: object) -> None:
    config = json.loads(box.sh("cat /etc/minipipe/config.json").stdout)
    box.c.write("/etc/minipipe/config.json", json.dumps({**config, **overrides}, indent=2))
    box.sh("systemctl restart minipipe")


def counts(box: Box) -> dict[str, int]:
    return json.loads(box.minipipe("status --json").stdout)["counts"]


def gated_runs(box: Box, name: str, count: int) -> list[int]:
    """`count` runs that each wait at the gate `name` (one gate for all)."""
    box.sh(f"mkdir -p {GATES} && chmod 1777 {GATES} && rm -f {GATES}/{name}.*")
    plan = (f'name = "{name}"\n[[steps]]\nid = "wait"\nrun = "while [ ! -e '
            f'{GATES}/{name}.open ]; do sleep 0.2; done"\n[[steps]]\nid = "after"\n'
            'run = ["true"]\n')
    return [box.submit(plan) for _ in range(count)]


def test_ten_restarts_during_fifty_running_runs_lose_nothing(service: Box) -> None:
    configure(service, max_concurrent_runs=50)
    ids = gated_runs(service, "restarts", 50)
    wait_for(lambda: counts(service)["RUNNING"] == 50, 120, "50 runs to be running")
    for _ in range(10):
        # Spaced so that systemd's default start limit (5 starts per 10 s), which
        # the unit keeps against crash loops, lets every restart through.
        started = time.monotonic()
        service.sh("systemctl restart minipipe")
        assert counts(service)["RUNNING"] == 50
        time.sleep(max(0.0, 2.6 - (time.monotonic() - started)))
    open_gate(service, "restarts")
    for run_id in ids:
        run = service.wait_state(run_id, "SUCCEEDED", "FAILED", "INTERRUPTED", timeout=120)
        assert run["state"] == "SUCCEEDED", run
    assert_consistent(service)
    adopted = [line for line in service.journal("-u minipipe") if "adopted its live runner"
               in line]
    assert len(adopted) >= 50 * 10, "each restart adopts all 50 runs"


def test_a_killed_runner_ends_its_run_interrupted_and_its_scope(service: Box) -> None:
    run_id = start_gated(service, "runner-kill")
    runner = runner_pid(service, run_id)
    service.sh(f"kill -9 {runner}")
    run = service.wait_state(run_id, "INTERRUPTED")
    assert re.search(rf"runner \(pid {runner}\) was killed by SIGKILL", run["reason"]), run
    wait_for(lambda: service.property(f"minipipe-run-{run_id}.scope", "ActiveState")
             in ("inactive", "failed", ""), 30, "the scope's leftovers to be stopped")
    assert no_process(service, f"{GATES}/runner-kill")
    assert_consistent(service)


def test_a_step_that_daemonizes_does_not_outlive_its_run(service: Box) -> None:
    marker = f"escapee-{uuid.uuid4().hex[:8]}"
    run_id = service.submit(f"""
[[steps]]
id = "fork-a-daemon"
run = "setsid sh -c 'exec -a {marker} sleep 600' </dev/null >/dev/null 2>&1 & echo started"
""")
    run = service.wait_state(run_id, "SUCCEEDED")
    assert run["steps"][0]["state"] == "SUCCEEDED"
    assert no_process(service, marker)
    logs = service.minipipe(f"logs {run_id}").stdout
    assert "killed 1 process(es) the step left running outside its process group" in logs


def test_a_step_ignoring_sigterm_is_still_ended_by_its_timeout(service: Box) -> None:
    configure(service, kill_grace_seconds=1)
    run_id = service.submit("""
[[steps]]
id = "stubborn"
timeout = "2s"
run = "trap '' TERM; while true; do sleep 0.1; done"
""")
    run = service.wait_state(run_id, "TIMED_OUT", timeout=30)
    assert run["steps"][0]["state"] == "TIMED_OUT"
    assert re.fullmatch(r"step stubborn: timed out after 2(\.0)?s", run["reason"]), run
    assert no_process(service, "trap '' TERM")


def test_memory_limit_is_enforced_where_the_host_can(service: Box) -> None:
    controllers = service.sh("cat /sys/fs/cgroup/cgroup.controllers", check=False).stdout
    if "memory" not in controllers.split():
        pytest.skip("LOUD SKIP: no cgroup v2 memory controller in this container (the host "
                    "mounts cgroup v1 hybrid), so MemoryMax is set on the scope but not "
                    "enforced; test_plan_limits_become_scope_properties checks it is set")
    run_id = service.submit("""
[limits]
memory_max = "64M"
[[steps]]
id = "hog"
run = ["python3", "-c", "b = bytearray(512 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096])"]
""")
    run = service.wait_state(run_id, "FAILED", "SUCCEEDED", timeout=60)
    assert run["state"] == "FAILED" and "SIGKILL" in run["reason"], run


def test_a_full_log_disk_still_records_the_run_and_says_so(service: Box) -> None:
    full = "/var/log/minipipe-full"
    # root:minipipe 0750, like the real log dir: the daemon refuses one others may write.
    service.sh(f"mkdir -p {full} && mount -t tmpfs -o size=64k,mode=0750,"
               f"gid=$(getent group minipipe | cut -d: -f3) tmpfs {full}")
    try:
        configure(service, log_dir=full)
        run_id = service.submit('[[steps]]\nid = "talk"\nrun = ["seq", "100000"]\n')
        run = service.wait_state(run_id, "SUCCEEDED", "FAILED", timeout=60)
        assert run["state"] == "SUCCEEDED", run  # the step did nothing wrong
        lost = [e for e in run["events"] if e["kind"] == "log_lines_lost"]
        assert lost and "No space left on device" in lost[0]["detail"]["error"], run["events"]
        shown = service.minipipe(f"show {run_id}").stdout
        assert "No space left on device" in shown
        # The journal, the primary copy, holds every line.
        logs = service.minipipe(f"logs {run_id}").stdout.splitlines()
        printed = [line for line in logs if "seq" not in line]
        assert sum(1 for line in printed if re.search(r"\b100000$", line)) == 1, logs[-5:]
    finally:
        service.restore_service()
        service.sh(f"umount {full}", check=False)
    assert_consistent(service)


def test_a_long_reader_does_not_stop_a_hundred_runs_finishing(service: Box) -> None:
    """A reader holding a read transaction open (as a monitor's poll does, only far
    longer) while 100 runs are recorded: WAL lets every writer through."""
    reader = service.c.argv(
        "python3 -c \"import sqlite3, time; "
        "db = sqlite3.connect('file:/var/lib/minipipe/state.db?mode=ro', uri=True, "
        "isolation_level=None); db.execute('BEGIN'); "
        "db.execute('SELECT count(*) FROM events').fetchone(); "
        "open('/srv/reader.holding', 'w').close(); time.sleep(60)\"", user=OPERATOR)
    service.sh("rm -f /srv/reader.holding && chmod 1777 /srv")
    holder = subprocess.Popen(reader, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: service.sh("test -e /srv/reader.holding", check=False).returncode
                 == 0, 30, "the reader to hold its transaction")
        before = sum(counts(service).values())
        plan = '[[steps]]\nid = "a"\nrun = ["true"]\n[[steps]]\nid = "b"\nrun = ["true"]\n'
        ids = [service.submit(plan) for _ in range(100)]
        for run_id in ids:
            service.wait_state(run_id, "SUCCEEDED", timeout=120)
        assert holder.poll() is None, "the reader was still inside its transaction"
    finally:
        holder.kill()
        holder.wait()
    assert sum(counts(service).values()) == before + 100
    assert_consistent(service)


def test_five_hundred_runs_from_ten_concurrent_submitters_all_finish(service: Box) -> None:
    configure(service, max_concurrent_runs=8)
    before = counts(service)["SUCCEEDED"]
    service.sh("mkdir -p /srv/plans && chmod 1777 /srv/plans")
    service.c.write("/srv/plans/true.toml", '[[steps]]\nid = "a"\nrun = ["true"]\n')
    service.sh("for s in $(seq 10); do "
               "(for i in $(seq 50); do minipipe submit /srv/plans/true.toml || echo FAIL; done"
               " > /srv/plans/submitter-$s.out 2>&1) & done; wait", user=OPERATOR, timeout=600)
    outputs = service.sh("cat /srv/plans/submitter-*.out").stdout.split()
    assert "FAIL" not in outputs
    ids = [int(word) for word in outputs]
    assert len(set(ids)) == 500
    wait_for(lambda: counts(service)["SUCCEEDED"] == before + 500, 600,
             "500 runs to succeed", interval=1.0)
    states = {run["id"]: run["state"] for run in
              json.loads(service.minipipe("ls --all --json").stdout)}
    assert {states[run_id] for run_id in ids} == {"SUCCEEDED"}
    assert_consistent(service)


# ---------------------------------------------------------------- power loss, reboot


@pytest.fixture
def disk_box(tmp_path: Path, deb: Path) -> Iterator[Box]:
    """A container whose disk survives power cuts and reboots."""
    with minipipe_box("minipipe-disk", tmp_path / "console.log", deb,
                      disk=tmp_path / "disk") as booted:
        yield booted


def _reboot_story(box: Box, name: str, cut_power: bool) -> tuple[dict, list[dict]]:
    """One run at its gate, two queued behind it; then the machine goes down and up."""
    configure(box, max_concurrent_runs=1)
    running = start_gated(box, name)
    queued = [box.submit('[[steps]]\nid = "later"\nrun = ["echo", "after the boot"]\n')
              for _ in range(2)]
    assert [box.run(r)["state"] for r in queued] == ["PENDING", "PENDING"]
    if cut_power:
        box.c.power_cut()
    else:
        box.sh("systemctl reboot", check=False)
        box.c.wait_down(timeout=120)
    box.c.boot()
    wait_for(lambda: box.sh("systemctl is-active minipipe", check=False).stdout.strip()
             == "active", 60, "minipipe to start at boot")
    return box.wait_state(running, "INTERRUPTED"), [
        box.wait_state(r, "SUCCEEDED") for r in queued]


def test_power_cut_mid_run(disk_box: Box) -> None:
    interrupted, later = _reboot_story(disk_box, "power", cut_power=True)
    assert "gone when the daemon started (crash, kill or reboot)" in interrupted["reason"]
    assert all(run["state"] == "SUCCEEDED" for run in later)
    assert_consistent(disk_box)


def test_clean_reboot_mid_run(disk_box: Box) -> None:
    interrupted, later = _reboot_story(disk_box, "reboot", cut_power=False)
    # Shutdown stops the run's scope: the runner records why, itself.
    assert "stopped from outside (runner got SIGTERM)" in interrupted["reason"], interrupted
    assert all(run["state"] == "SUCCEEDED" for run in later)
    assert_consistent(disk_box)
