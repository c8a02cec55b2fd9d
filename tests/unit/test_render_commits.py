"""How a run's recorded commits are shown to a reviewer (render.commit_lines)."""

from __future__ import annotations

from minipipe_svc.render import commit_lines, diff_after_commits

MERGE = {"sha": "m" * 40, "parents": ["a" * 40, "b" * 40], "author": "ann <ann@x>",
         "author_date": "2026-01-01T00:00:00+00:00", "committer": "cid <cid@x>",
         "committer_date": "2026-01-02T00:00:00+00:00", "subject": "merge side",
         "headers": ["encoding UTF-7", "x-note one\n two"],
         "message": "merge side\n\nRelease-As: 9.0.0", "cut": []}


def test_each_commit_whole_as_git_log_fuller_shows_it() -> None:
    """Only `commit <id>` starts at the left edge, and what the commit carries
    follows a gutter: no header or message line can start a patch for `git apply`
    or GNU patch of the piped diff."""
    assert commit_lines({"commits": [MERGE], "commit_count": 1}) == [
        f"commit {'m' * 40}", f"Merge:      {'a' * 12} {'b' * 12}",
        "Author:     ann <ann@x>   2026-01-01T00:00:00+00:00",
        "Commit:     cid <cid@x>   2026-01-02T00:00:00+00:00",
        "Header:     encoding UTF-7", "Header:     x-note one", "           |  two", "",
        "    | merge side", "    | ", "    | Release-As: 9.0.0", ""]


def test_what_was_not_recorded_is_said() -> None:
    cut = {**MERGE, "parents": ["a" * 40], "message": "x" * 10, "cut": ["author", "message"]}
    lines = commit_lines({"commits": [cut], "commit_count": 3})
    assert "Merge:" not in "\n".join(lines)
    assert any(line.startswith("    (more of this commit's author and message lands than")
               for line in lines)
    assert lines[-2] == "(and 2 older commits minipipe did not record)"


def test_a_commit_recorded_by_an_older_minipipe() -> None:
    old = {"sha": "c" * 40, "author": "bob", "subject": "greet"}
    assert commit_lines({"commits": [old], "commit_count": 1}) == [
        f"commit {'c' * 40}", "Author:     bob", "", "    | greet", ""]


def test_the_diff_drops_its_commit_line_only_after_that_commit() -> None:
    data = f"commit {'m' * 40}\ndiff --git a/x b/x\n".encode()
    assert diff_after_commits(data, {"commits": [MERGE]}) == b"diff --git a/x b/x\n"
    assert diff_after_commits(data, {"commits": []}) == data
    other = {**MERGE, "sha": "n" * 40}
    assert diff_after_commits(data, {"commits": [other]}) == data
