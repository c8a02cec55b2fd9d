"""Issue 13, red team round 2, on a private daemon: retry and run waits.

Each test is one attack made as the actor who would try it (here the private
instance's user, a group member acting on their own runs) and asserts the
correct outcome: a failing test names a weakness that is there now.
"""

from __future__ import annotations

import time

from .conftest import Instance, wait_for


def test_retry_refuses_a_run_whose_after_any_dependency_is_gone(instance: Instance) -> None:
    """A GROUP MEMBER retries a run that waited (`--after-any`) for a run auto-cleanup
    has deleted since. The daemon would only cancel it again at once ("dependency N no
    longer exists", store.cancel_blocked): like a failed `--after` dependency, retry
    must refuse it, saying why, instead of requeueing it to be cancelled."""
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
    result = instance.cli("retry", str(second), check=False)
    if result.returncode == 0:
        run = instance.wait_state(second, "CANCELLED", "SUCCEEDED", "FAILED")
        raise AssertionError(f"retry of run {second} was accepted; it then ended "
                             f"{run['state']}: {run['reason']}")
    assert str(first) in result.stderr, result.stderr
