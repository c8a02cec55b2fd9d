"""The one place minipipe talks to journald: the run output sink and the journal reader.

A thin adapter, apart from systemd.py (notify and scopes), so that everything
that reads run output (the CLI, the monitor) and the runner that writes it need
no part of the scope machinery, and so that "which journal entries are a run's"
is decided in one place: only entries whose journald-set fields say they came
from the run's own runner (`_run_entries`). It imports nothing of minipipe's but
the log line type (and, when reading journald.conf, the duration parser);
`systemd.journal` (python-systemd) is imported only where used.
"""

from __future__ import annotations

import configparser
import contextlib
import functools
import glob
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .logs import STREAMS, LogLine

SYSLOG_IDENTIFIER = "minipipe-run"
PRIORITY = {"stdout": 6, "stderr": 4, "minipipe": 5}  # info, warning, notice
# The uid the runner sends its journal entries as. The runner stays root in the
# run's scope while the steps it starts there run as the submitting user, so
# journald's _UID=0 tells the runner's entries from anything a step sends.
RUNNER_UID = 0
_PLAIN_NUMBER = re.compile(r"[0-9]{1,9}")


def unit_name(run_id: int) -> str:
    """Unit names come from the run id only, never from user text."""
    return f"minipipe-run-{int(run_id)}.scope"


@dataclass(frozen=True)
class RateLimit:
    interval: float  # seconds; 0 disables
    burst: int       # entries per interval per priority pool; 0 disables


def journald_rate_limit(paths: list[str] | None = None) -> RateLimit:
    """journald's RateLimitIntervalSec/RateLimitBurst as configured (defaults 30 s, 10000).

    journald multiplies the burst by a factor >= 1 that grows with free disk space,
    so the configured burst is a safe lower bound.
    """
    from .quantities import parse_duration

    if paths is None:
        paths = ["/usr/lib/systemd/journald.conf", "/etc/systemd/journald.conf",
                 *sorted(glob.glob("/usr/lib/systemd/journald.conf.d/*.conf")),
                 *sorted(glob.glob("/etc/systemd/journald.conf.d/*.conf"))]
    interval, burst = 30.0, 10000
    for path in paths:
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        try:
            parser.read(path)
        except configparser.Error:
            continue
        section = parser["Journal"] if parser.has_section("Journal") else {}
        if "RateLimitBurst" in section and section["RateLimitBurst"].strip().isdigit():
            burst = int(section["RateLimitBurst"])
        for key in ("RateLimitIntervalSec", "RateLimitInterval"):
            if key in section:
                text = section[key].strip().replace("sec", "s").replace("min", "m")
                with contextlib.suppress(ValueError):
                    interval = 0.0 if text in ("0", "") else parse_duration(
                        float(text) if text.replace(".", "").isdigit() else text)
    return RateLimit(interval, burst)


@functools.cache
def current_journald_rate_limit() -> RateLimit:
    """journald's rate limit, read once per process (the daemon reads it before forking)."""
    return journald_rate_limit()


class JournalSink:
    """Each output line as one journal entry with minipipe's fields.

    journald drops entries above its per-unit rate limit without telling the
    sender. To lose nothing, the sink keeps its own count per rate-limit window and
    priority pool; above 80% of the burst it packs the lines of each flush into one
    multi-line entry (MINIPIPE_LINES says how many), which keeps the entry count far
    below the limit. Whatever is lost anyway is detected by `minipipe logs`, which
    compares the journal with the line count the runner records.
    """

    def __init__(self, run_id: int, rate_limit: RateLimit | None = None) -> None:
        from systemd import journal

        self._send = journal.send
        self.run_id = str(run_id)
        self.lines_lost = 0
        self.error: str | None = None
        limit = rate_limit or current_journald_rate_limit()
        self.interval = limit.interval
        self.budget = int(limit.burst * 0.8) if limit.burst and limit.interval else 0
        self.window_start = time.monotonic()
        self.sent: dict[int, int] = {}
        self.pending: dict[tuple[str, int, str], list[str]] = {}

    def _entry(self, step_id: str, attempt: int, stream: str, text: str,
               lines: int = 1) -> None:
        fields = {"MINIPIPE_RUN_ID": self.run_id, "MINIPIPE_STEP_ID": step_id,
                  "MINIPIPE_ATTEMPT": str(attempt), "MINIPIPE_STREAM": stream,
                  "PRIORITY": str(PRIORITY[stream]), "SYSLOG_IDENTIFIER": SYSLOG_IDENTIFIER,
                  # Any CODE_* field spares journal.send a stack walk per line.
                  "CODE_FUNC": SYSLOG_IDENTIFIER}
        if lines > 1:
            fields["MINIPIPE_LINES"] = str(lines)
        try:
            self._send(text, **fields)
        except OSError as exc:
            self.lines_lost += lines
            self.error = f"journal: {exc.strerror or exc}"
        pool = PRIORITY[stream]
        self.sent[pool] = self.sent.get(pool, 0) + 1

    def _over_budget(self, stream: str) -> bool:
        if not self.budget:
            return False
        now = time.monotonic()
        if now - self.window_start >= self.interval:
            self.window_start, self.sent = now, {}
        return self.sent.get(PRIORITY[stream], 0) >= self.budget

    def write(self, step_id: str, attempt: int, stream: str, text: str) -> None:
        key = (step_id, attempt, stream)
        if key in self.pending or self._over_budget(stream):
            self.pending.setdefault(key, []).append(text)
            return
        self._entry(step_id, attempt, stream, text)

    def flush(self) -> None:
        pending, self.pending = self.pending, {}
        for (step_id, attempt, stream), lines in pending.items():
            self._entry(step_id, attempt, stream, "\n".join(lines), len(lines))

    def close(self) -> None:
        self.flush()


