"""Runs end to end: a real daemon, real runners, real step processes, the real CLI."""

from __future__ import annotations

import json
import time
from pathlib import Path

from minipipe_svc.logs import read_log

from .conftest import Instance, pid_alive, wait_for

HELLO = Path(__file__).resolve().parent.parent.parent / "examples" / "hello.toml"


def test_submit_runs_to_success_with_its_output(running: Instance) -> None:
    run_id = int(running.cli("submit", str(HELLO)).stdout)
    run = running.wait_state(run_id, "SUCCEEDED")
    assert (run["exit_code"], run["steps_done"], run["steps_total"]) == (0, 3, 3)
    assert [s["state"] for s in run["steps"]] == ["SUCCEEDED"] * 3
    assert run["phase"] == "verify"
    logs = running.cli("logs", str(run_id)).stdout
    assert "greet | hello from minipipe" in logs
    assert "count | tick 3" in logs
    assert f"report | run {run_id}, step report, attempt 1" in logs
    assert "report | a note on stderr" in logs
    raw = running.cli("logs", str(run_id), "--raw", "--step", "count").stdout
    assert raw.splitlines() == ["tick 1", "tick 2", "tick 3"]
    kinds = [e["kind"] for e in running.run(run_id)["events"]]
    assert kinds[-1] == "run_finished"


def test_failing_step_fails_the_run_and_skips_the_rest(running: Instance) -> None:
    run_id = running.submit("""
[[steps]]
id = "ok"
run = ["true"]
[[steps]]
id = "bad"
run = "echo oops >&2; exit 7"
[[steps]]
id = "after"
run = ["echo", "never"]
""")
    run = running.wait_state(run_id, "FAILED")
    assert run["exit_code"] == 7
    assert run["reason"] == "step bad: exited with status 7"
    assert [(s["step_id"], s["state"], s["exit_code"]) for s in run["steps"]] == [
        ("ok", "SUCCEEDED", 0), ("bad", "FAILED", 7), ("after", "SKIPPED", None)]
    assert "never" not in running.cli("logs", str(run_id)).stdout
    waited = running.cli("wait", str(run_id), check=False)
    assert waited.returncode == 1
    assert "FAILED" in waited.stderr


def test_missing_command_fails_cleanly(running: Instance) -> None:
    run_id = running.submit('[[steps]]\nid = "a"\nrun = ["/no/such/program"]\n')
    run = running.wait_state(run_id, "FAILED")
    assert run["exit_code"] == 127
    assert "command not found: /no/such/program" in run["reason"]


def test_timeout_stops_the_whole_process_group(running: Instance) -> None:
    pids = running.root / "pids"
    run_id = running.submit(f"""
[[steps]]
id = "slow"
timeout = "1s"
run = "{running.sleeper(300)} & echo $! >> {pids}; {running.sleeper(300)} & echo $! >> {pids}; wait"
""")
    run = running.wait_state(run_id, "TIMED_OUT")
    assert run["steps"][0]["state"] == "TIMED_OUT"
    assert "timed out after 1.0s" in run["reason"]
    recorded = [int(p) for p in pids.read_text().split()]
    assert len(recorded) == 2
    assert not any(pid_alive(p) for p in recorded)
    assert running.tagged_pids() == []


def test_step_ignoring_sigterm_is_killed_after_the_grace(running: Instance) -> None:
    run_id = running.submit(f"""
[[steps]]
id = "stubborn"
timeout = "1s"
run = "trap '' TERM; {running.sleeper(300)}"
""")
    run = running.wait_state(run_id, "TIMED_OUT", timeout=30)
    assert run["steps"][0]["exit_code"] in (137, 143)
    assert running.tagged_pids() == []


def test_background_process_left_by_a_step_does_not_outlive_it(running: Instance) -> None:
    pids = running.root / "pids"
    run_id = running.submit(f"""
[[steps]]
id = "leaves-a-child"
run = "{running.sleeper(300)} > /dev/null 2>&1 & echo $! > {pids}; echo done"
""")
    running.wait_state(run_id, "SUCCEEDED")
    wait_for(lambda: not pid_alive(int(pids.read_text())), 10, "the background child to die")


