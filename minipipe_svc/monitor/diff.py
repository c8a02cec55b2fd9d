"""A run's recorded change as lines to show: classified the way git colours them,
escaped, and searchable. Imports nothing from Textual.

Built once, in a worker thread, when the diff screen opens (never on a tick). Every
line is the run's own text, so it is shown through `render.printable`: a diff that
holds ESC or a bidi override shows its escape, never acts on the terminal. Lines
are classified from the hunk headers' line counts, not from their first
characters alone: an added line that reads `+++ x` is an addition, not a file header.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from rich.cells import cell_len

from ..render import change_summary, commit_lines, diff_after_commits, diffstat, printable
from .data import WorkspaceFacts

# What a line is, for its colour (widgets.diff_view maps these to styles).
PLAIN, FILE, ADDED, REMOVED, HUNK, STAT, COMMIT, NOTE = range(8)

MAX_LINE_CHARS = 4096  # a minified file's one line: beyond this nobody reads it here
BLANK_RUN_CELLS = 80  # collapsed from this wide: no more screen than that is blank
BLANK_RUN_CHARS = 40  # (no character is wider than two cells)


@cache
def blank_run() -> re.Pattern[str]:
    """A run of BLANK_RUN_CHARS or more characters that show nothing, in any mix
    (collapsed when it is BLANK_RUN_CELLS wide: wide blanks such as U+3000 count two):
    blanks, Unicode's too (U+3000, U+00A0, the braille blank U+2800), and marks drawn
    as nothing (combining marks such as U+034F or the variation selectors, format
    characters). Built on first use, from this Python's Unicode tables (~0.2 s)."""
    import unicodedata

    ranges: list[tuple[int, int]] = []
    for code in range(0x110000):
        char = chr(code)
        if (char.isspace() and char != "\n") or code == 0x2800 or unicodedata.category(
                char) in ("Mn", "Me", "Cf"):
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1] = (ranges[-1][0], code)
            else:
                ranges.append((code, code))
    members = "".join(re.escape(chr(low)) + (f"-{re.escape(chr(high))}" if high > low else "")
                      for low, high in ranges)
    return re.compile(f"[{members}]{{{BLANK_RUN_CHARS},}}")


# What DiffDocument.add puts where it hid part of a line.
HIDDEN_MARKER = re.compile(r" \[\d+ blanks\] | … \[\d+ more characters: [^\]]*\]$")
STAT_WIDTH = 100

_HUNK = re.compile(r"@@ -\d+(?:,(\d+))? \+\d+(?:,(\d+))? @@")
_FILE_HEADERS = ("diff --git ", "index ", "--- ", "+++ ", "new file mode ", "deleted file mode ",
                 "old mode ", "new mode ", "similarity index ", "dissimilarity index ",
                 "rename from ", "rename to ", "copy from ", "copy to ", "Binary files ",
                 "GIT binary patch")


@dataclass
class DiffDocument:
    """The screen's content: one entry in `kinds` per line, and the widest line's cells."""

    title: str = ""
    lines: list[str] = field(default_factory=list)
    kinds: bytearray = field(default_factory=bytearray)
    width: int = 0
    diff_start: int = 0  # the first line of the diff proper (after the stat and commits)
    # Lines shown shortened (blanks collapsed, cut), as they were: `/` searches them.
    whole: dict[int, str] = field(default_factory=dict)

    def add(self, line: str, kind: int) -> None:
        line = printable(line)
        if "\t" in line:
            line = line.expandtabs(8)
        original = line
        if len(line) >= BLANK_RUN_CHARS:  # blanks that would push the rest off-screen
            line = blank_run().sub(_collapsed, line)
        if len(line) > MAX_LINE_CHARS:  # cut, and said so where the reader looks
            line = (f"{line[:MAX_LINE_CHARS]} … [{len(line) - MAX_LINE_CHARS} more "
                    "characters: `minipipe diff` shows the whole line]")
        if line != original:
            self.whole[len(self.lines)] = original
        self.lines.append(line)
        self.kinds.append(kind)
        cells = len(line) if line.isascii() else cell_len(line)
        if cells > self.width:
            self.width = cells


def _collapsed(run: re.Match[str]) -> str:
    blanks = run.group()
    if cell_len(blanks) < BLANK_RUN_CELLS:
        return blanks
    return f" [{len(blanks)} blanks] "


def message(text: str) -> DiffDocument:
    """A run with nothing to show says why, in the view itself."""
    document = DiffDocument()
    document.add(text, NOTE)
    return document


