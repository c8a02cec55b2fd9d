"""The review gate's question: may a user write any part of a repository?

If they may, no review holds: a step of theirs could move the repository's branches,
add objects its index lies about, or set config, hooks, attributes or a filter that
runs their command as whoever lands next. "Write" counts every way to change what a
path is: writing or owning it (an owner may chmod), or writing a directory on the
way to it, lexically or after links (rename it away, put another in its place, or
create it where it does not exist yet). A sticky directory the user does not own
protects the entries others own.

The parts: the repository's path and `.git`; its git directory, every file and
directory under it with links followed (the targets' directories too); every file
its config includes, found or not yet created, relative includes resolved from the
file that names them; the hooks, attributes, programs and filters its config names;
its object store's alternates, and theirs.

This file runs as a script of its own (`python3 -I gate.py REPO`), as the user, so
their groups and ACLs count: it prints `writable: PATH` for the first part found,
or nothing; status 1 if the repository cannot be read. Standard library only.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys

GIT = ("git", "-c", "safe.directory=*", "-c", "protocol.allow=never")
MAX_ALTERNATE_DEPTH = 5  # as git's own limit
# Config keys that name a file git reads or a program it runs (names lowercased,
# as `git config --list` prints them; subsections kept).
PROGRAM_KEYS = re.compile(
    r"(core\.(hookspath|attributesfile|fsmonitor|sshcommand|askpass|editor|pager)"
    r"|filter\..*\.(clean|smudge|process)|diff\..*\.(command|textconv)"
    r"|merge\..*\.driver|gpg\.(.*\.)?program|credential\.(.*\.)?helper"
    r"|sequence\.editor|alias\..*|pager\..*)", re.IGNORECASE)
INCLUDE_KEYS = re.compile(r"include(if\..*)?\.path", re.IGNORECASE)


def mine(path: str) -> bool:
    """The user may write `path` (links followed) or owns it."""
    try:
        owner = os.stat(path).st_uid
    except OSError:
        return False
    return owner == os.geteuid() or os.access(path, os.W_OK)


def protected(parent: str, child: str) -> bool:
    """`parent` is sticky and not the user's, and `child` exists and is another's:
    then writing `parent` does not let the user rename or replace `child`."""
    try:
        info = os.stat(parent)
        if not info.st_mode & stat.S_ISVTX or info.st_uid == os.geteuid():
            return False
        return os.lstat(child).st_uid != os.geteuid()
    except OSError:
        return False


def exposed(path: str) -> str | None:
    """The part through which the user could change what `path` is or holds, if any:
    the path itself, or a directory on the way to it (as written, and resolved)."""
    if os.path.lexists(path) and mine(path):
        return path
    for walk in dict.fromkeys((path, os.path.realpath(path))):
        child = walk
        while (parent := os.path.dirname(child)) != child:
            if os.path.isdir(parent) and mine(parent) and not protected(parent, child):
                return parent
            child = parent
    return None


def tree(path: str) -> str | None:
    """Like `exposed`, for `path` and everything under it, links followed."""
    found = exposed(path)
    if found or not os.path.isdir(path):
        return found
    seen: set[str] = set()
    for root, dirs, files in os.walk(path, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:  # a link loop, or the same directory twice
            dirs[:] = []
            continue
        seen.add(real)
        for name in dirs + files:
            full = os.path.join(root, name)
            if mine(full):
                return full
            if os.path.islink(full) and (found := exposed(os.path.realpath(full))):
                return found
    return None


def git(repo: str, *args: str) -> bytes:
    return subprocess.run([*GIT, "-C", repo, *args], capture_output=True, check=False,
                          stdin=subprocess.DEVNULL).stdout


def config_entries(repo: str) -> list[tuple[str, str, str]]:
    """(origin file, key, value) of the repository's config, includes followed."""
    fields = git(repo, "config", "--local", "--includes", "--show-origin", "-z",
                 "--list").split(b"\0")
    entries = []
    for origin, entry in zip(fields[0::2], fields[1::2], strict=False):
        origin_text = os.fsdecode(origin)
        if not origin_text.startswith("file:"):
            continue
        key, _, value = os.fsdecode(entry).partition("\n")
        entries.append((os.path.join(repo, origin_text.removeprefix("file:")), key, value))
    return entries


def named_paths(value: str) -> list[str]:
    """The absolute paths in a config value that is a command line (or a path)."""
    words = value.replace("'", " ").replace('"', " ").lstrip("!").split()
    return [word for word in words if word.startswith("/")]


def config_parts(repo: str, entries: list[tuple[str, str, str]]) -> str | None:
    for origin in dict.fromkeys(origin for origin, _, _ in entries):
        if found := exposed(origin):
            return found
    for origin, key, value in entries:
        if value.startswith("~"):
            continue  # the home of whoever runs git: their own files
        if INCLUDE_KEYS.fullmatch(key):
            # relative to the file that names it; one not there yet counts too
            found = exposed(os.path.join(os.path.dirname(origin), value))
        elif key.lower() == "core.hookspath":
            found = tree(os.path.join(repo, value))
        elif PROGRAM_KEYS.fullmatch(key):
            found = next(filter(None, map(exposed, named_paths(value))), None)
        else:
            continue
        if found:
            return found
    return None


def alternates(objects: str, depth: int = 0) -> str | None:
    """Every object store `objects` borrows from, and theirs, as git follows them."""
    try:
        with open(os.path.join(objects, "info", "alternates"), encoding="utf-8",
                  errors="surrogateescape") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    for line in lines:
        if not line.strip() or line.startswith("#"):
            continue
        path = os.path.normpath(os.path.join(objects, line))
        found = tree(path) or (depth < MAX_ALTERNATE_DEPTH and alternates(path, depth + 1))
        if found:
            return found
    return None


def writable_part(repo: str) -> str | None:
    """The first part of `repo` this user may write, or None. OSError if the
    repository cannot be read."""
    for part in (repo, os.path.join(repo, ".git")):
        if found := exposed(part):
            return found
    common = os.fsdecode(git(repo, "rev-parse", "--path-format=absolute",
                             "--git-common-dir")).strip()
    if not common.startswith("/"):
        raise OSError(f"{repo} is not a git repository this user may read")
    return (tree(common) or config_parts(repo, config_entries(repo))
            or alternates(os.path.join(common, "objects")))


def main(argv: list[str]) -> int:
    try:
        found = writable_part(argv[1])
    except OSError as exc:
        print(exc, file=sys.stderr)
        return 1
    if found:
        print(f"writable: {found}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
