"""gate.py reads config files itself (it may not run git: see its docstring): the
keys it follows must come out as git reads them."""

from __future__ import annotations

import subprocess

import pytest

from minipipe_svc.gate import named_paths, parse_config

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
