"""Which journal entries count as a run's output, and how their fields are read.

Anyone on the machine can send a journal entry with MINIPIPE_RUN_ID=7 and any
other MINIPIPE_* field; only the fields journald sets itself are trusted. The
parsing is pure and checked exactly here, junk included; the matches the reader
asks journald for are checked against a recording stand-in for python-systemd's
Reader (that real journald applies them is shown in tests/system).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from minipipe_svc import journal
from minipipe_svc.journal import (
    RUNNER_UID,
    count_journal_lines,
    entry_line_count,
    entry_lines,
    read_journal,
)
from minipipe_svc.logs import LogLine

STAMP = datetime(2024, 5, 1, 12, 30, 45, 123456)
TS = "2024-05-01T12:30:45.123"


def entry(**fields: Any) -> dict[str, Any]:
    return {"__REALTIME_TIMESTAMP": STAMP, "MINIPIPE_RUN_ID": "7", **fields}


def test_a_well_formed_entry_is_one_line() -> None:
    assert entry_lines(entry(MESSAGE="hello", MINIPIPE_STEP_ID="build",
                             MINIPIPE_ATTEMPT="2", MINIPIPE_STREAM="stderr")) == [
        LogLine(TS, "build", 2, "stderr", "hello")]


def test_a_packed_entry_is_one_line_per_newline() -> None:
    packed = entry(MESSAGE="one\ntwo\n\nfour", MINIPIPE_LINES="4", MINIPIPE_STEP_ID="s",
                   MINIPIPE_ATTEMPT="1", MINIPIPE_STREAM="stdout")
    assert entry_lines(packed) == [LogLine(TS, "s", 1, "stdout", "one"),
                                   LogLine(TS, "s", 1, "stdout", "two"),
                                   LogLine(TS, "s", 1, "stdout", ""),
                                   LogLine(TS, "s", 1, "stdout", "four")]
    assert entry_line_count(packed) == 4


@pytest.mark.parametrize("lines", ["x", "", "-3", "0", "1", "2.5", " 2", "+2", "٣",
                                   "1_000", "9" * 5000, b"\xff", None])
def test_a_bad_or_single_line_count_means_one_unsplit_line(lines: Any) -> None:
    fields = entry(MESSAGE="a\nb", MINIPIPE_STEP_ID="s", MINIPIPE_ATTEMPT="1",
                   MINIPIPE_STREAM="stdout")
    if lines is not None:
        fields["MINIPIPE_LINES"] = lines
    assert entry_line_count(fields) == 1
    assert entry_lines(fields) == [LogLine(TS, "s", 1, "stdout", "a\nb")]


@pytest.mark.parametrize(("attempt", "parsed"), [
    ("3", 3), ("x", 0), ("", 0), ("-1", 0), ("1e3", 0), (" 4", 0), ("٤", 0),
    ("9" * 5000, 0), (b"\xff\xfe", 0), (["5", "6"], 5), ([], 0), (None, 0)])
def test_a_non_numeric_attempt_becomes_zero(attempt: Any, parsed: int) -> None:
    fields = entry(MESSAGE="m", MINIPIPE_STEP_ID="s", MINIPIPE_STREAM="stdout")
    if attempt is not None:
        fields["MINIPIPE_ATTEMPT"] = attempt
    assert entry_lines(fields) == [LogLine(TS, "s", parsed, "stdout", "m")]


@pytest.mark.parametrize(("stream", "parsed"), [
    ("stdout", "stdout"), ("stderr", "stderr"), ("minipipe", "minipipe"),
    ("STDERR", "stdout"), ("[bold]x", "stdout"), ("", "stdout"), (b"\xff", "stdout"),
    (None, "stdout")])
def test_an_unknown_stream_becomes_stdout(stream: Any, parsed: str) -> None:
    fields = entry(MESSAGE="m", MINIPIPE_STEP_ID="s", MINIPIPE_ATTEMPT="1")
    if stream is not None:
        fields["MINIPIPE_STREAM"] = stream
    assert entry_lines(fields)[0].stream == parsed


@pytest.mark.parametrize(("step_id", "parsed"), [
    (None, "?"), ("", ""), ("[/x]", "[/x]"), ("\x1b[2J", "\x1b[2J"),
    (b"bad\xffid", "bad\ufffdid"), (["first", "second"], "first")])
def test_a_missing_or_odd_step_id_stays_text(step_id: Any, parsed: str) -> None:
    fields = entry(MESSAGE="m", MINIPIPE_ATTEMPT="1", MINIPIPE_STREAM="stdout")
    if step_id is not None:
        fields["MINIPIPE_STEP_ID"] = step_id
    assert entry_lines(fields)[0].step_id == parsed


def test_an_undecodable_or_missing_message_is_still_a_line() -> None:
    assert entry_lines(entry(MESSAGE=b"caf\xe9"))[0].text == "caf\ufffd"
    assert entry_lines(entry()) == [LogLine(TS, "?", 0, "stdout", "")]
    assert entry_lines(entry(MESSAGE="\x1b]0;title\x07"))[0].text == "\x1b]0;title\x07"


def test_a_missing_timestamp_is_empty() -> None:
    assert entry_lines({"MESSAGE": "m"})[0].ts == ""


class RecordingReader:
    """Stands in for systemd.journal.Reader: records matches, yields given entries."""

    entries: list[dict[str, Any]] = []
    made: list[RecordingReader] = []

    def __init__(self, flags: int = 0) -> None:
        self.matches: list[dict[str, str]] = []
        self.closed = False
        self.made.append(self)

    def add_match(self, *args: str, **kwargs: str) -> None:
        assert not args
        self.matches.append(kwargs)

    def seek_realtime(self, when: float) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def __iter__(self) -> Any:
        return iter(self.entries)


@pytest.fixture()
def reader(monkeypatch: pytest.MonkeyPatch) -> type[RecordingReader]:
    systemd_journal = pytest.importorskip("systemd.journal")
    RecordingReader.made = []
    RecordingReader.entries = [
        entry(__CURSOR="c1", MESSAGE="a\nb", MINIPIPE_LINES="2", MINIPIPE_STEP_ID="s",
              MINIPIPE_ATTEMPT="1", MINIPIPE_STREAM="stdout"),
        entry(__CURSOR="c2", MESSAGE="c", MINIPIPE_LINES="junk", MINIPIPE_STEP_ID="s",
              MINIPIPE_ATTEMPT="x", MINIPIPE_STREAM="evil")]
    monkeypatch.setattr(systemd_journal, "Reader", RecordingReader)
    return RecordingReader


def test_the_runner_is_root() -> None:
    assert RUNNER_UID == 0


def test_readers_match_the_runs_scope_and_the_runner_uid_set_by_journald(
        reader: type[RecordingReader]) -> None:
    lines, cursor = read_journal(7, since="2024-05-01T12:00:00+00:00")
    assert lines == [LogLine(TS, "s", 1, "stdout", "a"), LogLine(TS, "s", 1, "stdout", "b"),
                     LogLine(TS, "s", 0, "stdout", "c")]
    assert cursor == "c2"
    assert count_journal_lines(7) == 3
    assert count_journal_lines(7, runner_uid=990) == 3
    wanted = {"MINIPIPE_RUN_ID": "7", "_SYSTEMD_UNIT": "minipipe-run-7.scope", "_UID": "0"}
    assert [r.matches for r in reader.made] == [
        [wanted], [wanted], [{**wanted, "_UID": "990"}]]
    assert all(r.closed for r in reader.made)


def test_the_reader_never_matches_on_sender_fields_alone(
        reader: type[RecordingReader]) -> None:
    """One add_match call with several fields: python-systemd ANDs different fields."""
    read_journal(12)
    (matches,) = reader.made[0].matches
    assert set(matches) == {"MINIPIPE_RUN_ID", "_SYSTEMD_UNIT", "_UID"}
    assert journal.unit_name(12) == matches["_SYSTEMD_UNIT"]
