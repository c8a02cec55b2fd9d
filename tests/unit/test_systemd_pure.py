"""Pure parts of the systemd adapter: argv and properties, rate-limit config, batching.

The journal sink's batching is checked against a recording `send` here (pure logic);
that journald really keeps every line is proven in tests/system with real journald.
"""

from pathlib import Path

from minipipe_svc.journal import JournalSink, RateLimit, journald_rate_limit, unit_name
from minipipe_svc.plan import Limits
from minipipe_svc.systemd import scope_argv, scope_dbus_properties, scope_properties


def test_unit_name_comes_from_the_id_only() -> None:
    assert unit_name(7) == "minipipe-run-7.scope"


def test_scope_argv() -> None:
    limits = Limits(memory_max=2 * 1024**3, cpu_quota=150.0, runtime_max=3600.0, tasks_max=64)
    assert scope_argv(7, ["python3", "-m", "minipipe_svc.runner", "7"],
                      limits=limits, description="minipipe run 7") == [
        "systemd-run", "--scope", "--quiet", "--collect", "--unit=minipipe-run-7.scope",
        "--slice=minipipe.slice", "--description=minipipe run 7",
        "--property=MemoryMax=2147483648", "--property=CPUQuota=150%",
        "--property=TasksMax=64", "--property=RuntimeMaxSec=3660",
        "--", "python3", "-m", "minipipe_svc.runner", "7"]


def test_no_limits_no_properties() -> None:
    assert scope_properties(Limits()) == []


def test_rate_limit_from_config_files(tmp_path: Path) -> None:
    base = tmp_path / "journald.conf"
    base.write_text("[Journal]\n#RateLimitBurst=10000\n")
    drop_in = tmp_path / "50-local.conf"
    drop_in.write_text("[Journal]\nRateLimitBurst=2000\nRateLimitIntervalSec=10s\n")
    assert journald_rate_limit([str(base)]) == RateLimit(30.0, 10000)
    assert journald_rate_limit([str(base), str(drop_in)]) == RateLimit(10.0, 2000)
    off = tmp_path / "off.conf"
    off.write_text("[Journal]\nRateLimitIntervalSec=0\n")
    assert journald_rate_limit([str(off)]).interval == 0


def make_sink(burst: int) -> tuple[JournalSink, list[tuple[str, dict]]]:
    sent: list[tuple[str, dict]] = []
    sink = JournalSink(3, RateLimit(30.0, burst))
    sink._send = lambda message, **fields: sent.append((message, fields))
    return sink, sent


def test_lines_are_single_entries_under_the_budget() -> None:
    sink, sent = make_sink(100)
    sink.write("build", 1, "stdout", "hello")
    sink.write("build", 1, "stderr", "oops")
    sink.flush()
    assert sent == [
        ("hello", {"MINIPIPE_RUN_ID": "3", "MINIPIPE_STEP_ID": "build", "MINIPIPE_ATTEMPT": "1",
                   "MINIPIPE_STREAM": "stdout", "PRIORITY": "6",
                   "SYSLOG_IDENTIFIER": "minipipe-run", "CODE_FUNC": "minipipe-run"}),
        ("oops", {"MINIPIPE_RUN_ID": "3", "MINIPIPE_STEP_ID": "build", "MINIPIPE_ATTEMPT": "1",
                  "MINIPIPE_STREAM": "stderr", "PRIORITY": "4",
                  "SYSLOG_IDENTIFIER": "minipipe-run", "CODE_FUNC": "minipipe-run"})]


def test_over_the_budget_lines_are_packed_and_none_lost() -> None:
    sink, sent = make_sink(100)  # budget: 80 entries per priority pool
    for flush_round in range(10):
        for i in range(1000):
            sink.write("s", 1, "stdout", f"{flush_round}-{i}")
        sink.flush()
    lines = [line for message, fields in sent for line in (
        message.split("\n") if "MINIPIPE_LINES" in fields else [message])]
    assert lines == [f"{r}-{i}" for r in range(10) for i in range(1000)]
    assert len(sent) <= 80 + 10, "beyond the budget, one entry per flush"
    packed = [f for _m, f in sent if "MINIPIPE_LINES" in f]
    assert sum(int(f["MINIPIPE_LINES"]) for f in packed) == 10_000 - 80


def test_budget_is_per_priority_pool() -> None:
    sink, sent = make_sink(10)  # budget 8
    for i in range(8):
        sink.write("s", 1, "stdout", str(i))
    sink.write("s", 1, "stderr", "err")  # another pool: still single
    assert [m for m, _f in sent][-1] == "err"


def test_scope_dbus_properties_match_the_systemd_run_ones() -> None:
    limits = Limits(memory_max=2 * 1024**3, cpu_quota=150.0, runtime_max=3600.0, tasks_max=64)
    assert scope_dbus_properties(limits, "minipipe run 7") == [
        ("Description", ("s", "minipipe run 7")), ("Slice", ("s", "minipipe.slice")),
        ("CollectMode", ("s", "inactive-or-failed")),
        ("MemoryMax", ("t", 2147483648)), ("CPUQuotaPerSecUSec", ("t", 1_500_000)),
        ("TasksMax", ("t", 64)), ("RuntimeMaxUSec", ("t", 3660 * 1_000_000))]
    assert [name for name, _ in scope_dbus_properties(Limits(), "x")] == [
        "Description", "Slice", "CollectMode"]


def test_private_tmp_is_read_from_the_tmp_mount_root() -> None:
    from minipipe_svc.systemd import private_tmp

    service = ("50 29 8:1 /tmp/systemd-private-3f2a-minipipe.service-Ab12/tmp /tmp rw,nosuid "
               "shared:5 - ext4 /dev/sda1 rw\n")
    host = "29 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
    tmpfs = "40 29 0:30 / /tmp rw,nosuid shared:9 - tmpfs tmpfs rw\n"
    assert private_tmp(host + service)
    assert not private_tmp(host)
    assert not private_tmp(host + tmpfs)


def test_a_process_is_in_a_runs_scope_only_under_minipipe_slice() -> None:
    from minipipe_svc.systemd import cgroup_in_unit

    cases = {
        "0::/minipipe.slice/minipipe-run-7.scope\n": True,
        "1:name=systemd:/minipipe.slice/minipipe-run-7.scope\n0::/\n": True,
        "0::/user.slice/user-1000.slice/user@1000.service/app.slice/minipipe-run-7.scope\n":
            False,
        "0::/minipipe.slice/minipipe-run-70.scope\n": False,
        "garbage": False,
    }
    for content, expected in cases.items():
        assert cgroup_in_unit(content, "minipipe-run-7.scope") is expected, content
