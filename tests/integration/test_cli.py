"""The CLI's contract: JSON field names, exit statuses, and clean errors without tracebacks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from .conftest import ROOT, Instance, as_user

RUN_FIELDS = {"id", "name", "state", "phase", "priority", "steps_total", "steps_done",
              "attempt", "exit_code", "reason", "created_at", "started_at", "finished_at",
              "submitted_by", "run_user"}
STEP_FIELDS = {"step_id", "phase", "state", "exit_code", "attempt", "started_at",
               "finished_at"}
TRIVIAL = '[[steps]]\nid = "a"\nrun = ["true"]\n'


def test_json_outputs_have_the_documented_fields(running: Instance) -> None:
    submitted = json.loads(running.cli("submit", "--json", running.plan("p", TRIVIAL)).stdout)
    assert submitted.keys() >= RUN_FIELDS
    assert submitted["state"] == "PENDING" or submitted["state"] == "RUNNING"
    running.wait_state(submitted["id"], "SUCCEEDED")
    shown = running.run(submitted["id"])
    assert shown.keys() >= RUN_FIELDS
    user = running.user.pw_name if running.user else None
    if user:  # the uid the daemon saw on the socket, and whom the steps ran as
        assert shown["submitted_by"] == shown["run_user"] == user
    assert shown["steps"][0].keys() >= STEP_FIELDS
    assert shown["created_at"].endswith("Z") and "T" in shown["created_at"]
    listed = json.loads(running.cli("ls", "--json").stdout)
    assert [r["id"] for r in listed] == [submitted["id"]]
    assert listed[0].keys() >= RUN_FIELDS
    status = json.loads(running.cli("status", "--json").stdout)
    assert set(status["counts"]) == {"PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED",
                                     "TIMED_OUT", "INTERRUPTED", "AWAITING_REVIEW", "REJECTED"}
    assert status["counts"]["SUCCEEDED"] == 1
    assert (status["awaiting_review"], status["review_gate_full"]) == (0, False)
    assert status["worktrees"] == {"count": 0, "bytes": 0}
    assert status["paused"] is False and status["daemon_running"] is True


def test_ls_shows_recent_runs_and_all_on_request(running: Instance) -> None:
    instance = running
    instance.cli("pause")
    plan = instance.plan("p", TRIVIAL)
    for _ in range(25):
        instance.cli("submit", plan)
    assert len(json.loads(instance.cli("ls", "--json").stdout)) == 20
    assert len(json.loads(instance.cli("ls", "--json", "--limit", "5").stdout)) == 5
    assert len(json.loads(instance.cli("ls", "--json", "--all").stdout)) == 25
    table = instance.cli("ls").stdout.splitlines()
    assert table[0].split() == ["ID", "NAME", "STATE", "PHASE", "STEPS", "DURATION", "CREATED"]
    assert table[1].split()[:5] == ["25", "p", "PENDING", "-", "0/1"]
    assert "\x1b[" not in instance.cli("ls").stdout, "no colour when not on a terminal"
    pending = json.loads(instance.cli("ls", "--json", "--all", "--state", "pending").stdout)
    assert len(pending) == 25


def test_invalid_plan_exits_2_and_queues_nothing(running: Instance) -> None:
    instance = running
    result = instance.cli("submit", instance.plan("bad", '[[steps]]\nid = "a"\nrun = 5\n'),
                          check=False)
    assert result.returncode == 2
    assert "bad.toml:3: step 'a': 'run' must be a list of strings or a string" in result.stderr
    assert result.stdout == ""
    with instance.store() as store:
        assert store.list_runs(limit=None) == [] and store.count_events() == 0


def test_submit_from_stdin(running: Instance) -> None:
    instance = running
    run_id = int(instance.cli("submit", "-", input=TRIVIAL).stdout)
    assert instance.run(run_id)["name"] == "stdin"


@pytest.mark.parametrize("bad_id", ["1;rm", "-1", "0", "abc", "1.5", "99999999999999999999",
                                    "", "٣"])
def test_malformed_run_ids_are_usage_errors(running: Instance, bad_id: str) -> None:
    instance = running
    instance.cli("submit", instance.plan("p", TRIVIAL))
    for verb in ("show", "logs", "cancel", "retry", "wait"):
        result = instance.cli(verb, bad_id, check=False)
        assert result.returncode == 2, (verb, result.stderr)
        # click reads a leading dash as an option; its own error is clear enough
        expected = "No such option" if bad_id.startswith("-") else "is not a run id"
        assert expected in result.stderr


def test_unknown_run_is_a_clear_error(running: Instance) -> None:
    instance = running
    instance.cli("submit", instance.plan("p", TRIVIAL))
    for verb in ("show", "logs", "cancel", "retry", "wait"):
        result = instance.cli(verb, "42", check=False)
        assert result.returncode == 2, verb
        assert "no run with id 42" in result.stderr


def test_missing_db_is_explained(instance: Instance) -> None:
    for verb in (["ls"], ["show", "1"], ["status"]):
        result = instance.cli(*verb, check=False)
        assert result.returncode == 1
        assert "does not exist yet; start the daemon" in result.stderr


def test_bad_config_is_a_clear_error(instance: Instance) -> None:
    instance.config_path.write_text('{"db_path": "x.db", "colour": "blue"}')
    result = instance.cli("ls", check=False)
    assert result.returncode == 2
    assert "unknown key 'colour'" in result.stderr


def test_wait_timeout_and_success(running: Instance) -> None:
    run_id = running.submit(f'[[steps]]\nid = "a"\nrun = "{running.sleeper(2)}"\n')
    timed_out = running.cli("wait", str(run_id), "--timeout", "0.3", check=False)
    assert timed_out.returncode == 124
    assert "still" in timed_out.stderr
    assert running.cli("wait", str(run_id)).returncode == 0


def test_cancel_needs_a_run_or_all(running: Instance) -> None:
    result = running.cli("cancel", check=False)
    assert result.returncode == 2 and "--all" in result.stderr
    running.cli("pause")
    ids = [running.submit(TRIVIAL) for _ in range(3)]
    out = running.cli("cancel", "--all").stdout
    assert all(f"run {i}: cancelled" in out for i in ids)


def test_help_teaches(instance: Instance) -> None:
    top = instance.cli("--help").stdout
    for verb in ("daemon", "submit", "ls", "show", "logs", "cancel", "retry", "wait", "status",
                 "pause", "resume"):
        assert verb in top
    assert "Exit status" in top
    assert "minipipe, version" in instance.cli("--version").stdout


def test_user_outside_the_group_is_denied_cleanly() -> None:
    # Not under pytest's tmp dir: the point here is a user who can reach the state
    # directory but may neither read the DB nor connect to the daemon's socket.
    root = Path(tempfile.mkdtemp(prefix="minipipe-perm-"))
    instance = Instance(root)
    try:
        os.chmod(root, 0o755)
        instance.start_daemon()
        instance.submit(TRIVIAL)
        as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                     sys.executable, "-m", "minipipe_svc", "--config", str(instance.config_path)]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        for args in (["submit", "-"], ["ls"], ["show", "1"], ["cancel", "1"], ["pause"]):
            result = subprocess.run([*as_nobody, *args], capture_output=True, text=True,
                                    env=env, input=TRIVIAL)
            assert result.returncode == 1, (args, result.stderr)
            assert "permission denied" in result.stderr
            assert "add yourself to group minipipe" in result.stderr
            assert "Traceback" not in result.stderr
        assert len(json.loads(instance.cli("ls", "--json").stdout)) == 1
    finally:
        instance.close()
        shutil.rmtree(root)


def _submit_both_ways(instance: Instance, *args: str) -> list[subprocess.CompletedProcess[str]]:
    """The same submit through the click-free fast path and through click (--priority 0
    is the plan's default priority, and any option sends the command line to click)."""
    fast = instance.cli("submit", *args, check=False)
    slow = instance.cli("submit", "--priority", "0", *args, check=False)
    return [fast, slow]


def test_the_fast_submit_path_and_click_agree(instance: Instance, tmp_path: Path) -> None:
    good = instance.plan("good", TRIVIAL)
    fast, slow = _submit_both_ways(instance, good)
    assert (fast.returncode, slow.returncode) == (1, 1)
    assert fast.stderr == slow.stderr and "daemon is not running" in fast.stderr
    instance.start_daemon()
    instance.cli("pause")
    fast, slow = _submit_both_ways(instance, good)
    assert (fast.returncode, slow.returncode) == (0, 0)
    assert (fast.stdout, slow.stdout) == ("1\n", "2\n")
    assert fast.stderr == slow.stderr == ""
    fast, slow = _submit_both_ways(instance, "--json", good)
    fast_run, slow_run = json.loads(fast.stdout), json.loads(slow.stdout)
    assert fast_run.keys() == slow_run.keys() >= RUN_FIELDS | {"daemon_running"}
    bad = instance.plan("bad", '[[steps]]\nid = "a"\nrun = 5\n')
    fast, slow = _submit_both_ways(instance, bad)
    assert (fast.returncode, slow.returncode) == (2, 2)
    assert fast.stderr == slow.stderr and fast.stderr.startswith(f"Error: {bad}:3")
    missing = str(tmp_path / "missing.toml")
    fast, slow = _submit_both_ways(instance, missing)
    assert (fast.returncode, slow.returncode) == (2, 2) and fast.stderr == slow.stderr
    instance.config_path.write_text("{not json")
    fast, slow = _submit_both_ways(instance, good)
    assert (fast.returncode, slow.returncode) == (2, 2) and fast.stderr == slow.stderr
    with instance.store() as store:
        assert [r.id for r in store.list_runs(limit=None)] == [4, 3, 2, 1]


def _imports(instance: Instance, *args: str) -> set[str]:
    result = subprocess.run([sys.executable, "-X", "importtime", *args], capture_output=True,
                            text=True, timeout=60, **as_user(instance.user, instance.root))
    assert result.returncode == 0, result.stderr
    return {line.split("|")[-1].strip() for line in result.stderr.splitlines()
            if line.startswith("import time:")}


def test_a_plain_submit_does_not_import_click(running: Instance) -> None:
    instance = running
    imported = _imports(instance, "-m", "minipipe_svc", "--config", str(instance.config_path),
                        "submit", instance.plan("p", TRIVIAL))
    assert "minipipe_svc.submit" in imported
    assert "click" not in imported and "minipipe_svc.cli" not in imported
    # The daemon parses and stores: the client needs neither TOML nor SQLite; and
    # nothing that costs as much as Python's own start (bench/ figure 0). What `-m`
    # and this checkout's editable install load anyway does not count.
    baseline = _imports(instance, "-m", "minipipe_svc.__init__")
    assert not (imported - baseline) & {"tomllib", "sqlite3", "typing", "json", "re", "enum",
                                        "contextlib"}, imported - baseline


def _through_click(instance: Instance, *args: str) -> subprocess.CompletedProcess[str]:
    """The same command line, served by the click CLI whatever its form."""
    return subprocess.run(
        [sys.executable, "-m", "minipipe_svc.cli", "--config", str(instance.config_path),
         *args], capture_output=True, text=True, timeout=120,
        **as_user(instance.user, instance.root))


def test_the_fast_read_path_and_click_agree(instance: Instance) -> None:
    """`ls`, `show RUN`, `status` (the forms `watch` runs) skip click and print the
    very same bytes and statuses, errors included."""
    forms = [["ls"], ["ls", "--json"], ["ls", "--mine"], ["status"], ["status", "--json"],
             ["show", "1"], ["show", "--json", "1"], ["show", "99"]]
    # No DB yet: the same error, the same status.
    fast, slow = instance.cli("ls", check=False), _through_click(instance, "ls")
    assert (fast.returncode, fast.stderr) == (slow.returncode, slow.stderr) != (0, "")
    instance.start_daemon()
    instance.submit(TRIVIAL)
    instance.wait_state(1, "SUCCEEDED")
    for form in forms:
        fast, slow = instance.cli(*form, check=False), _through_click(instance, *form)
        assert (fast.returncode, fast.stdout, fast.stderr) == (
            slow.returncode, slow.stdout, slow.stderr), form
    assert instance.cli("show", "99", check=False).returncode == 2
    assert "no run with id 99" in instance.cli("show", "99", check=False).stderr
    assert json.loads(instance.cli("show", "--json", "1").stdout)["state"] == "SUCCEEDED"


def test_plain_read_commands_import_neither_click_nor_typing(running: Instance) -> None:
    instance = running
    instance.submit(TRIVIAL)
    instance.wait_state(1, "SUCCEEDED")
    baseline = _imports(instance, "-m", "minipipe_svc.__init__")
    for form in (["ls"], ["show", "1"], ["status"]):
        imported = _imports(instance, "-m", "minipipe_svc", "--config",
                            str(instance.config_path), *form)
        assert "minipipe_svc.reads" in imported and "sqlite3" in imported, form
        # Each costs a fraction of Python's own start or more (bench/ figure 7).
        assert not (imported - baseline) & {"click", "minipipe_svc.cli", "typing", "json",
                                            "re", "dataclasses", "tomllib", "enum",
                                            "contextlib", "signal"}, form


def test_other_read_forms_still_go_through_click(running: Instance) -> None:
    """Options the fast path does not know are click's: its usage errors and help."""
    instance = running
    result = instance.cli("ls", "--limit", "0", check=False)
    assert result.returncode == 2 and "--limit" in result.stderr
    result = instance.cli("show", "0", check=False)
    assert result.returncode == 2 and "is not a run id" in result.stderr
    assert "Show one run" in instance.cli("show", "--help").stdout


def test_status_trusts_the_pid_file_only_for_the_process_it_names(instance: Instance) -> None:
    """The daemon names itself (pid and start time) beside its lock; a daemon killed
    with -9 leaves the file behind, and a pid that does not match is not a daemon."""
    daemon = instance.start_daemon()
    pid_file = instance.root / "minipipe.pid"
    pid, _started = pid_file.read_text().split()
    assert int(pid) == daemon.pid and (pid_file.stat().st_mode & 0o777) == 0o644
    assert json.loads(instance.cli("status", "--json").stdout)["daemon_running"] is True
    instance.stop_daemon(signal.SIGKILL)
    assert pid_file.exists()
    assert json.loads(instance.cli("status", "--json").stdout)["daemon_running"] is False
    pid_file.write_text(f"{os.getpid()} 1\n")  # a live pid, the wrong start time
    assert json.loads(instance.cli("status", "--json").stdout)["daemon_running"] is False
