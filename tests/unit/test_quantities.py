import pytest

from minipipe_svc.quantities import (
    format_duration,
    parse_cpu_quota,
    parse_duration,
    parse_size,
)


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90.0), ("10m", 600.0), ("1h30m", 5400.0), ("500ms", 0.5), ("2d", 172800.0),
    ("1.5s", 1.5), (" 1h 5m ", 3900.0), (30, 30.0), (0.25, 0.25), ("10", 10.0), ("2.5", 2.5),
])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "\u0663", "\u0663s", "1e5", "ten minutes", "5x", "-5s",
                                 "1m-", 0, -3, True, None, [1], "9999d"])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


@pytest.mark.parametrize(("text", "size"), [
    ("512M", 512 * 1024**2), ("2G", 2 * 1024**3), ("1024", 1024), (4096, 4096),
    ("64k", 65536), ("1GB", 1024**3),
])
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["2X", "", "-1G", 0, -5, 1.5, True, "1.5G", "99999999P"])
def test_bad_sizes(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_size(bad)


def test_cpu_quota() -> None:
    assert parse_cpu_quota("200%") == 200.0
    for bad in ["200", "0%", 2, "%", "-5%"]:
        with pytest.raises(ValueError):
            parse_cpu_quota(bad)


@pytest.mark.parametrize(("seconds", "text"), [
    (0.42, "0.4s"), (12, "12s"), (185, "3m05s"), (7440, "2h04m"), (266400, "3d02h"),
])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_moments_as_people_write_them() -> None:
    from datetime import datetime, timedelta

    from minipipe_svc.quantities import parse_moment

    now = datetime(2026, 11, 28, 10, 0).astimezone()
    assert parse_moment("2026-12-01 03:00", now) == datetime(2026, 12, 1, 3, 0).astimezone()
    assert parse_moment("11:30", now) == now.replace(hour=11, minute=30)
    assert parse_moment("03:00", now) == now.replace(hour=3) + timedelta(days=1)  # passed
    assert parse_moment("tomorrow 10:00", now) == now + timedelta(days=1)
    assert parse_moment("today 09:00", now) == now.replace(hour=9)  # may be past: now
    aware = parse_moment("2026-12-01T03:00+01:00", now)
    assert aware.utcoffset() == timedelta(hours=1)
    for bad in ("soon", "25:00", "tomorrow", "2026-13-01 03:00", "", "0001-01-01 00:00"):
        with pytest.raises(ValueError, match="tomorrow 03:00"):
            parse_moment(bad, now)


def test_a_clock_time_across_a_dst_change_keeps_its_wall_clock(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """"tomorrow 03:00" is 03:00 on tomorrow's clock, in tomorrow's offset (a POSIX
    TZ rule, so no tzdata is needed: CET/CEST, back to winter time on 25 Oct 2026)."""
    import time
    from datetime import datetime, timedelta

    from minipipe_svc.quantities import parse_moment

    monkeypatch.setenv("TZ", "CET-1CEST,M3.5.0,M10.5.0/3")
    time.tzset()
    try:
        now = datetime(2026, 10, 24, 12, 0).astimezone()  # summer time, +02:00
        assert now.utcoffset() == timedelta(hours=2)
        for text in ("tomorrow 03:00", "03:00"):
            moment = parse_moment(text, now)
            assert (moment.hour, moment.minute, moment.day) == (3, 0, 25)
            assert moment.utcoffset() == timedelta(hours=1), text  # winter time by then
    finally:
        monkeypatch.undo()
        time.tzset()
