"""The daemon's promises: runs survive it, it repairs after crashes, reloads safely."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from minipipe_svc.store import Store

from .conftest import Instance, as_user, is_listening, pid_alive, wait_for


def _runner_pid(instance: Instance, run_id: int) -> int:
    with instance.store() as store:
        return wait_for(lambda: store.get_run(run_id).runner_pid, 20, "the runner's pid")


def test_kill_9_daemon_mid_run_and_the_run_still_ends_right(running: Instance) -> None:
    run_id = running.submit(f"""
[[steps]]
id = "wait-for-gate"
run = "{running.gated('exit 7')}"
""")
    running.wait_started()
    running.stop_daemon(signal.SIGKILL)
    running.open_gate()  # the step ends while no daemon is running
    with running.store() as store:
        wait_for(lambda: store.get_run(run_id).state.value == "FAILED", 30,
                 "the runner to record the end on its own")
    running.start_daemon()
    run = running.run(run_id)
    assert (run["state"], run["exit_code"]) == ("FAILED", 7)
    assert run["reason"] == "step wait-for-gate: exited with status 7"


def test_restarted_daemon_adopts_a_live_run(running: Instance) -> None:
    run_id = running.submit(f"""
[[steps]]
id = "wait-for-gate"
run = "{running.gated()}"
[[steps]]
id = "second"
run = ["echo", "after the restart"]
""")
    running.wait_started()
    runner = _runner_pid(running, run_id)
    running.stop_daemon(signal.SIGKILL)
    running.start_daemon()
    wait_for(lambda: "adopted its live runner" in running.daemon_log.read_text(), 10,
             "the adoption to be logged")
    assert pid_alive(runner)
    running.open_gate()
    run = running.wait_state(run_id, "SUCCEEDED")
    assert run["exit_code"] == 0
    assert "after the restart" in running.cli("logs", str(run_id)).stdout
    wait_for(lambda: f"run {run_id} ended SUCCEEDED" in running.daemon_log.read_text(), 10,
             "the adopted runner's end to be noticed")


def test_sigterm_stops_the_daemon_but_not_its_runs(running: Instance) -> None:
    run_id = running.submit(f"""
[[steps]]
id = "a"
run = "{running.gated()}"
""")
    running.wait_started()
    assert running.stop_daemon(signal.SIGTERM) == 0
    assert "1 run(s) keep running" in running.daemon_log.read_text()
    running.open_gate()
    with running.store() as store:
        wait_for(lambda: store.get_run(run_id).state.value == "SUCCEEDED", 30, "the run to end")


def test_kill_9_runner_marks_the_run_interrupted(running: Instance) -> None:
    run_id = running.submit(f"""
[[steps]]
id = "long"
run = "touch {running.root}/started; {running.sleeper(300)}"
[[steps]]
id = "after"
run = ["true"]
""")
    running.wait_started()
    wait_for(running.tagged_pids, 10, "the step's sleeper")
    os.kill(_runner_pid(running, run_id), signal.SIGKILL)
    run = running.wait_state(run_id, "INTERRUPTED")
    assert "was killed by SIGKILL before recording a result" in run["reason"]
    assert "killed" in run["reason"] and "leftover step process" in run["reason"]
    assert [s["state"] for s in run["steps"]] == ["FAILED", "SKIPPED"]
    wait_for(lambda: running.tagged_pids() == [], 10, "the orphaned step to be killed")


def test_runner_gone_while_daemon_down_is_interrupted_on_start(running: Instance) -> None:
    run_id = running.submit(f"""
