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
the file that names them, `~/` from the repository owner's home (the lander owns
it), `~user/` from that user's); the hooks, attributes, programs and filters that
config names; its object store's alternates, and theirs; every directory of its
work trees that tracked paths go through (landing updates a checked-out target
there, and git reads the `.gitattributes` it finds on the way; the paths are read
from the index, `index_paths`; every directory where it cannot read it surely).
Where the user may not look (a directory they cannot list or search, a config file
they cannot read), the answer is "cannot tell", never "no".

Asked in a child forked from root that became the user (all their groups, so
groups and ACLs count) and never executes anything: a process the user could
ptrace (anything they exec) could be made to answer "no". So this module finds the
git directory, the work trees and the config itself, without git (`writable_part`,
at submit, when the steps end and before landing). Its parser can only approximate
git's; at landing, `listing_part` checks what the lander's own git says it reads
there (review.RunWorkspace.vetting), exactly.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shlex
import stat
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Any, NamedTuple

MAX_ALTERNATE_DEPTH = 5  # as git's own limit
MAX_LINK_HOPS = 40       # as the kernel's
MAX_CONFIG_FILES = 200
MAX_CONFIG_BYTES = 64 << 20  # what it reads of one file; more: cannot tell
# Config keys that name a file git reads or a program it runs (names lowercased,
# as `git config --list` prints them; subsections kept); filters and merge drivers,
# which a landing may run, are LANDING_PROGRAM_KEYS, held to more (program_part).
PROGRAM_KEYS = re.compile(
    r"(core\.(attributesfile|fsmonitor|sshcommand|askpass|editor|pager|excludesfile)"
    r"|diff\..*\.(command|textconv)"
    r"|gpg\.(.*\.)?program|credential\.(.*\.)?helper"
    r"|sequence\.editor|alias\..*|pager\..*|core\.alternaterefscommand"
    r"|uploadpack\.packobjectshook|mergetool\..*\.(cmd|path)|difftool\..*\.(cmd|path))",
    re.IGNORECASE)
INCLUDE_KEYS = re.compile(r"include(if\..*)?\.path", re.IGNORECASE)


class Unreadable(Exception):
    """A part the user may not look at: the gate cannot tell."""


class Unsure(OSError):
    """Config this parser does not read as surely as git would: cannot tell."""


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
    for current, child, rest in _steps(path):
        if found := through(current, child):
            return found
        if os.path.islink(child):
            return exposed(_past_link(current, child, rest), hops + 1)
        if not os.path.lexists(child):
            return None  # created only by who may write `current`: checked
    return None


def _steps(path: str) -> Iterator[tuple[str, str, list[str]]]:
    """Walking `path` from `/` one component at a time: each directory, its entry
    on the way, and the components after that entry (`..` taken as it comes)."""
    parts = [part for part in path.split("/") if part and part != "."]
    current = "/"
    for index, name in enumerate(parts):
        if name == "..":
            current = os.path.dirname(current)
            continue
        child = os.path.join(current, name)
        yield current, child, parts[index + 1:]
        current = child


def _past_link(current: str, link: str, rest: list[str]) -> str:
    """The path once `link` (an entry of `current`) is followed: its target,
    relative to the link's directory, then the components after it. OSError if it
    cannot be read."""
    return "/".join([os.path.join(current, os.readlink(link)), *rest])


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
    if found or not _is_dir(path):
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


def _is_dir(path: str) -> bool:
    """Whether `path` is a directory (links followed); Unreadable if the user may
    not tell (a directory on the way they may not search)."""
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:
        raise Unreadable(path) from exc


