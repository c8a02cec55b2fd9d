"""A run's resource limits: the record, how each is parsed, and plan-over-config merging.

A `Record` (record.py) rather than a NamedTuple: config.py needs it on the submit
client's path, where `typing` would cost about as much as Python's own start
(bench/ figure 0). Parsers import `quantities` only when used.
"""

from __future__ import annotations

from .record import Record

LIMIT_KEYS = ("memory_max", "cpu_quota", "runtime_max", "tasks_max")


class Limits(Record):
    """memory_max: bytes; cpu_quota: percent of one CPU; runtime_max: seconds for the
    whole run; tasks_max: processes and threads. None: no limit of that kind."""

    FIELDS = dict.fromkeys(LIMIT_KEYS)
    __slots__ = LIMIT_KEYS
    memory_max: int | None
    cpu_quota: float | None
    runtime_max: float | None
    tasks_max: int | None


def parse_tasks_max(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1_000_000:
        raise ValueError(f"expected an integer from 1 to 1000000, got {value!r}")
    return value


def limit_parsers() -> dict:  # type: ignore[type-arg]  # name -> parser (no typing here)
    """Each limit's parser: a function of the raw value, raising ValueError with the reason."""
    from .quantities import parse_cpu_quota, parse_duration, parse_size

    return {"memory_max": parse_size, "cpu_quota": parse_cpu_quota,
            "runtime_max": parse_duration, "tasks_max": parse_tasks_max}


def merge_limits(plan: Limits, defaults: Limits) -> Limits:
    """The plan's limits, with the config's defaults where the plan sets none."""
    return Limits(**{key: default if getattr(plan, key) is None else getattr(plan, key)
                     for key, default in defaults._asdict().items()})


def valid_pool_name(name: str) -> bool:
    """A pool's name (config `pools`, plan `pool`): 1-64 of A-Z a-z 0-9 _ - ."""
    return 1 <= len(name) <= 64 and all(c.isascii() and (c.isalnum() or c in "_-.")
                                        for c in name)
