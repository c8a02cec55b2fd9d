"""[[finally]] steps: after the others whatever their result (a failure, a cancel),
with MINIPIPE_RUN_STATE, in their own phase, through a private daemon."""

from __future__ import annotations

import time

from .conftest import Instance, wait_for

PLAN = """
[[steps]]
id = "main"
run = "{main}"
[[steps]]
id = "never"
run = "true"
[[finally]]
id = "clean"
run = "echo $MINIPIPE_RUN_STATE > {root}/state-$MINIPIPE_RUN_ID; {clean}"
[[finally]]
id = "notify"
phase = "report"
run = "touch {root}/notified-$MINIPIPE_RUN_ID"
"""


def _plan(instance: Instance, main: str, clean: str = "true") -> str:
    return PLAN.format(main=main, clean=clean, root=instance.root)


def test_finally_steps_run_after_a_failure_and_keep_its_reason(running: Instance) -> None:
    instance = running
    run_id = instance.submit(_plan(instance, "exit 2"), name="fails")
    run = instance.wait_state(run_id, "FAILED", "SUCCEEDED")
    assert (run["state"], run["reason"]) == ("FAILED", "step main: exited with status 2")
    steps = {s["step_id"]: s for s in run["steps"]}
    assert steps["never"]["state"] == "SKIPPED"
    assert (steps["clean"]["state"], steps["clean"]["phase"]) == ("SUCCEEDED", "finally")
    assert steps["notify"]["state"] == "SUCCEEDED"
    assert (instance.root / f"state-{run_id}").read_text() == "FAILED\n"
    # Shown apart, also where a finally step names its own phase.
    assert [(s["phase"], s["stage"]) for s in run["steps"]] == [
        ("main", "main"), ("main", "main"), ("finally", "finally"),
        ("report", "finally")]
    shown = instance.cli("show", str(run_id)).stdout
    assert "notify  report (finally)  SUCCEEDED" in shown


def test_finally_steps_run_after_a_cancel(running: Instance) -> None:
    instance = running
    run_id = instance.submit(_plan(instance, instance.gated()), name="cancelled")
    instance.wait_started()
    instance.cli("cancel", str(run_id))
    run = instance.wait_state(run_id, "CANCELLED", "FAILED", "SUCCEEDED")
    assert run["state"] == "CANCELLED"
    assert (instance.root / f"state-{run_id}").read_text() == "CANCELLED\n"
    assert (instance.root / f"notified-{run_id}").exists()


def test_a_failing_finally_step_fails_a_run_that_succeeded(running: Instance) -> None:
    instance = running
    run_id = instance.submit(_plan(instance, "true", clean="exit 5"), name="teardown")
    run = instance.wait_state(run_id, "FAILED", "SUCCEEDED")
    assert (run["state"], run["reason"]) == ("FAILED", "step clean: exited with status 5")
    assert (instance.root / f"state-{run_id}").read_text() == "SUCCEEDED\n"
    # The next finally step still ran.
    assert (instance.root / f"notified-{run_id}").exists()


STUBBORN = """
[[steps]]
id = "main"
run = "{main}"
[[finally]]
id = "stubborn"
run = "trap '' TERM; touch {root}/finally-$MINIPIPE_RUN_ID; while :; do sleep 0.1; done"
[[finally]]
id = "after"
run = "touch {root}/after-$MINIPIPE_RUN_ID"
"""


def test_a_second_cancel_stops_finally_steps_that_would_not_end(instance: Instance) -> None:
    """A finally step that ignores SIGTERM and never ends: the cancel that ended the
    other steps does not stop it, a second one does (SIGKILL after kill_grace), and
    the finally steps after it are skipped. No run holds its slot for ever."""
    instance.write_config(kill_grace_seconds=0.5)
    instance.start_daemon()
    run_id = instance.submit(STUBBORN.format(main=instance.gated(), root=instance.root))
    instance.wait_started()
    instance.cli("cancel", str(run_id))
    wait_for((instance.root / f"finally-{run_id}").exists, 30, "the finally step to start")
    time.sleep(1.0)  # past kill_grace: the first cancel left it running
    assert instance.run(run_id)["state"] == "RUNNING"
    instance.cli("cancel", str(run_id))
    run = instance.wait_state(run_id, "CANCELLED", "FAILED", "TIMED_OUT", timeout=30)
    assert (run["state"], run["reason"]) == ("CANCELLED", "step main: cancelled by request")
    steps = {s["step_id"]: s for s in run["steps"]}
    assert (steps["stubborn"]["state"], steps["stubborn"]["reason"]) == (
        "CANCELLED", "cancelled by request")
    assert steps["after"]["state"] == "SKIPPED"
    assert not (instance.root / f"after-{run_id}").exists()


def test_finally_steps_after_a_cancel_have_finally_grace_seconds(instance: Instance
                                                                 ) -> None:
    instance.write_config(kill_grace_seconds=0.5, finally_grace_seconds=1)
    instance.start_daemon()
    run_id = instance.submit(STUBBORN.format(main=instance.gated(), root=instance.root))
    instance.wait_started()
    instance.cli("cancel", str(run_id))
    run = instance.wait_state(run_id, "CANCELLED", "FAILED", "TIMED_OUT", timeout=30)
    assert (run["state"], run["reason"]) == ("CANCELLED", "step main: cancelled by request")
    steps = {s["step_id"]: s for s in run["steps"]}
    assert (steps["stubborn"]["state"], steps["stubborn"]["reason"]) == (
        "TIMED_OUT", "finally steps ran over finally_grace_seconds (1.0s) after the run "
        "was stopped")
    assert steps["after"]["state"] == "SKIPPED"


def test_a_cancel_while_finally_steps_run_after_a_success_stops_them(running: Instance
                                                                     ) -> None:
    instance = running
    run_id = instance.submit(STUBBORN.format(main="true", root=instance.root))
    wait_for((instance.root / f"finally-{run_id}").exists, 30, "the finally step to start")
    instance.cli("cancel", str(run_id))
    run = instance.wait_state(run_id, "CANCELLED", "FAILED", "SUCCEEDED", timeout=30)
    assert (run["state"], run["reason"]) == ("CANCELLED", "step stubborn: cancelled by request")
