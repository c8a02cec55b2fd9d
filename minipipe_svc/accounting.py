"""What a step and a run consumed: CPU time, peak memory, I/O bytes, tasks.

Per step, from the kernel's accounting of the step's process tree (`wait4`'s rusage:
the step and every descendant it waited for): CPU user+system, the peak resident
memory of its largest process, blocks read and written by the filesystem layer
(×512 bytes: I/O that reached a device, not the page cache). A step's task count
is not in rusage.

Per run, under systemd, from the run's scope cgroup, read by the runner (inside the
scope) as the run ends: cgroup v2 files where the controller is on the unified
hierarchy (`cpu.stat`, `memory.peak`, `io.stat`, `pids.peak`), else the v1 controller
of a hybrid host (`cpuacct.usage`, `memory.max_usage_in_bytes`,
`blkio.throttle.io_service_bytes`). The scope holds the runner too (~20 MB, a few ms
of CPU). A figure the host cannot give is listed in `unavailable`, never shown as 0.
Without a scope, the run's figures are its steps' (CPU and I/O summed, peaks the
largest).

While a run runs, anyone may read the same figures so far from outside its scope
(`scope_usage`: the monitor, as an unprivileged user; /proc/PID/cgroup and the cgroup
files are world-readable), so this module stays the one that knows their layout.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Sequence
from typing import Any

FIGURES = ("cpu_seconds", "memory_peak_bytes", "io_read_bytes", "io_write_bytes",
           "tasks_peak")
CGROUP_ROOT = "/sys/fs/cgroup"


def step_usage(usage: resource.struct_rusage,
               orphans: Sequence[resource.struct_rusage] = ()) -> dict[str, Any]:
    """A step's figures from its wait4 rusage (Linux: ru_maxrss in KiB), with the
    rusage of `orphans`: processes that left the step's tree (a double fork made
    them the runner's children; it reaped them) count as the step's too."""
    every = (usage, *orphans)
    return {"cpu_seconds": round(sum(u.ru_utime + u.ru_stime for u in every), 3),
            "memory_peak_bytes": max(u.ru_maxrss for u in every) * 1024,
            "io_read_bytes": sum(u.ru_inblock for u in every) * 512,
            "io_write_bytes": sum(u.ru_oublock for u in every) * 512,
            "tasks_peak": None, "source": "rusage", "unavailable": ["tasks_peak"]}


def from_steps(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """A run's figures without a cgroup: its steps' summed (CPU, I/O) or largest."""
    steps = [s for s in steps if s]
    total: dict[str, Any] = {"source": "rusage (steps)", "unavailable": ["tasks_peak"],
                             "tasks_peak": None}
    for key in ("cpu_seconds", "io_read_bytes", "io_write_bytes"):
        total[key] = round(sum(s.get(key) or 0 for s in steps), 3) if steps else 0
    total["memory_peak_bytes"] = max((s.get("memory_peak_bytes") or 0 for s in steps),
                                     default=0)
    return total


def own_cgroups(text: str | None = None) -> dict[str, str]:
    """This process's cgroup path per controller ("" for the unified hierarchy)."""
    if text is None:
        with open("/proc/self/cgroup") as handle:
            text = handle.read()
    paths: dict[str, str] = {}
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path
    return paths