[[steps]]
id = "long"
run = "touch {running.root}/started; {running.sleeper(300)}"
""")
    running.wait_started()
    runner = _runner_pid(running, run_id)
    running.stop_daemon(signal.SIGKILL)
    os.kill(runner, signal.SIGKILL)
    wait_for(lambda: not pid_alive(runner), 10, "the runner to die")
    running.start_daemon()
    run = running.run(run_id)
    assert run["state"] == "INTERRUPTED"
    assert "was gone when the daemon started" in run["reason"]
    wait_for(lambda: running.tagged_pids() == [], 10, "the orphaned step to be killed")


def test_sighup_with_a_bad_config_keeps_the_old_one(running: Instance) -> None:
    running.config_path.write_text('{"db_path": "state.db", "max_concurrent_runs": "many"}')
    running.daemon.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload failed, keeping the running config" in
             running.daemon_log.read_text(), 10, "the failed reload to be logged")
    assert "'max_concurrent_runs' must be an integer" in running.daemon_log.read_text()
    assert running.daemon.poll() is None
    running.write_config()  # the CLI reads the file too; the daemon must not need it
    run_id = running.submit('[[steps]]\nid = "a"\nrun = ["true"]\n')
    running.wait_state(run_id, "SUCCEEDED")


def test_sighup_with_a_good_config_applies_it(running: Instance) -> None:
    running.write_config(max_concurrent_runs=7)
    running.daemon.send_signal(signal.SIGHUP)
    wait_for(lambda: "config reloaded: up to 7 runs" in running.daemon_log.read_text(), 10,
             "the reload")


def test_second_daemon_on_the_same_db_refuses_to_start(running: Instance) -> None:
    second = subprocess.run(
        [sys.executable, "-m", "minipipe_svc", "--config", str(running.config_path), "daemon"],
        capture_output=True, text=True, timeout=30, **as_user(running.user, running.root))
    assert second.returncode == 1
    assert "another minipipe daemon already runs" in second.stderr
    assert running.daemon.poll() is None


def test_two_hundred_runs_from_four_concurrent_submitters(instance: Instance) -> None:
    instance.write_config(max_concurrent_runs=8)
    instance.start_daemon()
    plan = instance.plan("trivial", '[[steps]]\nid = "a"\nrun = ["true"]\n')

    def submit_fifty(_worker: int) -> list[int]:
        return [int(instance.cli("submit", plan).stdout) for _ in range(50)]

    with ThreadPoolExecutor(4) as pool:
        ids = [i for batch in pool.map(submit_fifty, range(4)) for i in batch]
    assert len(set(ids)) == 200
    with instance.store() as store:
        wait_for(lambda: store.counts()["SUCCEEDED"] == 200, 300, "200 runs to succeed",
                 interval=0.5)
        counts = store.counts()
        assert counts["SUCCEEDED"] == 200 and sum(counts.values()) == 200
        assert store.integrity_check() == "ok"
        events = store.events(limit=10_000)
    kinds = [e.kind for e in events]
    # every run: submitted, started, step started, step completed, finished
    for kind in ("run_submitted", "run_started", "step_started", "step_completed",
                 "run_finished"):
        assert kinds.count(kind) == 200, kind


def test_auto_cleanup_deletes_old_finished_runs_and_their_logs(instance: Instance) -> None:
    instance.start_daemon()
    run_id = instance.submit('[[steps]]\nid = "a"\nrun = ["echo", "x"]\n')
    instance.wait_state(run_id, "SUCCEEDED")
    log_file = instance.root / "logs" / f"run-{run_id}.log"
    assert log_file.exists()
    instance.stop_daemon()
    instance.write_config(auto_cleanup_completed_runs=True, completed_run_retention_days=0)
    instance.start_daemon()
    wait_for(lambda: "cleanup: deleted 1 finished run(s)" in instance.daemon_log.read_text(),
             10, "the cleanup")
    assert not log_file.exists()
    missing = instance.cli("show", str(run_id), check=False)
    assert missing.returncode == 2 and f"no run with id {run_id}" in missing.stderr


def test_submit_wakes_the_daemon_without_waiting_for_a_poll(instance: Instance) -> None:
    instance.write_config(poll_interval_seconds=3600)
    instance.start_daemon()
    run_id = instance.submit('[[steps]]\nid = "a"\nrun = ["true"]\n')
    # With an hour between polls, only the wake-up ping can have started it.
    instance.wait_state(run_id, "SUCCEEDED", timeout=30)


def test_the_runner_does_not_inherit_the_service_managers_variables(instance: Instance,
                                                                     tmp_path: Path) -> None:
    instance.start_daemon()
    env_file = instance.root / "env"
    run_id = instance.submit(f'[[steps]]\nid = "a"\nrun = "env > {env_file}"\n')
    instance.wait_state(run_id, "SUCCEEDED")
    names = {line.split("=", 1)[0] for line in env_file.read_text().splitlines()}
    assert {"MINIPIPE_RUN_ID", "MINIPIPE_STEP_ID", "MINIPIPE_ATTEMPT"} <= names
    assert not names & {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"}


def test_daemon_started_with_notify_variables_does_not_pass_them_on(tmp_path: Path) -> None:
    instance = Instance(tmp_path)
    env_file = tmp_path / "env"
    log = open(instance.daemon_log, "a")  # noqa: SIM115
    options = as_user(instance.user, instance.root)
    service_only = {"NOTIFY_SOCKET": str(tmp_path / "nobody-listens"),
                    "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1", "JOURNAL_STREAM": "8:1",
                    "INVOCATION_ID": "0" * 32, "STATE_DIRECTORY": "/var/lib/minipipe",
                    "CREDENTIALS_DIRECTORY": "/run/credentials/minipipe.service"}
    options["env"].update(service_only)
    daemon = subprocess.Popen(
        [sys.executable, "-m", "minipipe_svc", "--config", str(instance.config_path), "daemon"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **options)
    try:
        wait_for(lambda: is_listening(str(tmp_path / "minipipe.sock")), 30, "the daemon")
        run_id = instance.submit(f'[[steps]]\nid = "a"\nrun = "env > {env_file}"\n')
        instance.wait_state(run_id, "SUCCEEDED")
        names = {line.split("=", 1)[0] for line in env_file.read_text().splitlines()}
        assert not names & set(service_only), names & set(service_only)
    finally:
        daemon.terminate()
        daemon.wait(30)


def test_without_a_daemon_submit_says_so_and_the_queue_waits_for_it(instance: Instance) -> None:
    plan = instance.plan("p", '[[steps]]\nid = "a"\nrun = ["true"]\n')
    refused = instance.cli("submit", plan, check=False)
    assert refused.returncode == 1 and refused.stdout == ""
    assert "the minipipe daemon is not running" in refused.stderr
    instance.start_daemon()
    instance.cli("pause")
    run_id = int(instance.cli("submit", plan).stdout)
    instance.stop_daemon()
    assert instance.run(run_id)["state"] == "PENDING"  # reads need no daemon
    instance.start_daemon()
    instance.cli("resume")
    instance.wait_state(run_id, "SUCCEEDED")
    with Store.open(str(instance.db_path), readonly=True) as store:
        assert json.loads(json.dumps(store.counts()))["SUCCEEDED"] == 1


def _api(path: str, payload: bytes, *, read: bool = True) -> dict[str, object] | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)  # blocking: waits while the daemon's backlog is full
        sock.settimeout(30)
        # The daemon may refuse the rest (too large): its reply is still there.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(payload)
        if not read:
            return None
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
        return json.loads(reply)
    finally:
        sock.close()


def test_garbage_on_the_api_socket_gets_clear_errors_and_changes_nothing(
        running: Instance) -> None:
    path = str(running.root / "minipipe.sock")
    os.chmod(path, 0o666)  # this test speaks to it as root, i.e. as the daemon's admin
    cases = {
        b"\n": "bad_request", b"not json\n": "bad_request", b"[1, 2]\n": "bad_request",
        b'{"v": 1, "op": "drop_tables"}\n': "bad_request",
        b'{"v": 99, "op": "ping"}\n': "bad_request",
        b'{"v": 1, "op": "retry", "run": "1; DROP TABLE runs"}\n': "bad_request",
        b'{"v": 1, "op": "cancel", "run": 424242}\n': "no_such_run",
        b'{"v": 1, "op": "submit", "plan": 5, "source": "x", "cwd": "/"}\n': "bad_request",
        b'{"v": 1, "op": "submit", "plan": "", "source": "x", "cwd": "relative"}\n':
            "bad_request",
        b"\xff\xfe" * 10 + b"\n": "bad_request",
        b"[" * 100_000 + b"\n": "bad_request",
        b"x" * (5 * 1024 * 1024): "too_large",
    }
    for payload, code in cases.items():
        reply = _api(path, payload)
        assert reply is not None and reply["ok"] is False and reply["error"] == code, (
            payload[:40], reply)
    # Clients that connect and hang up, or never finish: the daemon keeps serving.
    for _ in range(300):
        _api(path, b'{"v": 1, "op": "pi', read=False)
    # More idle connections than one user may hold: the others' requests still pass.
    idle = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(100)]
    for sock in idle:
        sock.connect(path)
    try:
        # (The daemon accepts them as its loop gets to them: under load, a ping may
        # still be served before the last idle one is taken.)
        wait_for(lambda: (_api(path, b'{"v": 1, "op": "ping"}\n') or {}).get("error")
                 == "busy", 30, "a request refused as busy")
        run_id = running.submit('[[steps]]\nid = "a"\nrun = ["echo", "still here"]\n')
        running.wait_state(run_id, "SUCCEEDED")
    finally:
        for sock in idle:
            sock.close()
    # The daemon drops the idle clients above (they hung up) as its loop gets to them.
    wait_for(lambda: (_api(path, b'{"v": 1, "op": "ping"}\n') or {}).get("ok") is True,
             30, "the daemon to serve pings again")
    slow = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    slow.connect(path)
    slow.sendall(b'{"v": 1, "op": "ping"')  # and never the end of the line
    slow.settimeout(30)
    assert json.loads(slow.recv(4096))["error"] == "timeout"
    slow.close()
    assert running.daemon.poll() is None
    with running.store() as store:
        assert store.integrity_check() == "ok"
        assert store.counts()["SUCCEEDED"] == 1 and sum(store.counts().values()) == 1


def test_a_long_write_lock_is_survived_and_retried(running: Instance) -> None:
    running.write_config(poll_interval_seconds=0.5, max_concurrent_runs=1)
    running.stop_daemon()
    running.start_daemon()
    first = running.submit(f'[[steps]]\nid = "a"\nrun = "{running.gated()}"\n')
    second = running.submit('[[steps]]\nid = "a"\nrun = ["true"]\n')  # waits for the slot
    running.wait_started()
    with running.store() as store:
        runner_pid = store.get_run(first).runner_pid
    holder = sqlite3.connect(running.db_path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # longer than the daemon's 10 s busy timeout
    try:
        # The runner dies: recording that (and starting the next run) needs a write.
        os.kill(runner_pid, signal.SIGKILL)
        wait_for(lambda: "scheduler pass failed, retrying" in running.daemon_log.read_text(),
                 40, "the daemon to hit the lock")
        assert running.daemon.poll() is None, "the daemon must survive a locked DB"
        refused = running.cli("cancel", str(second), check=False)  # an API write meanwhile
        assert refused.returncode == 1 and "locked" in refused.stderr, refused.stderr
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert running.wait_state(first, "INTERRUPTED")["reason"].startswith("runner (pid")
    running.wait_state(second, "SUCCEEDED")
    running.open_gate()


def test_a_runner_waits_out_a_lock_longer_than_the_daemons(running: Instance) -> None:
    run_id = running.submit(f'[[steps]]\nid = "a"\nrun = "{running.gated("exit 4")}"\n')
    running.wait_started()
    holder = sqlite3.connect(running.db_path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        running.open_gate()  # the step ends now; its runner cannot write for 12 s
        time.sleep(12)  # longer than the 10 s that the daemon and the CLI wait
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    run = running.wait_state(run_id, "FAILED")
    assert (run["exit_code"], run["reason"]) == (4, "step a: exited with status 4")


def test_forked_runners_hold_nothing_of_the_daemon(running: Instance) -> None:
    """A forked runner keeps no copy of the daemon's lock, socket or DB descriptors."""
    run_id = running.submit(f"""
[[steps]]
id = "wait-for-gate"
run = "{running.gated()}"
""")
    running.wait_started()
    runner = _runner_pid(running, run_id)
    assert Path(f"/proc/{runner}/comm").read_text().strip() == "minipipe-runner"
    held = {os.readlink(f"/proc/{runner}/fd/{fd}") for fd in os.listdir(f"/proc/{runner}/fd")}
    assert not any(path.endswith((".lock", ".sock")) or "socket:" in path for path in held), held
    # The daemon's single-instance lock dies with it, although the runner lives on.
    running.stop_daemon(signal.SIGKILL)
    running.start_daemon()
    running.open_gate()
    assert running.wait_state(run_id, "SUCCEEDED")


