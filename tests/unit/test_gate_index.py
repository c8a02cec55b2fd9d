"""gate.index_paths reads git's index itself (the gate may not run git): the paths
must come out as `git ls-files` lists them, for every index version git writes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from minipipe_svc.gate import index_paths, parent_directories, tracked_directories

NAMES = ["README", "a/b/c.txt", "a/b/d.txt", "a/e.txt", "deep/" + "x" * 120 + "/f",
         "sp ace/é.txt", "z.txt"]


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout


def make(tmp_path: Path, *init: str) -> Path:
    repo = tmp_path / "repo"
    git(tmp_path, "init", "-q", *init, str(repo))
    for name in NAMES:
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(name)
    git(repo, "add", ".")
    return repo


def listed(repo: Path) -> list[str]:
    return [name for name in git(repo, "-c", "core.quotePath=false", "ls-files", "-z")
            .split("\0") if name]


@pytest.mark.parametrize("version", ["2", "3", "4"])
def test_every_index_version_reads_as_git_lists_it(tmp_path: Path, version: str) -> None:
    repo = make(tmp_path)
    git(repo, "update-index", "--index-version", version)
    if version == "3":  # an entry with extended flags (intent to add)
        (repo / "new.txt").write_text("new")
        git(repo, "add", "--intent-to-add", "new.txt")
    data = (repo / ".git" / "index").read_bytes()
    assert int.from_bytes(data[4:8], "big") == int(version)
    assert index_paths(data) == listed(repo)


def test_a_sha256_repository(tmp_path: Path) -> None:
    repo = make(tmp_path, "--object-format=sha256")
    assert index_paths((repo / ".git" / "index").read_bytes(), 32) == listed(repo)


def test_what_it_cannot_read_surely_is_none(tmp_path: Path) -> None:
    repo = make(tmp_path)
    git(repo, "update-index", "--split-index")
    assert index_paths((repo / ".git" / "index").read_bytes()) is None
    assert index_paths(b"DIRC\0\0\0\x09\0\0\0\0") is None  # an unknown version
    assert index_paths(b"not an index") is None
    (tmp_path / "other").mkdir()
    data = (make(tmp_path / "other") / ".git" / "index").read_bytes()
    assert index_paths(data[:100]) is None  # cut short


def test_the_directories_paths_go_through() -> None:
    assert parent_directories(["README", "a/b/c.txt", "a/e.txt"]) == {"a", "a/b"}


def test_a_split_index_is_read_with_its_shared_index(tmp_path: Path) -> None:
    repo = make(tmp_path)
    git(repo, "update-index", "--split-index")
    (repo / "b" / "c").mkdir(parents=True)
    (repo / "b" / "c" / "new.txt").write_text("new")
    git(repo, "add", "b")  # in the split part; the rest in sharedindex.<id>
    assert list((repo / ".git").glob("sharedindex.*"))
    assert tracked_directories(str(repo / ".git" / "index"), 20) == parent_directories(
        listed(repo))


def test_a_submodule_counts_whole(tmp_path: Path) -> None:
    """A gitlink is one path; everything at and under it is the submodule's (its
    `.git` too), where a git may start: marked with a trailing "/"."""
    repo = make(tmp_path)
    sub = repo / "vendor" / "lib"
    git(tmp_path, "init", "-q", str(sub))
    (sub / "a.txt").write_text("a")
    git(sub, "add", ".")
    git(sub, "-c", "user.name=t", "-c", "user.email=t@x", "commit", "-qm", "sub")
    git(repo, "add", "vendor/lib")
    assert tracked_directories(str(repo / ".git" / "index"), 20) == {
        "a", "a/b", "deep", "deep/" + "x" * 120, "sp ace", "vendor", "vendor/lib/"}
