"""The review gate's question: may a user change any part of a repository?

If they may, no review holds: a step of theirs could move the repository's branches,
add objects its index lies about, or set config, hooks, attributes or a filter that
runs their command as whoever lands next. "Change" counts every way to change what a
path is: writing or owning it (an owner may chmod), or writing a directory on the way
to it, through every link hop (rename it away, put another in its place, or create
it where it does not exist yet). A sticky directory the user does not own protects
the entries others own.

The parts: the repository's path and `.git`; its git directory, every file and
directory under it with links followed; every config file git may read for it (the
repository's `config`, each worktree's `config.worktree`, and every file they
include, whatever the condition, found or not yet created, relative includes from
the file that names them, `~user/` from that user's home); the hooks, attributes,
programs and filters that config names; its object store's alternates, and theirs;
every directory of its checked-out work trees (landing updates a checked-out
target there, and git reads `.gitattributes` it finds in them). Where the user may
not look (a directory they cannot list, a config file they cannot read), the answer
is "cannot tell", never "no".

This file runs as a script of its own (`python3 -I gate.py REPO`), as the user, with
all their groups: it prints `writable: PATH` for the first part found, or
`unreadable: PATH`, or nothing; status 1 if the repository cannot be read. Standard
library only.
"""

from __future__ import annotations

import os
import pwd
import re
import stat
import subprocess
import sys

GIT = ("git", "-c", "safe.directory=*", "-c", "protocol.allow=never")
MAX_ALTERNATE_DEPTH = 5  # as git's own limit
MAX_LINK_HOPS = 40       # as the kernel's
MAX_CONFIG_FILES = 200
# Config keys that name a file git reads or a program it runs (names lowercased,
# as `git config --list` prints them; subsections kept).
PROGRAM_KEYS = re.compile(
    r"(core\.(attributesfile|fsmonitor|sshcommand|askpass|editor|pager|excludesfile)"
    r"|filter\..*\.(clean|smudge|process)|diff\..*\.(command|textconv)"
    r"|merge\..*\.driver|gpg\.(.*\.)?program|credential\.(.*\.)?helper"
    r"|sequence\.editor|alias\..*|pager\..*|core\.alternaterefscommand"
    r"|uploadpack\.packobjectshook|mergetool\..*\.(cmd|path)|difftool\..*\.(cmd|path))",
    re.IGNORECASE)
INCLUDE_KEYS = re.compile(r"include(if\..*)?\.path", re.IGNORECASE)


class Unreadable(Exception):
    """A part the user may not look at: the gate cannot tell."""


def mine(path: str) -> bool:
    """The user may write `path` (links followed) or owns it."""
    try:
        owner = os.stat(path).st_uid
    except OSError:
        return False
    return owner == os.geteuid() or os.access(path, os.W_OK)


def through(parent: str, child: str) -> str | None:
    """What the user could change on the way from `parent` to `child`: `parent`
    if they may write it, except a sticky directory not theirs, where they may only
    rename or replace `child` if it is theirs (then `child`) or create it if absent."""
    if not mine(parent):
        return None
    try:
        info = os.stat(parent)
        if not info.st_mode & stat.S_ISVTX or info.st_uid == os.geteuid():
            return parent
        owner = os.lstat(child).st_uid
    except FileNotFoundError:
        return parent
    except OSError:
        return parent  # cannot tell: counted
    return child if owner == os.geteuid() else None


def exposed(path: str, hops: int = 0) -> str | None:
    """The part through which the user could change what `path` is or holds, if any:
    the path itself, or a directory it goes through, walked one component and one
    link hop at a time (each link's own directory counts)."""
    if hops > MAX_LINK_HOPS:
        return path  # a link loop: the user may have made it
    if os.path.lexists(path) and mine(path):
        return path
    parts = [part for part in path.split("/") if part and part != "."]
    current = "/"
    for index, name in enumerate(parts):
        if name == "..":
            current = os.path.dirname(current)
            continue
        child = os.path.join(current, name)
        if found := through(current, child):
            return found
        if os.path.islink(child):
            target = os.path.join(current, os.readlink(child))  # relative to the link
            return exposed("/".join([target, *parts[index + 1:]]), hops + 1)
        if not os.path.lexists(child):
            return None  # created only by who may write `current`: checked
        current = child
    return None


def _walk_error(error: OSError) -> None:
    raise Unreadable(error.filename or str(error))


def _walk_error_reachable(error: OSError) -> None:
    """In a work tree: a directory the user cannot enter hides nothing they could
    reach; one they may enter but not list may hide one they may write."""
    if error.filename and not os.access(error.filename, os.X_OK):
        return
    _walk_error(error)


def tree(path: str) -> str | None:
    """Like `exposed`, for `path` and everything under it, links followed."""
    found = exposed(path)
    if found or not os.path.isdir(path):
        return found
    seen: set[str] = set()
    for root, dirs, files in os.walk(path, followlinks=True, onerror=_walk_error):
        real = os.path.realpath(root)
        if real in seen:  # a link loop, or the same directory twice
            dirs[:] = []
            continue
        seen.add(real)
        for name in dirs + files:
            full = os.path.join(root, name)
            if mine(full):
                return full
            if os.path.islink(full) and (found := exposed(full)):
                return found
    return None


def directories(path: str) -> str | None:
    """`path` and every directory under it (not following links): a work tree,
    where the user must not be able to create files."""
    found = exposed(path)
    if found or not os.path.isdir(path):
        return found
    for root, dirs, _files in os.walk(path, onerror=_walk_error_reachable):
        for name in dirs:
            if mine(os.path.join(root, name)):
                return os.path.join(root, name)
    return None