def test_cancel_mid_step_leaves_no_process(running: Instance) -> None:
    run_id = running.submit(f"""
[[steps]]
id = "long"
run = "touch {running.root}/started; {running.sleeper(300)} & {running.sleeper(300)}"
[[steps]]
id = "after"
run = ["true"]
""")
    running.wait_started()
    wait_for(lambda: len(running.tagged_pids()) >= 2, 10, "the sleepers")
    out = running.cli("cancel", str(run_id)).stdout
    assert "cancel requested" in out
    run = running.wait_state(run_id, "CANCELLED")
    assert run["reason"] == "step long: cancelled by request"
    assert [s["state"] for s in run["steps"]] == ["CANCELLED", "SKIPPED"]
    wait_for(lambda: running.tagged_pids() == [], 10, "no step process left")


def test_cancel_pending_run_and_retry_it(running: Instance) -> None:
    running.cli("pause")
    run_id = running.submit('[[steps]]\nid = "a"\nrun = ["true"]\n')
    assert running.cli("cancel", str(run_id)).stdout.strip() == f"run {run_id}: cancelled"
    run = running.run(run_id)
    assert run["state"] == "CANCELLED" and run["steps"][0]["state"] == "SKIPPED"
    again = running.cli("cancel", str(run_id), check=False)
    assert again.returncode == 2 and "already ended (CANCELLED)" in again.stderr
    assert "attempt 2" in running.cli("retry", str(run_id)).stdout
    running.cli("resume")
    run = running.wait_state(run_id, "SUCCEEDED")
    assert run["attempt"] == 2
    refused = running.cli("retry", str(run_id), check=False)
    assert refused.returncode == 2 and "submit the plan again" in refused.stderr


def test_step_retries_until_it_succeeds(running: Instance) -> None:
    marker = running.root / "tries"
    run_id = running.submit(f"""
[[steps]]
id = "flaky"
retries = 3
run = "echo x >> {marker}; test $(wc -l < {marker}) -ge 3"
""")
    run = running.wait_state(run_id, "SUCCEEDED")
    assert run["steps"][0]["attempt"] == 3
    assert len(marker.read_text().split()) == 3
    kinds = [e["kind"] for e in running.run(run_id)["events"]]
    assert kinds.count("step_started") >= 2  # the last 10 events hold the latest tries


def test_failed_run_retry_reruns_all_steps(running: Instance) -> None:
    flag = running.root / "flag"
    run_id = running.submit(f'[[steps]]\nid = "a"\nrun = ["true"]\n'
                            f'[[steps]]\nid = "b"\nrun = "test -e {flag}"\n')
    running.wait_state(run_id, "FAILED")
    flag.touch()
    running.cli("retry", str(run_id))
    run = running.wait_state(run_id, "SUCCEEDED")
    assert run["attempt"] == 2
    assert [s["attempt"] for s in run["steps"]] == [1, 1]


def test_concurrency_cap_is_never_exceeded(instance: Instance) -> None:
    instance.write_config(max_concurrent_runs=3)
    instance.start_daemon()
    spans = instance.root / "spans"
    spans.mkdir()
    instance.give(spans)
    stamp = f"date +%s.%N > {spans}/$MINIPIPE_RUN_ID"
    ids = [instance.submit(f"""
[[steps]]
id = "s"
run = "{stamp}.start; sleep 1; {stamp}.end"
""") for _ in range(20)]
    for run_id in ids:
        instance.wait_state(run_id, "SUCCEEDED")
    moments = []
    for run_id in ids:
        moments.append((float((spans / f"{run_id}.start").read_text()), 1))
        moments.append((float((spans / f"{run_id}.end").read_text()), -1))
    active = peak = 0
    for _moment, delta in sorted(moments, key=lambda m: (m[0], m[1])):
        active += delta
        peak = max(peak, active)
    assert peak == 3, f"at most 3 runs at once, and the cap should be reached (peak {peak})"


