"""Files root writes whole: never through a link, never seen half-written.

For files in a directory only root (the daemon's user) may write, read by others: the
recorded diff of a run, the daemon's pid file. The content goes to `<path>.<suffix>`,
created with O_EXCL | O_NOFOLLOW and its mode set explicitly (the service's umask is
0077), then renamed over `path`.
"""

from __future__ import annotations

import contextlib
import os


def replace_file(path: str, data: bytes, mode: int, suffix: str = "new") -> None:
    """`path` now holds exactly `data`, with `mode`; OSError says why not."""
    temporary = f"{path}.{suffix}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary)  # a leftover of a write that died halfway
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                 | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    os.replace(temporary, path)