def git(repo: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*GIT, "-C", repo, *args], capture_output=True, check=False,
                          stdin=subprocess.DEVNULL)


def expand(value: str, base: str) -> str | None:
    """A path as git reads it from config: `~user/` from that user's home, relative
    to `base`. None for `~/`: the home of whoever runs git (the lander's own)."""
    if value.startswith("~/") or value == "~":
        return None
    if value.startswith("~"):
        user, _, rest = value[1:].partition("/")
        try:
            return os.path.join(pwd.getpwnam(user).pw_dir, rest)
        except KeyError:
            return None  # git refuses such a path
    if value.startswith("%(prefix)/"):
        return "/usr/" + value.removeprefix("%(prefix)/")
    return os.path.join(base, value)


def named_paths(value: str) -> list[str]:
    """The paths in a config value that is a command line (or a path)."""
    words = value.replace("'", " ").replace('"', " ").lstrip("!").split()
    return [word for word in words if word.startswith(("/", "~"))]


def config_entries(repo: str, path: str) -> list[tuple[str, str]]:
    """(key, value) of one config file, its includes not followed."""
    result = git(repo, "config", "--file", path, "--no-includes", "-z", "--list")
    if result.returncode != 0:
        raise Unreadable(path)
    entries = []
    for entry in result.stdout.split(b"\0"):
        if entry:
            key, _, value = os.fsdecode(entry).partition("\n")
            entries.append((key, value))
    return entries


def config_parts(repo: str, common: str) -> str | None:
    """Every config file git may read for the repository, followed through every
    include whatever its condition, and what their values name."""
    queue = [os.path.join(common, "config"), os.path.join(common, "config.worktree")]
    worktrees = os.path.join(common, "worktrees")
    if os.path.isdir(worktrees):
        queue += [os.path.join(worktrees, name, "config.worktree")
                  for name in sorted(os.listdir(worktrees))]
    seen: set[str] = set()
    while queue:
        path = queue.pop(0)
        if path in seen:
            continue
        seen.add(path)
        if len(seen) > MAX_CONFIG_FILES:
            raise Unreadable(path)
        if found := exposed(path):
            return found
        if not os.path.exists(path):
            continue
        for key, value in config_entries(repo, path):
            if INCLUDE_KEYS.fullmatch(key):
                if (target := expand(value, os.path.dirname(path))) is not None:
                    queue.append(target)
            elif key.lower() == "core.hookspath":
                if (target := expand(value, repo)) is not None and (found := tree(target)):
                    return found
            elif PROGRAM_KEYS.fullmatch(key):
                for word in named_paths(value):
                    if (target := expand(word, "/")) is not None and (found := exposed(target)):
                        return found
    return None


def unquote(line: str) -> str:
    """An alternates line as git reads it: C-quoted when it starts with a quote."""
    if not line.startswith('"'):
        return line
    body = line[1:].rsplit('"', 1)[0]
    escapes = {"n": "\n", "t": "\t", "\\": "\\", '"': '"', "a": "\a", "b": "\b",
               "f": "\f", "r": "\r", "v": "\v"}
    out, i = bytearray(), 0
    while i < len(body):
        char = body[i]
        if char == "\\" and i + 1 < len(body):
            following = body[i + 1]
            if following in "0123":
                out.append(int(body[i + 1:i + 4], 8))
                i += 4
                continue
            out += escapes.get(following, following).encode()
            i += 2
            continue
        out += char.encode("utf-8", "surrogateescape")
        i += 1
    return os.fsdecode(bytes(out))


def alternates(objects: str, depth: int = 0) -> str | None:
    """Every object store `objects` borrows from, and theirs, as git follows them."""
    try:
        with open(os.path.join(objects, "info", "alternates"), encoding="utf-8",
                  errors="surrogateescape") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise Unreadable(os.path.join(objects, "info", "alternates")) from exc
    for line in lines:
        if not line.strip() or line.startswith("#"):
            continue
        path = os.path.normpath(os.path.join(objects, unquote(line)))
        found = tree(path) or (depth < MAX_ALTERNATE_DEPTH and alternates(path, depth + 1))
        if found:
            return found
    return None


def work_trees(repo: str) -> list[str]:
    """The repository's checked-out work trees (none for a bare one)."""
    listing = git(repo, "worktree", "list", "--porcelain", "-z").stdout
    paths, path = [], None
    for field in [*listing.split(b"\0"), b""]:
        text = os.fsdecode(field)
        if not text:
            path = None
        elif text.startswith("worktree "):
            path = text.removeprefix("worktree ")
            paths.append(path)
        elif text == "bare" and path in paths:
            paths.remove(path)
    return paths


def writable_part(repo: str) -> str | None:
    """The first part of `repo` this user may change, or None. OSError if the
    repository cannot be read; Unreadable where the user may not look."""
    for part in (repo, os.path.join(repo, ".git")):
        if found := exposed(part):
            return found
    common = os.fsdecode(git(repo, "rev-parse", "--path-format=absolute",
                             "--git-common-dir").stdout).strip()
    if not common.startswith("/"):
        raise OSError(f"{repo} is not a git repository this user may read")
    return (tree(common) or config_parts(repo, common)
            or alternates(os.path.join(common, "objects"))
            or next(filter(None, (directories(path) for path in work_trees(repo))), None))


def main(argv: list[str]) -> int:
    try:
        found = writable_part(argv[1])
    except Unreadable as exc:
        print(f"unreadable: {exc}")
        return 0
    except OSError as exc:
        print(exc, file=sys.stderr)
        return 1
    if found:
        print(f"writable: {found}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