def test_priority_then_age_decides_the_order(instance: Instance) -> None:
    instance.write_config(max_concurrent_runs=1)
    instance.start_daemon()
    instance.cli("pause")
    order = instance.root / "order"
    plan = f'[[steps]]\nid = "s"\nrun = "echo $MINIPIPE_RUN_ID >> {order}"\n'
    low = instance.submit(plan, "--priority", "-5")
    first_normal = instance.submit(plan)
    high = instance.submit(plan, "--priority", "10")
    second_normal = instance.submit(plan)
    instance.cli("resume")
    instance.wait_state(low, "SUCCEEDED")
    assert [int(x) for x in order.read_text().split()] == [high, first_normal, second_normal, low]


def test_pause_survives_a_daemon_restart(running: Instance) -> None:
    running.cli("pause")
    running.stop_daemon()
    running.start_daemon()
    run_id = running.submit('[[steps]]\nid = "a"\nrun = ["true"]\n')
    status = json.loads(running.cli("status", "--json").stdout)
    assert status["paused"] is True and status["daemon_running"] is True
    time.sleep(1.5)  # over one poll interval: a paused queue must not start it
    assert running.run(run_id)["state"] == "PENDING"
    running.cli("resume")
    running.wait_state(run_id, "SUCCEEDED")


def test_logs_follow_until_the_run_ends(running: Instance) -> None:
    run_id = running.submit('[[steps]]\nid = "a"\nrun = "echo one; sleep 1; echo two"\n'
                            '[[steps]]\nid = "b"\nrun = ["echo", "three"]\n')
    followed = running.cli("logs", "-f", "--raw", str(run_id))
    assert followed.stdout.splitlines() == ["one", "two", "three"]
    assert running.run(run_id)["state"] == "SUCCEEDED"


def test_runtime_max_limits_the_whole_run(running: Instance) -> None:
    run_id = running.submit(f"""
[limits]
runtime_max = "1s"
[[steps]]
id = "a"
run = "{running.sleeper(60)}"
""")
    run = running.wait_state(run_id, "TIMED_OUT")
    assert "runtime_max" in run["reason"]


def test_lots_of_output_is_kept_in_order(running: Instance) -> None:
    run_id = running.submit('[[steps]]\nid = "a"\nrun = "seq 1 20000; seq 1 500 >&2"\n')
    running.wait_state(run_id, "SUCCEEDED")
    lines = running.cli("logs", "--raw", str(run_id)).stdout.splitlines()
    assert len(lines) == 20500
    records, _ = read_log(str(running.root / "logs" / f"run-{run_id}.log"))
    by_stream = {"stdout": [], "stderr": []}
    for record in records:
        if record.stream in by_stream:
            by_stream[record.stream].append(record.text)
    assert by_stream["stdout"] == [str(i) for i in range(1, 20001)]
    assert by_stream["stderr"] == [str(i) for i in range(1, 501)]


def test_a_daemon_started_by_a_step_does_not_outlive_it(running: Instance) -> None:
    pids = running.root / "pids"
    script = running.root / "daemonize.sh"
    # a new session: the daemon leaves the step's process group
    script.write_text(f"setsid {running.sleeper(300)} > /dev/null 2>&1 < /dev/null &\n"
                      f"echo $! > {pids}\nsleep 0.5\necho started a daemon\n")
    run_id = running.submit(f"""
[[steps]]
id = "daemonize"
run = ["sh", "{script}"]
[[steps]]
id = "after"
run = ["echo", "next step"]
""")
    running.wait_state(run_id, "SUCCEEDED")
    daemon = int(pids.read_text())
    assert not pid_alive(daemon), "the escaped daemon must end with its step"
    assert running.tagged_pids() == []
    assert "killed 1 process(es) the step left running outside its process group" in \
        running.cli("logs", str(run_id)).stdout