def _read(path: str) -> str | None:
    """A file's text, None if it does not exist; Unreadable if the user may not read
    it (or not tell whether it exists)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise Unreadable(path) from exc
    if len(data) > MAX_CONFIG_BYTES:
        raise Unsure(f"{path} is over {MAX_CONFIG_BYTES >> 20} MiB")
    return data.decode("utf-8", "surrogateescape")


def directories(path: str, tracked: Collection[str] | None = None) -> str | None:
    """`path` and the directories under it (not following links) where git reads
    (`.gitattributes`) or writes files in a work tree, which the user must not be
    able to change: with `tracked` (the directories its tracked paths go through,
    relative), those; else every one. A team's ignored `build/` is none of git's."""
    found = exposed(path)
    if found or not _is_dir(path):
        return found
    if tracked is not None:
        for name in sorted(tracked):
            full = os.path.join(path, name.rstrip("/"))
            if name.endswith("/"):  # a submodule: all of it, its .git's files too
                if (found := directories(full)) or (found := tree(os.path.join(full, ".git"))):
                    return found
            elif not os.path.islink(full) and mine(full):
                return full
        return None
    for root, dirs, _files in os.walk(path, onerror=_walk_error_reachable):
        for name in dirs:
            full = os.path.join(root, name)
            # (a link is not a directory to git: it never writes or reads through it)
            if not os.path.islink(full) and mine(full):
                return full
    return None


def parent_directories(paths: Iterable[str]) -> set[str]:
    """Every directory the (relative) paths go through, "" not included (pure)."""
    found: set[str] = set()
    for path in paths:
        parent = os.path.dirname(path)
        while parent and parent not in found:
            found.add(parent)
            parent = os.path.dirname(parent)
    return found


INDEX_ENTRY_FIXED = 40  # ctime, mtime, dev, ino, mode, uid, gid, size: ten 32-bit fields


GITLINK = 0o160000  # an index or tree entry that is a submodule's commit


class IndexRead(NamedTuple):
    entries: list[tuple[str, int]]  # (path, mode)
    shared: str | None              # a split index: the id of its shared index file


def read_index(data: bytes, hash_size: int = 20) -> IndexRead | None:
    """The paths (and modes) a git index of version 2 to 4 tracks, read as git's
    index-format documents it, and for a split index the shared index it names;
    None where it cannot read it surely: then the caller looks at every directory
    instead (pure)."""
    if len(data) < 12 or data[:4] != b"DIRC":
        return None
    version, count = int.from_bytes(data[4:8], "big"), int.from_bytes(data[8:12], "big")
    if version not in (2, 3, 4):
        return None
    entries, previous, at, shared = [], b"", 12, None
    try:
        for _ in range(count):
            start = at
            mode = int.from_bytes(data[at + 24:at + 28], "big")
            flags_at = at + INDEX_ENTRY_FIXED + hash_size
            flags = int.from_bytes(data[flags_at:flags_at + 2], "big")
            at = flags_at + 2 + (2 if version >= 3 and flags & 0x4000 else 0)
            if version == 4:  # the path: how much of the previous one to drop, the rest
                byte = data[at]
                strip, at = byte & 0x7F, at + 1
                while byte & 0x80:
                    byte = data[at]
                    strip, at = ((strip + 1) << 7) | (byte & 0x7F), at + 1
                if strip > len(previous):
                    return None
                end = data.index(b"\0", at)
                name = previous[:len(previous) - strip] + data[at:end]
                at = end + 1
            else:
                end = data.index(b"\0", at)
                name = data[at:end]
                at = start + ((end - start + 8) & ~7)  # NUL-padded to a multiple of 8
            if name:  # (a split index's replacing entries may have none)
                entries.append((os.fsdecode(name), mode))
            previous = name
        while at + 8 <= len(data) - hash_size:  # the extensions after the entries
            size = int.from_bytes(data[at + 4:at + 8], "big")
            if data[at:at + 4] == b"link":
                shared = data[at + 8:at + 8 + hash_size].hex()
                if len(shared) != 2 * hash_size:
                    return None
            at += 8 + size
    except (IndexError, ValueError):
        return None
    return IndexRead(entries, shared)


def index_paths(data: bytes, hash_size: int = 20) -> list[str] | None:
    """The paths of an index that is whole (not split); see read_index (pure)."""
    read = read_index(data, hash_size)
    return None if read is None or read.shared else [path for path, _ in read.entries]


def tracked_set(entries: Iterable[tuple[str, int]]) -> set[str]:
    """The directories tracked paths go through, and each submodule's path with a
    trailing "/": everything at and under it counts (its own `.git` and work tree,
    where a git of the lander's could start) (pure)."""
    found = parent_directories(path for path, _ in entries)
    found.update(f"{path}/" for path, mode in entries if mode == GITLINK)
    return found


def tracked_directories(index: str, hash_size: int) -> set[str] | None:
    """tracked_set of the index file `index` (and, split, of its shared index); None
    where it cannot tell (see read_index). Unreadable if the user may not read it."""
    read = _index_file(index, hash_size)
    if read is None or read is True:
        return None if read is None else set()  # (True: nothing checked out yet)
    entries = list(read.entries)
    if read.shared:
        shared = _index_file(os.path.join(os.path.dirname(index),
                                          f"sharedindex.{read.shared}"), hash_size)
        if not isinstance(shared, IndexRead) or shared.shared:
            return None
        entries += shared.entries  # a superset: deleted entries count too
    return tracked_set(entries)


def _index_file(path: str, hash_size: int) -> IndexRead | bool | None:
    """read_index of a file; True if there is none."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError as exc:
        raise Unreadable(path) from exc
    return read_index(data, hash_size)


def expand(value: str, base: str, home: str | None) -> str | None:
    """A path as git reads it from config: `~/` from `home` (the lander's: the
    repository's owner), `~user/` from that user's home, relative to `base`. None
    where git itself could not expand it."""
    if value == "~" or value.startswith("~/"):
        return None if home is None else os.path.join(home, value[2:])
    if value.startswith("~"):
        user, _, rest = value[1:].partition("/")
        try:
            return os.path.join(pwd.getpwnam(user).pw_dir, rest)
        except KeyError:
            return None
    if value.startswith("%(prefix)/"):
        return "/usr/" + value.removeprefix("%(prefix)/")
    return os.path.join(base, value)


PATH_WORDS = re.compile(r"""(?:^|[\s=:'"!,]|(?<=\s-\w)|(?<=^-\w))([/~][^\s'";]*)""")


def named_paths(value: str) -> list[str]:
    """The paths in a config value that is a command line (or a path): words that
    are paths, and paths after `=`, `:` or a short option (`--rcfile=/p`, `-F/p`)."""
    return PATH_WORDS.findall(value)


def parse_config(text: str) -> list[tuple[str, str]]:
    """(key, value) of a git config file, as git 2.39 reads them: `section.sub.key`
    (section and key lowercased, a quoted subsection as written), values unquoted,
    with escapes, continuation lines and comments; several headers on a line, a
    byte order mark. Includes are not followed here. Unsure where it might read the
    file otherwise than git (then the gate cannot tell)."""
    text = text.removeprefix("\ufeff")
    entries: list[tuple[str, str]] = []
    section, i, n = None, 0, len(text)
    while i < n:
        char = text[i]
        if char in " \t\r\n":
            i += 1
        elif char in "#;":
            i = _line_end(text, i)
        elif char == "[":
            section, i = _header(text, i + 1)
        elif char.isalpha() and section is not None:
            start = i
            while i < n and (text[i].isalnum() or text[i] == "-"):
                i += 1
            key = text[start:i].lower()
            while i < n and text[i] in " \t":
                i += 1
            if i < n and text[i] == "=":
                value, i = _value(text, i + 1)
            elif i >= n or text[i] in "\r\n#;":
                value = "true"
            else:
                raise Unsure(f"a line it cannot read at offset {i}")
            entries.append((f"{section}.{key}", value))
        else:
            raise Unsure(f"a line it cannot read at offset {i}")
    return entries


def _line_end(text: str, i: int) -> int:
    end = text.find("\n", i)
    return len(text) if end < 0 else end + 1


def _header(text: str, i: int) -> tuple[str, int]:
    """`[section]`, `[section "sub"]` or `[section.sub]` from after its "["."""
    start = i
    while i < len(text) and (text[i].isalnum() or text[i] in "-."):
        i += 1
    name = text[start:i].lower()
    if not name:
        raise Unsure("an empty section name")
    if i < len(text) and text[i] == "]":
        return name, i + 1
    while i < len(text) and text[i] in " \t\r":
        i += 1
    if "." in name or i >= len(text) or text[i] != '"':
        raise Unsure(f"a section header it cannot read: [{name}")
    sub, i = [], i + 1
    while i < len(text) and text[i] != '"':
        if text[i] == "\n":
            raise Unsure("a subsection across lines")
        if text[i] == "\\" and i + 1 < len(text):
            i += 1
        sub.append(text[i])
        i += 1
    if text[i + 1:i + 2] != "]":
        raise Unsure(f"a section header it cannot read: [{name} ...")
    return f"{name}.{''.join(sub)}", i + 2


def _value(text: str, i: int) -> tuple[str, int]:
    """A value from after its "=", to the end of its line (continuations joined)."""
    out: list[str] = []
    quoted, spaces, n = False, "", len(text)
    while i < n and text[i] in " \t":
        i += 1
    while i < n:
        char = text[i]
        i += 1
        if char == "\n" and not quoted:
            break
        if char == "\n":
            raise Unsure("a quoted value across lines")
        if char in "#;" and not quoted:
            i = _line_end(text, i)
            break
        if char in " \t\r" and not quoted:
            spaces += " " if out else ""  # as git: each blank a space
            continue
        out.append(spaces)
        spaces = ""
        if char == '"':
            quoted = not quoted
        elif char == "\\":
            if i >= n:
                break
            follow = text[i]
            i += 1
            if follow == "\n":
                continue  # a continuation line
            if follow not in 'ntb"\\':
                raise Unsure(f"an escape it cannot read: \\{follow}")
            out.append({"n": "\n", "t": "\t", "b": "\b"}.get(follow, follow))
        else:
            out.append(char)
    if quoted:
        raise Unsure("an unterminated quote")
    return "".join(out), i


# The config keys whose programs a landing can run (filters in a checked-out work
# tree, merge drivers in merge-tree); the others are pinned off for the lander.
LANDING_PROGRAM_KEYS = re.compile(r"filter\..*\.(clean|smudge|process)|merge\..*\.driver",
                                  re.IGNORECASE)
# Programs that run what they are given (a script, a module, a makefile, a project's
# scripts, another program): wherever one appears in a command line (`timeout 9 sh
# x`, `nice perl x`), its arguments must be absolute paths. A deny-list, so wide.
INTERPRETERS = re.compile(
    r"(ba|da|z|k|c|tc|fi|a|mk|y|o)?sh|busybox|toybox|env|python[0-9.]*|pypy[0-9.]*"
    r"|perl[0-9.]*|ruby[0-9.]*|irb|node(js)?|deno|bun|php[0-9.]*|lua(jit)?[0-9.]*"
    r"|tclsh[0-9.]*|wish[0-9.]*|expect|[gmn]?awk|sed|git|xargs|parallel"
    r"|g?make|bmake|cmake|ninja|m4|just|rake|bundle|gem"
    r"|pip[0-9.]*|uv|poetry|tox|nox|invoke|cargo|go|java|jshell|groovy"
    r"|scala|kotlinc?|dotnet|mono|R|Rscript|julia|octave|guile|racket|sbcl|clisp"
    r"|escript|elixir|erl|runghc|runhaskell|stack|swift|osascript|vim?|nvim|ex|emacs"
    r"|gdb|lldb|strace|ltrace|valgrind|qemu-.*|docker|podman|chroot|unshare|nsenter"
    r"|sudo|doas|su|sg|newgrp|script|runuser|pkexec|setpriv|setsid|nice|ionice|chrt"
    r"|taskset|timeout"
    r"|nohup|stdbuf|time|flock|watch|eatmydata|fakeroot|command|exec|builtin|eval"
    r"|source|bc|dc|jq|yq|ansible.*|salt.*|puppet|terraform|rlwrap")
# Package runners find their program in the work tree first (node_modules/.bin): as
# a filter, where a checkout may have just written it, they cannot be vetted; as a
# merge driver (merge-tree writes no work tree) they run what the lander installed.
PACKAGE_RUNNERS = re.compile(r"npx|npm|yarn|pnpm|corepack|bunx?|uvx|pipx")
FILTER_KEYS = re.compile(r"filter\..*\.(clean|smudge|process)", re.IGNORECASE)
# A leading NAME=value word sets the program's environment (PYTHONPATH=., LD_PRELOAD).
ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
SHELL_SPECIAL = frozenset(";&|$`<>(){}\\*?[]!'\n#~")


def program_part(key: str, value: str, work_tree: str | None = None,
                 adds: frozenset[str] = frozenset(), depth: int = 0) -> str | None:
    """The part of a command a landing may run that the user may change, if any.
    Only a plain command line can be vetted: a name found in PATH or an absolute path,
    then arguments that are absolute paths (also after `=`) or words naming no file
    in the work tree git runs it in, nor one the change being landed adds there
    (`adds`: the top-level names it writes); double quotes as a shell reads them.
    Anything else a shell would interpret cannot be vetted, nor an interpreter given
    anything but absolute paths, nor a leading NAME=value."""
    if SHELL_SPECIAL.intersection(value):
        raise Unsure(f"config {key} = {value!r} is a command line it cannot vet (a "
                     "landing may run it): make it a program with plain arguments")
    try:
        words = shlex.split(value)
    except ValueError:
        raise Unsure(f"config {key} = {value!r} has quotes it cannot read") from None
    for word in words[1:]:
        if any(space in word for space in " \t\n") and depth < 3:
            # One quoted word that is itself a command line (`script -c "sh x"`,
            # `sg team "x y"`): vetted as one.
            if found := program_part(key, word, work_tree, adds, depth + 1):
                return found
        elif any(space in word for space in " \t\n"):
            raise Unsure(f"config {key} = {value!r} nests command lines too deep to vet")
    if words and ASSIGNMENT.match(words[0]):
        raise Unsure(f"config {key} = {value!r} sets its program's environment, which it "
                     "cannot vet: set it in a wrapper script with an absolute path")
    for index, word in enumerate(words):
        if PACKAGE_RUNNERS.fullmatch(os.path.basename(word)) and FILTER_KEYS.fullmatch(key):
            raise Unsure(f"config {key} = {value!r} runs a package runner ({word!r}), "
                         "which finds its program where a landing writes files: give "
                         "the program's absolute path")
        if not INTERPRETERS.fullmatch(os.path.basename(word)):
            continue
        script = [later for later in words[index + 1:] if "%" not in later]
        if not script or not all(later.startswith("/") for later in script):
            # An interpreter runs what it is given: a script or module the change
            # being landed may have just written where git runs it (python -m looks
            # there first), or, given no script (or -s, -c ...), the content itself.
            # Only the absolute path of its script can be vetted.
            raise Unsure(f"config {key} = {value!r} runs an interpreter ({word!r}) on "
                         "something it cannot vet: give it the absolute path of its script")
    for index, word in enumerate(words):
        for piece in word.split("="):
            if piece.startswith("/"):
                if found := exposed(piece):
                    return found
            elif "/" in piece or (index and piece and (piece in adds or (
                    work_tree is not None and os.path.lexists(os.path.join(work_tree, piece))))):
                raise Unsure(f"config {key} = {value!r} names {piece!r}, a path relative to "
                             "where git runs it, which it cannot vet")
    return None


def listing_paths(entries: list[tuple[str, str, str]], base: str,
                  home: str | None) -> list[str]:
    """Every path listing_part looks at by name: the files the lander's git read,
    the includes they name, the absolute paths in the programs a landing runs
    (pure: what the lander resolves first, see link_facts)."""
    paths = []
    for origin, key, value in entries:
        if not origin.startswith("file:"):
            continue
        path = os.path.join(base, origin.removeprefix("file:"))
        paths.append(path)
        if INCLUDE_KEYS.fullmatch(key):
            if (target := expand(value, os.path.dirname(path), home)) is not None:
                paths.append(target)
        elif LANDING_PROGRAM_KEYS.fullmatch(key):
            paths += [word for word in named_paths(value) if word.startswith("/")]
    return list(dict.fromkeys(paths))


def link_facts(paths: list[str]) -> dict[str, dict[str, Any]]:
    """Asked as the lander, who may look where the submitter may not (their own
    0700 home): for each path, where each link on its way leads (`hops`: the whole
    path after each hop), and its real file's owner, group, mode and whether an ACL
    extends it (the submitter may reach that file by another name: a hard link)."""
    facts: dict[str, dict[str, Any]] = {}
    for path in paths:
        fact: dict[str, Any] = {"hops": link_hops(path)}
        real = os.path.realpath(path)
        try:
            info = os.stat(real)
        except OSError:
            pass
        else:
            fact.update(real=real, uid=info.st_uid, gid=info.st_gid, mode=info.st_mode)
            with contextlib.suppress(OSError):
                fact["acl"] = "system.posix_acl_access" in os.listxattr(real)
        facts[path] = fact
    return facts


def link_hops(path: str, hops: int = 0) -> list[str]:
    """The path as it reads after each link on its way is followed, in order."""
    for current, child, rest in _steps(path):
        if os.path.islink(child):
            try:
                after = _past_link(current, child, rest)
            except OSError:
                return []
            return [after, *(link_hops(after, hops + 1) if hops < MAX_LINK_HOPS else [])]
    return []


def fact_part(path: str, fact: dict[str, Any]) -> str | None:
    """What the user may change of a path the lander resolved (see link_facts)."""
    for hop in fact.get("hops", []):
        if found := exposed(hop):
            return found
    if "uid" not in fact:
        return None
    mode = int(fact["mode"])
    groups = {os.getegid(), *os.getgroups()}
    if (int(fact["uid"]) == os.geteuid() or mode & stat.S_IWOTH
            or (mode & stat.S_IWGRP and int(fact["gid"]) in groups)):
        return str(fact["real"])
    if fact.get("acl"):
        raise Unsure(f"{fact['real']} (read for {path}) has an ACL it cannot read")
    return None


def listing_part(entries: list[tuple[str, str, str]], base: str, home: str | None,
                 work_tree: str | None, adds: frozenset[str] = frozenset(),
                 tracked: Collection[str] | None = None,
                 facts: dict[str, dict[str, Any]] | None = None,
                 trusted_filters: Collection[str] = ()) -> str | None:
    """What the user may change of what the lander's git reads, as that git listed it
    (`git config --list --show-origin --includes`, run as the lander where it will
    land): every file it read, every include it names (read or not, found or not),
    and, as the lander resolved them (`facts`: where the user may not look, a link
    may still lead to a file of theirs), the programs a landing can run (`adds`:
    see program_part), and the work tree it will update, if any (`tracked`: the
    directories of its paths, before and after the landing, as the lander's git
    lists them; see directories). In a work tree, a filter must be one of
    `trusted_filters`: git runs it there after it wrote the change's files, and what
    a program reads on its own there (a formatter's config, a task file) no word of
    its command line says."""
    for path, fact in (facts or {}).items():
        if found := fact_part(path, fact):
            return found
    files = []
    for origin, _key, _value in entries:
        if origin.startswith("file:"):
            files.append(os.path.join(base, origin.removeprefix("file:")))
    for path in dict.fromkeys(files):
        if found := exposed(path):
            return found
    for origin, key, value in entries:
        if not origin.startswith("file:"):
            continue  # the lander's own -c options
        if INCLUDE_KEYS.fullmatch(key):
            where = os.path.dirname(os.path.join(base, origin.removeprefix("file:")))
            target = expand(value, where, home)
            if target is not None and (found := exposed(target)):
                return found
        elif LANDING_PROGRAM_KEYS.fullmatch(key) and (
                found := program_part(key, value, work_tree or base, adds)):
            return found
        if work_tree and FILTER_KEYS.fullmatch(key) and value.strip():
            program = os.path.basename(shlex.split(value)[0])
            if program not in trusted_filters:
                raise Unsure(
                    f"config {key} = {value!r} runs {program} in the checked-out work tree "
                    f"{work_tree} after the change's files are written there, and it cannot "
                    "tell what that program reads there: add it to trusted_filter_programs "
                    "if it runs nothing it finds in a work tree, or land where the target "
                    "is not checked out")
    return directories(work_tree, tracked) if work_tree else None


def listing_answer(entries: list[tuple[str, str, str]], base: str, home: str | None,
                   work_tree: str | None, adds: frozenset[str] = frozenset(),
                   tracked: Collection[str] | None = None,
                   facts: dict[str, dict[str, Any]] | None = None,
                   trusted_filters: Collection[str] = ()) -> str:
    """listing_part's answer as one line (see answer)."""
    return _line(lambda: listing_part(entries, base, home, work_tree, adds, tracked, facts,
                                      trusted_filters))


def config_parts(layout: Layout) -> str | None:
    """Every config file git may read for the repository, followed through every
    include whatever its condition, and what their values name."""
    queue = [os.path.join(layout.common, "config"),
             os.path.join(layout.common, "config.worktree")]
    worktrees = os.path.join(layout.common, "worktrees")
    if _is_dir(worktrees):
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
        text = _read(path)
        if text is None:
            continue
        for key, value in parse_config(text):
            if INCLUDE_KEYS.fullmatch(key):
                if (target := expand(value, os.path.dirname(path), layout.home)) is not None:
                    queue.append(target)
            elif key == "core.hookspath":
                target = expand(value, layout.work_trees[0] if layout.work_trees
                                else layout.common, layout.home)
                if target is not None and (found := tree(target)):
                    return found
            elif LANDING_PROGRAM_KEYS.fullmatch(key):
                if found := program_part(key, value, layout.work_trees[0]
                                         if layout.work_trees else None):
                    return found
            elif PROGRAM_KEYS.fullmatch(key):
                for word in named_paths(value):
                    target = expand(word, "/", layout.home)
                    if target is not None and (found := exposed(target)):
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
    text = _read(os.path.join(objects, "info", "alternates"))
    for line in (text or "").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        path = os.path.normpath(os.path.join(objects, unquote(line)))
        found = tree(path) or (depth < MAX_ALTERNATE_DEPTH and alternates(path, depth + 1))
        if found:
            return found
    return None


class Layout(NamedTuple):
    """Where a repository's parts are, found as git finds them (not asked of git)."""

    common: str               # its own git directory: objects, refs, config, hooks
    work_trees: list[str]     # the main one first, if any, then the linked ones
    home: str | None          # its owner's home: what `~/` in its config means to a lander
    indexes: dict[str, str] = {}  # work tree -> its index file
    hash_size: int = 20       # bytes of an object id (32 with extensions.objectFormat sha256)


def layout(repo: str) -> Layout:
    """OSError if `repo` is not a repository's top (a work tree or a git directory)."""
    dotgit = os.path.join(repo, ".git")
    main: str | None = repo
    if _is_dir(dotgit):
        git_dir = dotgit
    elif (text := _read(dotgit)) is not None:
        if not text.startswith("gitdir: "):
            raise OSError(f"{dotgit} is not a git file")
        git_dir = os.path.join(repo, text.removeprefix("gitdir: ").strip())
    elif _read(os.path.join(repo, "HEAD")) is not None and _is_dir(
            os.path.join(repo, "objects")):
        git_dir, main = repo, None  # bare, unless core.worktree says otherwise
    else:
        raise OSError(f"{repo} is not the top of a git repository")
    common = git_dir
    if (text := _read(os.path.join(git_dir, "commondir"))) is not None:
        common = os.path.normpath(os.path.join(git_dir, text.strip()))
    if git_dir != common and os.path.basename(common) == ".git":
        main = os.path.dirname(common)  # `repo` is a linked worktree: the main one too
    hash_size = 20
    for name in ("config", "config.worktree"):
        for key, value in parse_config(_read(os.path.join(common, name)) or ""):
            if key == "core.worktree":
                main = os.path.normpath(os.path.join(common, value))
            elif key == "core.bare" and value.lower() in ("true", "yes", "on", "1"):
                main = None
            elif key == "extensions.objectformat" and value.lower() == "sha256":
                hash_size = 32
    indexes = {main: os.path.join(common, "index")} if main else {}
    if git_dir != common:
        indexes.setdefault(repo, os.path.join(git_dir, "index"))
    linked = os.path.join(common, "worktrees")
    if _is_dir(linked):
        for name in sorted(os.listdir(linked)):
            pointer = _read(os.path.join(linked, name, "gitdir"))
            if pointer:
                indexes.setdefault(os.path.dirname(os.path.normpath(pointer.strip())),
                                   os.path.join(linked, name, "index"))
    try:
        home: str | None = pwd.getpwuid(os.stat(common).st_uid).pw_dir
    except (KeyError, OSError):
        home = None
    return Layout(os.path.abspath(common), list(indexes), home, indexes, hash_size)


def writable_part(repo: str) -> str | None:
    """The first part of `repo` this user may change, or None. OSError if `repo` is
    not a repository; Unreadable where the user may not look."""
    for part in (repo, os.path.join(repo, ".git")):
        if found := exposed(part):
            return found
    parts = layout(repo)
    return (tree(parts.common) or config_parts(parts)
            or alternates(os.path.join(parts.common, "objects"))
            or next(filter(None, (
                directories(tree_path, tracked_directories(index, parts.hash_size))
                for tree_path, index in parts.indexes.items())), None))


def answer(repo: str) -> str:
    """The gate's answer as one line: `writable: PATH`, `unreadable: PATH`,
    `error: WHY` or `none`."""
    return _line(lambda: writable_part(repo))


def _line(ask: Callable[[], str | None]) -> str:
    try:
        found = ask()
    except Unreadable as exc:
        return f"unreadable: {exc}"
    except OSError as exc:
        return f"error: {exc}"
    return f"writable: {found}" if found else "none"
