"""gate.py reads config files itself (it may not run git: see its docstring): the
keys it follows must come out as git reads them."""

from __future__ import annotations

import os
import subprocess

import pytest

from minipipe_svc.gate import Unsure, named_paths, parse_config, program_part

CONFIG = r"""
# a comment
[core]
	bare = false
	hooksPath = "/srv/hooks" ; trailing comment
[include]
	path = team.gitconfig
[includeIf "gitdir:/srv/Git/"]
	path = ~dave/app.gitconfig
[filter "LFS"]
	smudge = git-lfs smudge -- %f
	clean = "/usr/bin/x \"quoted\"" \
--more
[Section.Sub]
	Flag
"""


def test_keys_and_values_as_git_reads_them() -> None:
    entries = parse_config(CONFIG)
    assert ("core.hookspath", "/srv/hooks") in entries
    assert ("include.path", "team.gitconfig") in entries
    assert ("includeif.gitdir:/srv/Git/.path", "~dave/app.gitconfig") in entries
    assert ("filter.LFS.smudge", "git-lfs smudge -- %f") in entries
    assert ("section.sub.flag", "true") in entries


# What git 2.39 reads and a line-based parser did not (red team, round 5): each must
# come out as git reads it, with the include that follows.
TRICKY = {
    "a comment ending in a backslash": "[core]\n\tx = true  # N:\\git\\\n[include]\n",
    "a tab before the subsection": '[includeIf\t"onbranch:main"]\n',
    "a byte order mark": "\ufeff[include]\n",
    "two headers on a line": "[core] [include]\n",
    "a carriage return before the subsection": '[includeIf\r"onbranch:main"]\n',
    "CRLF lines": "[core]\r\n\tx = 1\r\n[include]\r\n",
}


@pytest.mark.parametrize("case", sorted(TRICKY))
def test_the_includes_git_follows_are_found(tmp_path, case: str) -> None:
    text = TRICKY[case] + "\tpath = /srv/team/app.gitconfig\n"
    assert parse_config(text) == git_reads(tmp_path, text)
    assert any(key.endswith(".path") and value == "/srv/team/app.gitconfig"
               for key, value in parse_config(text))


def git_reads(tmp_path, text: str) -> list[tuple[str, str]]:
    """What `git config --list` reads of `text` (git as the reference, in a test)."""
    path = tmp_path / "config"
    path.write_bytes(text.encode())
    listed = subprocess.run(["git", "config", "--file", str(path), "--no-includes", "-z",
                             "--list"], capture_output=True, check=True).stdout
    # (a key without "=" git lists bare; it means true)
    return [(*entry.decode().split("\n", 1), "true")[:2] for entry in listed.split(b"\0")
            if entry]


@pytest.mark.parametrize("text", ['[core "a\nb"]\n', "[core]\n\tx = \\q\n",
                                  '[core]\n\tx = "open\n', "[ core]\n", "[core]\n\t= x\n"])
def test_what_it_cannot_read_surely_it_says_so(text: str) -> None:
    with pytest.raises(Unsure):
        parse_config(text)


def test_git_agrees(tmp_path) -> None:
    """The same file through `git config --list` (git as the reference, in a test)."""
    path = tmp_path / "config"
    path.write_text(CONFIG)
    listed = subprocess.run(["git", "config", "--file", str(path), "--no-includes", "-z",
                             "--list"], capture_output=True, check=True).stdout
    # (a key without "=" git lists bare; it means true)
    want = [(*entry.decode().split("\n", 1), "true")[:2] for entry in listed.split(b"\0")
            if entry]
    assert parse_config(CONFIG) == want