def build(run_id: int, facts: WorkspaceFacts | None, data: bytes | None,
          log_dir: str) -> DiffDocument:
    """The per-file stat list, the commits, then the recorded diff (`data`)."""
    if facts is None:
        return message(f"run {run_id} has no workspace, so no diff")
    changes = facts.row.changes if facts.row is not None else None
    if not changes:
        return message(f"run {run_id} has not recorded its change yet (its steps have "
                       "not ended)")
    document = DiffDocument(title=change_summary(changes))
    _add_header(document, changes)
    document.diff_start = len(document.lines)
    if data is None:
        document.add(f"the diff of run {run_id} is missing from {log_dir}", NOTE)
        return document
    _add_diff(document, diff_after_commits(data, changes))
    if changes.get("diff_truncated"):
        document.add("(the diff was cut at 8 MiB; the list above names every file)", NOTE)
    return document


def _add_header(document: DiffDocument, changes: dict[str, Any]) -> None:
    for line in diffstat(changes, STAT_WIDTH):
        document.add(line, STAT)
    if changes.get("gate") == "advisory":
        document.add("warning: the run's user may write the repository, so its steps could "
                     "have changed it without review", NOTE)
    document.add("", PLAIN)
    for line in commit_lines(changes):  # whole: identities and trailers land too
        document.add(line, COMMIT if line.startswith("commit ") else
                     NOTE if line.startswith("(and ") else PLAIN)


def _add_diff(document: DiffDocument, data: bytes) -> None:
    lines = data.decode("utf-8", "backslashreplace").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    old = new = 0  # lines of the current hunk still to come, as its header counts them
    for line in lines:
        first = line[:1]
        if (old > 0 or new > 0) and first in "+- \\":  # "" too: a blank context line
            if first == "+":
                kind, new = ADDED, new - 1
            elif first == "-":
                kind, old = REMOVED, old - 1
            elif first == "\\":  # "\ No newline at end of file"
                kind = PLAIN
            else:
                kind, old, new = PLAIN, old - 1, new - 1
        elif line.startswith("@@"):  # (a hunk shorter than its header said ends here)
            kind = HUNK
            old = new = 0
            match = _HUNK.match(line)
            if match:
                old = int(match[1]) if match[1] is not None else 1
                new = int(match[2]) if match[2] is not None else 1
        elif line.startswith(_FILE_HEADERS):
            kind, old, new = FILE, 0, 0
        else:
            kind, old, new = PLAIN, 0, 0
        document.add(line, kind)


def hunk_header_end(line: str) -> int:
    """Where `@@ -a,b +c,d @@` ends in a hunk header (git colours only that part)."""
    end = line.find("@@", 2)
    return len(line) if end < 0 else end + 2


class Search:
    """The lines that hold a needle, found once; next and previous by bisection.

    Smart case, like less -i: a needle without capitals matches any case.
    """

    def __init__(self, document: DiffDocument, needle: str) -> None:
        self.needle = needle
        self.fold = needle == needle.lower()
        self.document = document
        whole = document.whole
        self.hits = [i for i, line in enumerate(document.lines)
                     if self._holds(whole.get(i, line))]

    def _holds(self, line: str) -> bool:
        return self.needle in (line.lower() if self.fold else line)

    def spans(self, index: int) -> list[tuple[int, int]]:
        """Where the needle is in line `index` as shown (characters, start and end),
        for highlighting; when it is only in what the line does not show (collapsed
        blanks, a cut), the markers that say so."""
        line = self.document.lines[index]
        haystack = line.lower() if self.fold else line
        found, start = [], haystack.find(self.needle)
        while start >= 0 and self.needle:
            found.append((start, start + len(self.needle)))
            start = haystack.find(self.needle, start + len(self.needle))
        if not found and index in self.document.whole and self._holds(
                self.document.whole[index]):
            found = [match.span() for match in HIDDEN_MARKER.finditer(line)]
        return found

    def after(self, line: int) -> tuple[int, bool] | None:
        """The first hit after `line` (wrapping: then True), or None without hits."""
        if not self.hits:
            return None
        at = bisect_right(self.hits, line)
        return (self.hits[at], False) if at < len(self.hits) else (self.hits[0], True)

    def before(self, line: int) -> tuple[int, bool] | None:
        """The last hit before `line` (wrapping: then True), or None without hits."""
        if not self.hits:
            return None
        at = bisect_left(self.hits, line)
        return (self.hits[at - 1], False) if at > 0 else (self.hits[-1], True)

    def rank(self, line: int) -> int:
        """1 for the first hit, for "match 3 of 17"."""
        return bisect_left(self.hits, line) + 1
