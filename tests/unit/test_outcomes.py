"""Pure decisions: how an exit status becomes a state, and what the CLI renders."""

from datetime import UTC, datetime

import pytest

from minipipe_svc.daemon import status_line
from minipipe_svc.model import RunState, StepState
from minipipe_svc.procs import describe_exit
from minipipe_svc.render import age, elapsed, table
from minipipe_svc.runner import clean_environment, step_outcome


@pytest.mark.parametrize(("returncode", "stopped_for", "expected"), [
    (0, None, (StepState.SUCCEEDED, 0, None)),
    (3, None, (StepState.FAILED, 3, "exited with status 3")),
    (-9, None, (StepState.FAILED, 137, "killed by SIGKILL")),
    (-11, None, (StepState.FAILED, 139, "killed by SIGSEGV")),
    (-15, "timeout", (StepState.TIMED_OUT, 143, "why")),
    (0, "timeout", (StepState.TIMED_OUT, 0, "why")),
    (-15, "cancel", (StepState.CANCELLED, 143, "why")),
])
def test_step_outcome(returncode: int, stopped_for: str | None, expected: tuple) -> None:
    result = step_outcome(returncode, stopped_for, "why")
    assert (result.state, result.exit_code, result.reason) == expected


def test_describe_exit() -> None:
    assert describe_exit(0) == (0, None)
    assert describe_exit(-15) == (143, "SIGTERM")


def test_clean_environment_strips_the_service_managers_variables() -> None:
    env = clean_environment({"PATH": "/bin", "NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1",
                             "WATCHDOG_PID": "1", "LISTEN_FDS": "1", "HOME": "/root"})
    assert env == {"PATH": "/bin", "HOME": "/root"}


def test_status_line() -> None:
    counts = {s.value: 0 for s in RunState}
    counts.update(RUNNING=2, PENDING=5, SUCCEEDED=300, FAILED=12)
    assert status_line(counts, 4, False) == "2/4 running · 5 pending · 312 done"
    assert status_line(counts, 4, True).endswith(" · paused")


def test_elapsed_and_age() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert elapsed(None, None, now) == "-"
    assert elapsed("2026-01-01T11:59:00.000Z", None, now) == "1m00s"
    assert elapsed("2026-01-01T11:00:00.000Z", "2026-01-01T11:00:02.500Z", now) == "2.5s"
    assert age("2026-01-01T11:00:00.000Z", now) == "1h00m ago"


def test_table_alignment() -> None:
    assert table(["ID", "NAME"], [["1", "hello"], ["10", "x"]]) == [
        "ID  NAME", "1   hello", "10  x"]


def test_an_exclusive_flock_is_found_in_proc_locks(tmp_path) -> None:
    import os

    from minipipe_svc.procs import exclusive_flock_held

    path = tmp_path / "lock"
    path.touch()
    info = os.stat(path)
    where = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    assert exclusive_flock_held(str(path), f"1: FLOCK  ADVISORY  WRITE 77 {where} 0 EOF\n")
    assert not exclusive_flock_held(str(path), f"1: FLOCK  ADVISORY  READ 77 {where} 0 EOF\n")
    assert not exclusive_flock_held(str(path), f"1: POSIX  ADVISORY  WRITE 77 {where} 0 EOF\n")
    assert not exclusive_flock_held(str(path), "1: FLOCK  ADVISORY  WRITE 77 00:01:2 0 EOF\n")
    assert not exclusive_flock_held(str(tmp_path / "missing"), "")
    import fcntl

    with open(path) as handle:  # and for real, through the kernel's own table
        fcntl.flock(handle, fcntl.LOCK_EX)
        assert exclusive_flock_held(str(path))
    assert not exclusive_flock_held(str(path))