def from_cgroup(paths: dict[str, str], scope: str, root: str = CGROUP_ROOT
                ) -> dict[str, Any]:
    """The run's figures from its scope's cgroup (`paths`: own_cgroups()). Only a
    hierarchy where this process sits in `scope` counts: on a hybrid host a v1
    controller systemd does not delegate per unit (memory, often) puts every process
    in one cgroup, whose figures are the whole machine's, not the run's."""
    paths = {name: path for name, path in paths.items() if f"/{scope}" in path}
    unified = os.path.join(root, "unified") if os.path.isdir(
        os.path.join(root, "unified")) else root
    v2 = os.path.join(unified, paths[""].lstrip("/")) if "" in paths else "/nonexistent"
    figures: dict[str, Any] = {}
    sources: set[str] = set()

    def v1(controller: str, name: str) -> str | None:
        if controller not in paths:
            return None
        return _read(os.path.join(root, controller, paths[controller].lstrip("/"), name))

    def put(key: str, value: int | float, source: str) -> None:
        figures[key] = value
        sources.add(source)

    stat = _read(os.path.join(v2, "cpu.stat"))
    usec = _field(stat, "usage_usec") if stat else None
    nanos = v1("cpuacct", "cpuacct.usage")
    if usec is not None:
        put("cpu_seconds", round(usec / 1e6, 3), "cgroup v2")
    elif nanos is not None and nanos.strip().isdigit():
        put("cpu_seconds", round(int(nanos) / 1e9, 3), "cgroup v1")
    peak = _read(os.path.join(v2, "memory.peak"))
    peak_v1 = v1("memory", "memory.max_usage_in_bytes")
    if peak is not None and peak.strip().isdigit():
        put("memory_peak_bytes", int(peak), "cgroup v2")
    elif peak_v1 is not None and peak_v1.strip().isdigit():
        put("memory_peak_bytes", int(peak_v1), "cgroup v1")
    io = _read(os.path.join(v2, "io.stat"))
    blkio = v1("blkio", "blkio.throttle.io_service_bytes")
    if io is not None:
        lines = io.splitlines()
        put("io_read_bytes", sum(_field(line, "rbytes") or 0 for line in lines), "cgroup v2")
        put("io_write_bytes", sum(_field(line, "wbytes") or 0 for line in lines), "cgroup v2")
    elif blkio is not None:
        put("io_read_bytes", _blkio(blkio, "Read"), "cgroup v1")
        put("io_write_bytes", _blkio(blkio, "Write"), "cgroup v1")
    tasks = _read(os.path.join(v2, "pids.peak"))
    if tasks is not None and tasks.strip().isdigit():
        put("tasks_peak", int(tasks), "cgroup v2")
    unavailable = [key for key in FIGURES if key not in figures]
    return {**{key: figures.get(key) for key in FIGURES},
            "source": " + ".join(sorted(sources)) or "none", "unavailable": unavailable}


def scope_usage(run_id: int, pid: int, root: str = CGROUP_ROOT, proc: str = "/proc"
                ) -> dict[str, Any] | None:
    """A running run's figures so far, read from outside its scope. `pid` (the runner's,
    as the DB names it) only says where to look: None unless the kernel puts that
    process in the run's own scope in minipipe.slice (gone, reused, or a user's scope
    of the same name elsewhere), so no other cgroup's figures pass for the run's."""
    from .systemd import cgroup_in_unit, unit_name

    unit = unit_name(run_id)
    text = _read(os.path.join(proc, str(int(pid)), "cgroup"))
    if text is None or not cgroup_in_unit(text, unit):
        return None
    return from_cgroup(own_cgroups(text), unit, root)


def run_usage(run_id: int, steps: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's figures: its scope's cgroup when this runner is in one (each figure
    it lacks taken from the steps where they have it), else its steps'."""
    try:
        paths = own_cgroups()
    except OSError:
        paths = {}
    if not any(f"minipipe-run-{run_id}.scope" in path for path in paths.values()):
        return from_steps(steps)
    figures = from_cgroup(paths, f"minipipe-run-{run_id}.scope")
    fallback = from_steps(steps)
    for key in list(figures["unavailable"]):
        if fallback.get(key) is not None:
            figures[key] = fallback[key]
            figures["unavailable"].remove(key)
            figures["source"] += f"; {key}: rusage (steps)"
    return figures


def _read(path: str) -> str | None:
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return None


def _field(text: str, name: str) -> int | None:
    """`name value` (cpu.stat) or `name=value` (io.stat) in a line or file."""
    for word_pair in text.replace("=", " ").split("\n"):
        words = word_pair.split()
        for index, word in enumerate(words[:-1]):
            if word == name and words[index + 1].isdigit():
                return int(words[index + 1])
    return None


def _blkio(text: str, kind: str) -> int:
    return sum(int(words[2]) for words in (line.split() for line in text.splitlines())
               if len(words) == 3 and words[1] == kind and words[2].isdigit())