def test_minipipe_command_runs_the_runner_as_a_command(instance: Instance) -> None:
    instance.write_config(minipipe_command=[sys.executable, "-m", "minipipe_svc.runner"])
    instance.start_daemon()
    run_id = instance.submit(f"""
[[steps]]
id = "wait-for-gate"
run = "{instance.gated('echo exec path')}"
""")
    instance.wait_started()
    cmdline = Path(f"/proc/{_runner_pid(instance, run_id)}/cmdline").read_bytes().split(b"\0")
    assert cmdline[1:4] == [b"-m", b"minipipe_svc.runner", b"--db-path"]
    instance.open_gate()
    instance.wait_state(run_id, "SUCCEEDED")
    assert "exec path" in instance.cli("logs", str(run_id)).stdout


def test_a_root_daemon_refuses_isolation_none(tmp_path: Path) -> None:
    """Without a scope a root daemon's steps would share its uid or run as root."""
    if os.geteuid() != 0:
        pytest.skip("LOUD SKIP: the refusal is about root, and these tests run as a user")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"db_path": "state.db", "isolation": "none"}))
    result = subprocess.run([sys.executable, "-m", "minipipe_svc", "--config", str(config),
                             "daemon"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert 'refusing to run as root with isolation "none"' in result.stderr
    assert not (tmp_path / "state.db").exists()


def test_a_broken_db_makes_the_daemon_retry_once_a_second_not_spin(instance: Instance) -> None:
    """A pass that fails (here: a column gone) is retried after a second, even while an
    exited runner's pidfd would wake the loop at once, again and again."""
    instance.start_daemon()
    run_id = instance.submit(f'[[steps]]\nid = "a"\nrun = "{instance.sleeper(1)}"\n')
    instance.wait_state(run_id, "RUNNING")
    conn = sqlite3.connect(instance.db_path)
    conn.execute("ALTER TABLE runs DROP COLUMN umask")
    conn.commit()
    conn.close()
    time.sleep(4)  # the runner exits within it; its pidfd stays readable
    failures = instance.daemon_log.read_text().count("scheduler pass failed")
    assert 1 <= failures <= 8, failures
    assert instance.daemon is not None and instance.daemon.poll() is None


def test_a_db_that_cannot_be_reopened_after_a_fork_is_retried(instance: Instance) -> None:
    """The daemon closes its connection around fork() (a runner's start) and reopens
    it after. If that reopen fails, the runner it started is still watched, the
    passes back off and retry, and nothing dies on a closed connection (it did: a
    traceback from the loop's next wait, the daemon gone)."""
    instance.start_daemon()
    os.chmod(instance.db_path, 0)  # (as its owner, the daemon: the reopen fails)
    try:
        run_id = instance.submit('[[steps]]\nid = "a"\nrun = "true"\n')
        wait_for(lambda: "cannot reopen the state DB" in instance.daemon_log.read_text(), 30,
                 "the reopen to fail")
        time.sleep(1.5)  # passes fail and back off meanwhile
        assert instance.daemon is not None and instance.daemon.poll() is None, (
            instance.daemon_log.read_text()[-3000:])
    finally:
        os.chmod(instance.db_path, 0o640)
    run = instance.wait_state(run_id, "SUCCEEDED", "FAILED", "INTERRUPTED")
    assert run["state"] in ("SUCCEEDED", "FAILED", "INTERRUPTED")
    later = instance.submit('[[steps]]\nid = "a"\nrun = "true"\n')
    assert instance.wait_state(later, "SUCCEEDED", "FAILED")["state"] == "SUCCEEDED"
    assert "Traceback" not in instance.daemon_log.read_text()
