"""Issue 13, red team round 2, on a private daemon: retry and run waits.

Each test is one attack made as the actor who would try it (here the private
instance's user, a group member acting on their own runs) and asserts the
correct outcome: a failing test names a weakness that is there now.
"""

from __future__ import annotations

import time

from .conftest import Instance, wait_for


def test_retry_of_a_run_whose_after_any_dependency_is_gone_runs_it(instance: Instance) -> None:
    """A GROUP MEMBER retries a run that waited (`--after-any`) for a run auto-cleanup
    has deleted since. Only ended runs are deleted, so that wait is met: the retry
    runs it (it was requeued, then cancelled "dependency N no longer exists")."""
    instance.write_config(auto_cleanup_completed_runs=True,
                          completed_run_retention_days=3 / 86400)  # 3 s
    instance.start_daemon()
    first = instance.submit('[[steps]]\nid = "a"\nrun = "true"\n', name="first")
    instance.wait_state(first, "SUCCEEDED")
    time.sleep(5)
    second = instance.submit('[[steps]]\nid = "a"\nrun = "exit 1"\n', "--after-any",
                             str(first), name="second")
    instance.wait_state(second, "FAILED")
    # A daemon start cleans up at once: `first` ended over 3 s ago, `second` just now.
    instance.stop_daemon()
    instance.start_daemon()
    wait_for(lambda: instance.cli("show", str(first), "--json", check=False).returncode
             != 0, 30, f"run {first} to be cleaned up")
    assert instance.run(second)["state"] == "FAILED"
    instance.cli("retry", str(second))
    run = instance.wait_state(second, "CANCELLED", "SUCCEEDED", "FAILED")
    assert (run["state"], run["reason"]) == ("FAILED", "step a: exited with status 1"), run
