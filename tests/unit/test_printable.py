r"""`printable`: what a terminal would act on is shown as an escape, the rest is kept.

Run names, step ids, commands, reasons and output come from users; printed as
they are, `\x1b]0;...\x07` retitles the terminal, `\x1b[2J` clears it and U+202E
shows text backwards.
"""

from __future__ import annotations

import pytest

from minipipe_svc.model import StepState
from minipipe_svc.render import keep, printable, steps_table
from minipipe_svc.store import StepRow


@pytest.mark.parametrize(("text", "shown"), [
    ("", ""),
    ("plain text, ünïcödé, 日本語, emoji 🎉", "plain text, ünïcödé, 日本語, emoji 🎉"),
    ("tab\tstays", "tab\tstays"),
    ("back\\slash \\x1b stays", "back\\slash \\x1b stays"),
    ("[bold red]pwned[/]", "[bold red]pwned[/]"),  # markup is the monitor's business
    ("\x1b[2J", "\\x1b[2J"),
    ("\x1b]0;title\x07", "\\x1b]0;title\\x07"),
    ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
    ("a\nb\rc", "a\\x0ab\\x0dc"),
    ("\x00\x01\x08\x0b\x0c\x1f", "\\x00\\x01\\x08\\x0b\\x0c\\x1f"),
    ("\x7f", "\\x7f"),
    ("\x80\x9b2J\x9d\x9f", "\\x80\\x9b2J\\x9d\\x9f"),
    ("\xa0\xff", "\xa0\xff"),  # NBSP and ÿ are printable
    ("abc\u202edcba", "abc\\u202edcba"),
    ("\u202a\u202b\u202c\u202d\u202e", "\\u202a\\u202b\\u202c\\u202d\\u202e"),
    ("\u2066\u2067\u2068\u2069", "\\u2066\\u2067\\u2068\\u2069"),
    ("\u2028\u2029\u200e\u200f\u061c", "\\u2028\\u2029\\u200e\\u200f\\u061c"),
    ("\u2065\u202f\u2027\u3000", "\u2065\u202f\u2027\u3000"),  # neighbours kept
    # Format characters drawn as nothing: a zero-width space in a file name, a word
    # joiner, a BOM, tag characters smuggling a sentence, a Hangul filler.
    ("VERSION\u200b", "VERSION\\u200b"),
    ("+Fix typo\U000e0041\U000e0042", "+Fix typo\\U000e0041\\U000e0042"),
    ("\u2060\ufeff\u200d\u00ad\u3164", "\\u2060\\ufeff\\u200d\\xad\\u3164"),
])
def test_printable(text: str, shown: str) -> None:
    assert printable(text) == shown


def test_every_code_point_escaped_is_exactly_the_documented_set() -> None:
    import unicodedata

    escaped = {c for c in range(0x110000) if printable(chr(c)) != chr(c)}
    assert escaped == ({*range(0x20)} - {0x09}) | {0x7F} | {*range(0x80, 0xA0)} \
        | {0x2028, 0x2029, 0x115F, 0x1160, 0x3164, 0xFFA0} \
        | {c for c in range(0x110000) if unicodedata.category(chr(c)) == "Cf"}
    assert all(printable(chr(c)) == f"\\x{c:02x}" for c in escaped if c < 0x100)
    assert all(printable(chr(c)) == f"\\u{c:04x}" for c in escaped if 0x100 <= c < 0x10000)
    assert all(printable(chr(c)) == f"\\U{c:08x}" for c in escaped if c >= 0x10000)


def test_the_result_holds_nothing_a_terminal_acts_on() -> None:
    everything = "".join(chr(c) for c in range(0x3000))
    acted_on = {chr(c) for c in range(0x3000) if printable(chr(c)) != chr(c)}
    assert not set(printable(everything)) & acted_on
    assert acted_on >= {"\x1b", "\x9b", "\n", "\r", "\x07", "\u202e", "\u2067"}


def test_the_steps_table_shows_user_text_printable() -> None:
    step = StepRow(run_id=1, idx=0, step_id="s\x1b[2J", phase="b\u202eld",
                   command="echo \x1b]0;t\x07", state=StepState.PENDING, attempt=0,
                   exit_code=None, started_at=None, finished_at=None, reason=None,
                   pid=None, pid_start=None)
    _header, row = steps_table([step], shown=printable)
    assert row.split() == ["1", "s\\x1b[2J", "b\\u202eld", "PENDING", "0", "-", "-", "echo",
                           "\\x1b]0;t\\x07"]
    assert "\x1b" in steps_table([step])[1]  # the default keeps the text (JSON, pipes)


def test_a_scripts_lines_make_one_row_of_the_steps_table() -> None:
    step = StepRow(run_id=1, idx=0, step_id="s", phase="main",
                   command="set -e\nmake\nmake test\n", state=StepState.PENDING, attempt=0,
                   exit_code=None, started_at=None, finished_at=None, reason=None,
                   pid=None, pid_start=None)
    for shown in (printable, keep):
        lines = steps_table([step], shown=shown)
        assert len(lines) == 2 and lines[1].endswith("set -e make make test")