def read_journal(run_id: int, cursor: str | None = None, *, since: str | None = None,
                 runner_uid: int = RUNNER_UID) -> tuple[list[LogLine], str | None]:
    """The run's journal lines after `cursor`, and the cursor to continue from.

    Only entries the run's own runner sent count (see `_run_entries`). `since` is the
    run's created_at: older entries with the same run id belong to an earlier DB (ids
    start again at 1 after a purge) and are skipped.

    A user who may not read the system journal simply gets no lines; callers
    compare with the runner's line count and fall back to the file mirror.
    """
    with _run_entries(run_id, since, runner_uid) as reader:
        if cursor:
            reader.seek_cursor(cursor)
            reader.get_next()  # the cursor's own entry was returned last time
        lines: list[LogLine] = []
        for entry in reader:
            cursor = entry["__CURSOR"]
            lines.extend(entry_lines(entry))
        return lines, cursor


def count_journal_lines(run_id: int, since: str | None = None, *,
                        runner_uid: int = RUNNER_UID) -> int:
    """How many output lines of the run the journal holds (packed entries count fully)."""
    with _run_entries(run_id, since, runner_uid) as reader:
        reader.data_threshold = 64  # only the small fields are needed, not the messages
        return sum(entry_line_count(entry) for entry in reader)


def entry_lines(entry: Mapping[str, Any]) -> list[LogLine]:
    """The output lines one journal entry holds, whatever junk its fields carry (pure).

    Fields are read as the runner writes them and never trusted to be well formed:
    a MINIPIPE_ATTEMPT that is not a plain number becomes 0, an unknown
    MINIPIPE_STREAM becomes "stdout", a MINIPIPE_STEP_ID stays whatever text it is
    ("?" if missing; it is escaped where displayed), undecodable bytes are replaced.
    An entry is packed (one line per "\n" of its message) only when MINIPIPE_LINES
    is a number above 1, the same rule `entry_line_count` counts by.
    """
    message = _text(entry.get("MESSAGE"), "")
    texts = message.split("\n") if entry_line_count(entry) > 1 else [message]
    stamp = entry.get("__REALTIME_TIMESTAMP")
    ts = (stamp.isoformat(timespec="milliseconds") if isinstance(stamp, datetime)
          else _text(stamp, ""))
    step_id = _text(entry.get("MINIPIPE_STEP_ID"), "?")
    attempt = _number(entry.get("MINIPIPE_ATTEMPT"))
    stream = _text(entry.get("MINIPIPE_STREAM"), "stdout")
    if stream not in STREAMS:
        stream = "stdout"
    return [LogLine(ts, step_id, attempt or 0, stream, text) for text in texts]


def entry_line_count(entry: Mapping[str, Any]) -> int:
    """How many output lines an entry stands for: MINIPIPE_LINES if a number >= 1, else 1."""
    return _number(entry.get("MINIPIPE_LINES")) or 1


def _text(value: Any, default: str) -> str:
    """A journal field as text: python-systemd gives str, bytes it could not decode,
    or a list when the field appears more than once (the first one counts)."""
    if isinstance(value, list | tuple):
        value = value[0] if value else None
    if value is None:
        return default
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _number(value: Any) -> int | None:
    """A field that must be a plain decimal number (ASCII digits, at most 9), else None."""
    text = _text(value, "")
    return int(text) if _PLAIN_NUMBER.fullmatch(text) else None


@contextlib.contextmanager
def _run_entries(run_id: int, since: str | None = None,
                 runner_uid: int = RUNNER_UID) -> Iterator[Any]:
    """A system journal reader matching the entries one run's runner sent.

    Anyone may send an entry with MINIPIPE_RUN_ID=<id>, so that field alone proves
    nothing. journald itself sets `_SYSTEMD_UNIT` (from the sender's cgroup) and
    `_UID` (from the socket's credentials), and nothing a sender writes can change
    them: an entry counts only if it also comes from the run's own scope and from
    the runner's uid. The steps in that scope run as another user, so they cannot
    pass. (python-systemd ANDs matches on different fields.) Entries are read from
    `since`, an ISO time.
    """
    from systemd import journal

    reader = journal.Reader(flags=journal.SYSTEM_ONLY)
    try:
        reader.add_match(MINIPIPE_RUN_ID=str(int(run_id)), _SYSTEMD_UNIT=unit_name(run_id),
                         _UID=str(int(runner_uid)))
        if since:
            # A float: python-systemd would read a datetime's fields as local time.
            reader.seek_realtime(datetime.fromisoformat(since).timestamp() - 1.0)
        yield reader
    finally:
        reader.close()
