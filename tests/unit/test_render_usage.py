"""render.usage_text and the pool helpers: what `show`, `status` and the monitor print."""

from __future__ import annotations

from minipipe_svc.render import pool_fill, pool_use, usage_text


def test_usage_names_what_the_host_could_not_give() -> None:
    usage = {"cpu_seconds": 1.5, "memory_peak_bytes": 3 * 2**20, "io_read_bytes": 0,
             "io_write_bytes": 4096, "tasks_peak": None, "source": "cgroup v2"}
    assert usage_text(usage) == ("cpu 1.50s · memory peak 3.0 MiB · read 0 B · written "
                                 "4.0 KiB · tasks peak n/a (cgroup v2)")


def test_figures_of_the_wrong_shape_show_as_unknown_never_break() -> None:
    usage = {"cpu_seconds": "[/x]", "memory_peak_bytes": float("inf"),
             "io_read_bytes": -1, "io_write_bytes": True, "tasks_peak": 10**400,
             "source": "[b]x"}
    assert usage_text(usage) == ("cpu ? · memory peak ? · read ? · written ? · "
                                 "tasks peak ? ([b]x)")
    assert usage_text(["not", "a", "dict"]) == "usage of an unknown shape"  # type: ignore[arg-type]


def test_pool_use_counts_the_configured_pools() -> None:
    pools = pool_use({"gpu": 2, "io": 1}, {"gpu": 2, "gone": 3})
    assert pools == {"gpu": {"size": 2, "running": 2}, "io": {"size": 1, "running": 0}}
    assert [pool_fill(pool) for pool in pools.values()] == ["2/2", "0/1"]
