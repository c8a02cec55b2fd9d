"""Parsing of durations, byte sizes and CPU quotas as users write them in plans and config.

Pure functions: each returns a number or raises ValueError with a message that
says what a valid value looks like.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    import re
    from datetime import datetime

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)"
_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_SIZE = r"(\d+)([KMGT]?)"
_PERCENT = r"(\d+(?:\.\d+)?)%"


def _re(pattern: str) -> re.Pattern[str]:
    """The compiled pattern; `re` is imported on first parse, not by the read commands
    that only format durations (bench/ figure 7)."""
    import re

    return re.compile(pattern)  # re caches compiled patterns


DURATION_HELP = 'a duration like "90s", "10m", "1h30m" or a number of seconds'
SIZE_HELP = 'a size like "512M", "2G" or a number of bytes'
CPU_QUOTA_HELP = 'a percentage of one CPU like "50%" or "200%"'


def parse_duration(value: object, *, maximum: float = 366 * 86400.0) -> float:
    """Seconds from `"1h30m"`, `"500ms"`, `"45s"` or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected {DURATION_HELP}, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        pos, seconds = 0, 0.0
        if not text:
            raise ValueError(f"expected {DURATION_HELP}, got an empty string")
        if _re(r"[0-9]+(?:\.[0-9]+)?").fullmatch(text):  # "90": seconds, as the help says
            pos, seconds = len(text), float(text)
        while pos < len(text):
            match = _re(_DURATION_PART).match(text, pos)
            if not match:
                raise ValueError(f"expected {DURATION_HELP}, got {value!r}")
            seconds += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
            pos = match.end()
    else:
        raise ValueError(f"expected {DURATION_HELP}, got {type(value).__name__}")
    if not seconds > 0:
        raise ValueError(f"a duration must be positive, got {value!r}")
    if seconds > maximum:
        raise ValueError(f"{value!r} is too long (at most {format_duration(maximum)})")
    return seconds


def parse_size(value: object, *, maximum: int = 1024**5) -> int:
    """Bytes from `"512M"`, `"2G"` (powers of 1024, as systemd reads them) or an int."""
    if isinstance(value, bool):
        raise ValueError(f"expected {SIZE_HELP}, got {value!r}")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        match = _re(_SIZE).fullmatch(value.strip().upper().removesuffix("B"))
        if not match:
            raise ValueError(f"expected {SIZE_HELP}, got {value!r}")
        size = int(match.group(1)) * _SIZE_UNITS[match.group(2)]
    else:
        raise ValueError(f"expected {SIZE_HELP}, got {type(value).__name__}")
    if size <= 0:
        raise ValueError(f"a size must be positive, got {value!r}")
    if size > maximum:
        raise ValueError(f"{value!r} is too large")
    return size


def parse_cpu_quota(value: object) -> float:
    """Percent of one CPU from `"200%"`, as systemd's CPUQuota= takes it."""
    if not isinstance(value, str) or not (match := _re(_PERCENT).fullmatch(value.strip())):
        raise ValueError(f"expected {CPU_QUOTA_HELP}, got {value!r}")
    percent = float(match.group(1))
    if not 0 < percent <= 100_000:
        raise ValueError(f"a CPU quota must be between 0% and 100000%, got {value!r}")
    return percent


def format_duration(seconds: float) -> str:
    """Short human form: 0.4s, 12s, 3m05s, 2h04m, 3d02h."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


MOMENT_HELP = ('a local time like "2026-12-01 03:00", "03:00" (the next one), '
               '"tomorrow 03:00" or ISO 8601 with an offset')


def parse_moment(text: str, now: datetime | None = None) -> datetime:
    """`--at`: an aware datetime from a local time as people write it.

    "2026-12-01 03:00" (or ISO 8601, with or without an offset), "03:00" (today,
    or tomorrow once it has passed), "today 03:00", "tomorrow 03:00".
    """
    from datetime import datetime, time, timedelta

    now = now or datetime.now().astimezone()
    words = text.strip().lower().split()
    day_word = words[0] if len(words) == 2 and words[0] in ("today", "tomorrow") else None
    if day_word or (len(words) == 1 and ":" in words[0] and "-" not in words[0]):
        clock = words[-1]
        try:
            hour, minute = (int(part) for part in clock.split(":"))
            at = time(hour, minute)
        except ValueError:
            raise ValueError(f"expected {MOMENT_HELP}, got {text!r}") from None
        # The wall clock of that day, in the local zone's offset *on that day*: a
        # naive time's astimezone() asks the zone's rules (a DST change in between).
        day = now.astimezone().date()
        moment = datetime.combine(day, at).astimezone()
        if day_word == "tomorrow" or (day_word is None and moment <= now):
            moment = datetime.combine(day + timedelta(days=1), at).astimezone()
        return moment
    try:
        moment = datetime.fromisoformat(text.strip())
        return moment if moment.tzinfo else moment.astimezone()  # naive: local time
    except (ValueError, OverflowError):  # (overflow: year 1 or 9999 in local time)
        raise ValueError(f"expected {MOMENT_HELP}, got {text!r}") from None
