"""Runs that wait: for other runs (`--after`, `--after-any`, `after = [...]`) and for a
time (`--at`, `--delay`), through a private daemon and the CLI.

What is promised: a run starts only once what it waits for happened; a run whose
dependency did not succeed never hangs in the queue (it ends CANCELLED, saying which
run, chains included), also when that happened while the daemon was down; a delayed
run starts on time (the daemon sleeps until then: these tests poll every 30 s, so a
start within a second is the daemon's own wake-up), also after a restart.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest

from minipipe_svc.store import parse_time

from .conftest import Instance, wait_for

STEP = '[[steps]]\nid = "a"\nrun = "{run}"\n'


@pytest.fixture
def waiting(instance: Instance) -> Instance:
    instance.write_config(poll_interval_seconds=30.0)
    instance.start_daemon()
    return instance


def _plan(run: str, extra: str = "") -> str:
    return extra + STEP.format(run=run)


def test_a_chain_starts_in_order_and_after_any_waits_for_the_end(waiting: Instance) -> None:
    instance = waiting
    first = instance.submit(_plan(instance.gated()), name="first")
    instance.wait_started()
    second = instance.submit(_plan("true"), "--after", str(first), name="second")
    third = instance.submit(_plan("true", f"after = [{second}]\n"), name="third")
    anyway = instance.submit(_plan("true"), "--after-any", str(first), name="anyway")
    listing = instance.cli("ls").stdout
    assert f"after {first}" in listing and f"after {second}" in listing
    shown = instance.run(third)
    assert shown["after"] == [{"run": second, "any_result": False, "state": "PENDING"}]
    time.sleep(1.0)  # nothing starts while `first` runs
    assert {instance.run(r)["state"] for r in (second, third, anyway)} == {"PENDING"}
    instance.open_gate()
    for run_id in (first, second, third, anyway):
        assert instance.wait_state(run_id, "SUCCEEDED", "FAILED", "CANCELLED")["state"] == \
            "SUCCEEDED"
    runs = {r: instance.run(r) for r in (first, second, third)}
    assert runs[second]["started_at"] >= runs[first]["finished_at"]
    assert runs[third]["started_at"] >= runs[second]["finished_at"]


def test_a_failed_dependency_cancels_the_chain_and_after_any_still_runs(
        waiting: Instance) -> None:
    instance = waiting
    first = instance.submit(_plan(instance.gated("exit 3")), name="first")
    instance.wait_started()
    second = instance.submit(_plan("true"), "--after", str(first), name="second")
    third = instance.submit(_plan("true"), "--after", str(second), name="third")
    anyway = instance.submit(_plan("true"), "--after-any", str(first), name="anyway")
    instance.open_gate()
    assert instance.wait_state(first, "FAILED")["state"] == "FAILED"
    run = instance.wait_state(second, "CANCELLED", "SUCCEEDED", "FAILED")
    assert (run["state"], run["reason"]) == ("CANCELLED", f"dependency {first} ended FAILED")
    run = instance.wait_state(third, "CANCELLED", "SUCCEEDED", "FAILED")
    assert (run["state"], run["reason"]) == ("CANCELLED",
                                             f"dependency {second} ended CANCELLED")
    assert instance.wait_state(anyway, "SUCCEEDED", "CANCELLED")["state"] == "SUCCEEDED"
    assert json.loads(instance.cli("ls", "--state", "PENDING", "--json").stdout) == []
    events = json.loads(instance.cli("show", str(second), "--json", "--events", "20")
                        .stdout)["events"]
    assert any(e["kind"] == "dependency_failed" and e["detail"]["run"] == first
               for e in events)
    # A retry that would only be cancelled again is refused, saying what to retry.
    refused = instance.cli("retry", str(second), check=False)
    assert refused.returncode != 0
    assert (f"run {second} waits for run {first} to succeed, and run {first} ended FAILED: "
            f"retry {first} first") in refused.stderr
    instance.cli("pause")  # so that the retried run 1 cannot fail again meanwhile
    instance.cli("retry", str(first))
    assert instance.cli("retry", str(second)).returncode == 0


def test_a_dependency_that_fails_while_the_daemon_is_down(waiting: Instance) -> None:
    """The runner outlives the daemon and records the failure; the next daemon ends
    the dependent run instead of leaving it PENDING."""
    instance = waiting
    first = instance.submit(_plan(instance.gated("exit 1")), name="first")
    instance.wait_started()
    second = instance.submit(_plan("true"), "--after", str(first), name="second")
    instance.stop_daemon()
    instance.open_gate()
    wait_for(lambda: instance.run(first)["state"] == "FAILED", 30, "the run to fail")
    assert instance.run(second)["state"] == "PENDING"
    instance.start_daemon()
    run = instance.wait_state(second, "CANCELLED", "SUCCEEDED")
    assert run["reason"] == f"dependency {first} ended FAILED"


def test_waits_that_could_never_end_are_refused_at_submit(waiting: Instance) -> None:
    instance = waiting
    failed = instance.submit(_plan("exit 1"), name="failed")
    instance.wait_state(failed, "FAILED")
    result = instance.cli("submit", instance.plan("p", _plan("true")), "--after", "999",
                          check=False)
    assert result.returncode != 0 and "no run 999 to wait for" in result.stderr
    result = instance.cli("submit", instance.plan("p", _plan("true")), "--after",
                          str(failed), check=False)
    assert result.returncode != 0 and f"run {failed} ended FAILED" in result.stderr
    assert "--after-any" in result.stderr
    bad = instance.plan("bad", _plan("true", "after = [0]\n"))
    result = instance.cli("submit", bad, check=False)
    assert result.returncode == 2 and f"{bad}:1:" in result.stderr
    result = instance.cli("submit", instance.plan("p", _plan("true")), "--after", "x",
                          check=False)
    assert result.returncode == 2 and "'x' is not a run id" in result.stderr
    result = instance.cli("submit", instance.plan("p", _plan("true")), "--at", "soon",
                          check=False)
    assert result.returncode == 2 and "tomorrow 03:00" in result.stderr
    # --after-any on a failed run is fine: it has ended.
    ok = instance.submit(_plan("true"), "--after-any", str(failed), name="ok")
    assert instance.wait_state(ok, "SUCCEEDED")["state"] == "SUCCEEDED"


def _start_delay(run: dict) -> float:
    return (parse_time(run["started_at"]) - parse_time(run["not_before"])).total_seconds()


def test_a_delayed_run_starts_on_time_and_survives_a_restart(waiting: Instance) -> None:
    instance = waiting
    run_id = instance.submit(_plan("true"), "--delay", "3s", name="later")
    run = instance.run(run_id)
    assert run["state"] == "PENDING" and run["not_before"]
    assert "at " in instance.cli("ls").stdout and "not before:" in \
        instance.cli("show", str(run_id)).stdout
    instance.stop_daemon()
    instance.start_daemon()
    assert instance.run(run_id)["state"] == "PENDING"
    run = instance.wait_state(run_id, "SUCCEEDED", timeout=30)
    assert 0.0 <= _start_delay(run) < 1.0, run
    # --at with a time: the same, by the clock.
    at = (parse_time(run["finished_at"]) + timedelta(seconds=3)).astimezone()
    second = instance.submit(_plan("true"), "--at", at.isoformat(), name="at")
    run = instance.wait_state(second, "SUCCEEDED", timeout=30)
    assert 0.0 <= _start_delay(run) < 1.0, run