@pytest.mark.parametrize(("value", "paths"), [
    ("/usr/bin/gpg", ["/usr/bin/gpg"]),
    ("sh -c 'x' --rcfile=/srv/team/rc", ["/srv/team/rc"]),
    ("tool -F/srv/team/f ~alice/bin/y", ["/srv/team/f", "~alice/bin/y"]),
    ("!/srv/alias.sh arg", ["/srv/alias.sh"]),
    ("git-lfs smudge -- %f", []),
])
def test_the_paths_a_command_names(value: str, paths: list[str]) -> None:
    assert named_paths(value) == paths


@pytest.mark.parametrize("value", [
    "sh", "sh strip.sh", "sh -s", '"/usr/bin/python3" -m nbstripout', "python3 -c x",
    "tools/filter %f", "cd /srv/tools && ./fmt", "x $(y)", "filter 'quoted'", 'a "open',
])
def test_commands_a_landing_may_run_that_it_cannot_vet(value: str) -> None:
    """(A filter or merge driver runs as the lander: only plain programs pass.)"""
    with pytest.raises(Unsure):
        program_part("filter.x.smudge", value)


def test_a_bare_argument_naming_a_file_where_git_runs_it_cannot_be_vetted(tmp_path) -> None:
    (tmp_path / "strip").write_text("")
    with pytest.raises(Unsure, match="'strip'"):
        program_part("filter.x.smudge", "tool strip", str(tmp_path))
    assert program_part("filter.x.smudge", "git-lfs smudge -- %f", str(tmp_path)) is None


@pytest.mark.parametrize("value", [
    "timeout 10 sh strip.sh", "nice -n 5 perl strip.pl", "/usr/bin/env python3 strip.py",
    "make -s smudge", "m4 filter.m4", "npx prettier --stdin-filepath %f",
    "/usr/bin/yarn run fmt", 'script -qec "sh strip.sh"', 'sg team "tool strip.sh"',
    '/usr/bin/tool --run "python3 x.py"',
    "PYTHONPATH=. /usr/local/bin/strip", "LD_PRELOAD=/tmp/x.so tool",
])
def test_wrappers_interpreters_anywhere_and_environments_cannot_be_vetted(value: str) -> None:
    with pytest.raises(Unsure):
        program_part("filter.x.smudge", value)


def test_a_bare_argument_the_landing_itself_adds_cannot_be_vetted(tmp_path) -> None:
    """The file does not exist in the work tree yet: the landing writes it before git
    runs the filter on the files after it."""
    assert program_part("filter.x.smudge", "tool strip %f", str(tmp_path)) is None
    with pytest.raises(Unsure, match="'strip'"):
        program_part("filter.x.smudge", "tool strip %f", str(tmp_path), frozenset({"strip"}))


def as_nobody(question) -> str:
    """`question()`'s answer as an unprivileged user would get it (root may write
    every path, so any absolute path would be named)."""
    if os.geteuid() != 0:
        return repr(question())
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                said = repr(question())
            except Unsure as exc:
                said = f"Unsure: {exc}"
            os.write(write, said.encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as answer:
        said = answer.read().decode()
    os.waitpid(pid, 0)
    return said


@pytest.mark.parametrize("value", [
    "git-lfs smudge -- %f", '"/usr/bin/git-crypt" smudge', "/usr/bin/tool --mode=/usr/share/x",
    "/usr/bin/sh /usr/lib/git-core/git-sh-setup %f",
])
def test_plain_programs_and_interpreters_on_absolute_paths_pass(value: str) -> None:
    assert as_nobody(lambda: program_part("filter.x.smudge", value, "/nonexistent",
                                          frozenset({"README"}))) == "None"


def test_a_package_runner_may_be_a_merge_driver_not_a_filter() -> None:
    """merge-tree writes no work tree before a driver runs; a checkout does before
    it smudges the next file (npx finds node_modules/.bin/x there first)."""
    driver = "npx npm-merge-driver merge %A %O %B %P"
    assert program_part("merge.npm-merge-driver.driver", driver) is None
    with pytest.raises(Unsure, match="package runner"):
        program_part("filter.fmt.smudge", "npx prettier --stdin-filepath %f")
