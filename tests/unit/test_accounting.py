"""accounting.from_cgroup's and scope_usage's reading of cgroup files (pure logic, on a
tree written here; the real thing is tests/system/test_accounting_system.py)."""

from __future__ import annotations

from pathlib import Path

from minipipe_svc.accounting import from_cgroup, from_steps, own_cgroups, scope_usage

SCOPE = "minipipe-run-7.scope"


def _write(root: Path, path: str, text: str) -> None:
    (root / path).parent.mkdir(parents=True, exist_ok=True)
    (root / path).write_text(text)


def test_cgroup_v2_files(tmp_path: Path) -> None:
    where = f"minipipe.slice/{SCOPE}"
    _write(tmp_path, f"{where}/cpu.stat", "usage_usec 1500000\nuser_usec 1000000\n")
    _write(tmp_path, f"{where}/memory.peak", "1048576\n")
    _write(tmp_path, f"{where}/io.stat", "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2\n"
                                          "8:16 rbytes=1 wbytes=2\n")
    _write(tmp_path, f"{where}/pids.peak", "5\n")
    usage = from_cgroup(own_cgroups(f"0::/{where}\n"), SCOPE, root=str(tmp_path))
    assert usage == {"cpu_seconds": 1.5, "memory_peak_bytes": 1048576, "io_read_bytes": 4097,
                     "io_write_bytes": 8194, "tasks_peak": 5, "source": "cgroup v2",
                     "unavailable": []}


def test_a_hybrid_host_and_controllers_not_per_unit(tmp_path: Path) -> None:
    where = f"minipipe.slice/{SCOPE}"
    _write(tmp_path, f"unified/{where}/cpu.stat", "usage_usec 2000000\n")
    _write(tmp_path, f"cpuacct/{where}/cpuacct.usage", "9000000000\n")
    _write(tmp_path, f"blkio/{where}/blkio.throttle.io_service_bytes",
           "8:0 Read 100\n8:0 Write 200\n8:0 Total 300\nTotal 300\n")
    _write(tmp_path, "memory/memory.max_usage_in_bytes", "99999999999\n")  # the machine's
    text = (f"9:memory:/\n7:blkio:/{where}\n2:cpu,cpuacct:/{where}\n"
            f"1:name=systemd:/{where}\n0::/{where}\n")
    usage = from_cgroup(own_cgroups(text), SCOPE, root=str(tmp_path))
    assert usage["cpu_seconds"] == 2.0  # v2 first
    assert (usage["io_read_bytes"], usage["io_write_bytes"]) == (100, 200)
    assert usage["memory_peak_bytes"] is None  # never the whole machine's figure
    assert usage["unavailable"] == ["memory_peak_bytes", "tasks_peak"]
    assert usage["source"] == "cgroup v1 + cgroup v2"


def test_without_a_cgroup_the_steps_add_up() -> None:
    steps = [{"cpu_seconds": 1.0, "memory_peak_bytes": 10, "io_read_bytes": 1,
              "io_write_bytes": 2}, {}, {"cpu_seconds": 0.5, "memory_peak_bytes": 30,
                                         "io_read_bytes": 3, "io_write_bytes": 4}]
    usage = from_steps(steps)
    assert (usage["cpu_seconds"], usage["memory_peak_bytes"], usage["io_read_bytes"],
            usage["io_write_bytes"]) == (1.5, 30, 4, 6)
    assert usage["tasks_peak"] is None and usage["unavailable"] == ["tasks_peak"]


def _proc(root: Path, pid: int, text: str) -> str:
    _write(root, f"proc/{pid}/cgroup", text)
    return str(root / "proc")


def test_a_running_runs_scope_is_read_from_outside_through_its_runners_pid(
        tmp_path: Path) -> None:
    where = f"minipipe.slice/{SCOPE}"
    _write(tmp_path, f"cg/unified/{where}/cpu.stat", "usage_usec 250000\n")
    _write(tmp_path, f"cg/cpuacct/{where}/cpuacct.usage", "1\n")
    proc = _proc(tmp_path, 42, f"2:cpu,cpuacct:/{where}\n1:name=systemd:/{where}\n"
                               f"0::/{where}\n")
    usage = scope_usage(7, 42, root=str(tmp_path / "cg"), proc=proc)
    assert usage is not None and usage["cpu_seconds"] == 0.25
    assert "memory_peak_bytes" in usage["unavailable"] and usage["memory_peak_bytes"] is None


def test_a_pid_outside_the_runs_own_scope_gives_no_figures(tmp_path: Path) -> None:
    # A user's own scope of the same name, elsewhere: never taken for the run's.
    elsewhere = f"user.slice/user-1000.slice/user@1000.service/app.slice/{SCOPE}"
    _write(tmp_path, f"cg/{elsewhere}/cpu.stat", "usage_usec 999000000\n")
    proc = _proc(tmp_path, 43, f"0::/{elsewhere}\n")
    assert scope_usage(7, 43, root=str(tmp_path / "cg"), proc=proc) is None
    assert scope_usage(7, 44, root=str(tmp_path / "cg"), proc=proc) is None  # gone
    proc = _proc(tmp_path, 45, f"0::/minipipe.slice/{SCOPE}\n")
    assert scope_usage(8, 45, root=str(tmp_path / "cg"), proc=proc) is None  # another run's
