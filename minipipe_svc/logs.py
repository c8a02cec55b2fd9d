"""Run output: the log sink interface the runner writes to, and the per-run file format.

One file per run in `log_dir`, `run-<id>.log`, one record per output line:

    <utc time>\\t<step id>\\t<attempt>\\t<stream>\\t<text>

`stream` is stdout, stderr or minipipe (the runner's own notes: step start/end).
Step ids cannot contain tabs, so the first four fields always split cleanly and
the text keeps any tabs of its own. `tail -f` works on it; `minipipe logs` parses it.
"""

from __future__ import annotations

import os
from collections import namedtuple

from .store import utc_now

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol
else:  # `show` and `logs` must not pay for importing typing (bench/ figure 7)
    Protocol = object

STREAMS = ("stdout", "stderr", "minipipe")


# One output line: ts str, step_id str, attempt int, stream str (STREAMS), text str.
LogLine = namedtuple("LogLine", ["ts", "step_id", "attempt", "stream", "text"])


class LogSink(Protocol):
    """Where a runner sends each output line. Writes must never raise."""

    lines_lost: int
    error: str | None

    def write(self, step_id: str, attempt: int, stream: str, text: str) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


def log_path(log_dir: str, run_id: int) -> str:
    return os.path.join(log_dir, f"run-{run_id}.log")


class FileLogSink:
    """Appends records to the run's file; counts (never hides) lines it could not write."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lines_lost = 0
        self.error: str | None = None
        try:
            os.makedirs(os.path.dirname(path), mode=0o750, exist_ok=True)
            # Never through a link: the runner may be root (the log dir is root's alone,
            # but a file it appends to must be the one it means).
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o640)
            os.fchmod(fd, 0o640)  # group members read it, whatever the umask
            self._file = open(fd, "a", encoding="utf-8", errors="replace")  # noqa: SIM115
        except OSError as exc:
            self._file = None
            self.error = f"cannot open {path}: {exc.strerror or exc}"

    def write(self, step_id: str, attempt: int, stream: str, text: str) -> None:
        if self._file is None:
            self.lines_lost += 1
            return
        try:
            self._file.write(f"{utc_now()}\t{step_id}\t{attempt}\t{stream}\t{text}\n")
        except OSError as exc:
            self.lines_lost += 1
            self.error = f"cannot write {self.path}: {exc.strerror or exc}"

    def flush(self) -> None:
        if self._file is None:
            return
        try:
            self._file.flush()
        except OSError as exc:
            self.error = f"cannot write {self.path}: {exc.strerror or exc}"

    def close(self) -> None:
        if self._file is None:
            return
        try:
            self._file.close()
        except OSError as exc:
            self.error = f"cannot write {self.path}: {exc.strerror or exc}"
        self._file = None


def read_log(path: str, offset: int = 0) -> tuple[list[LogLine], int]:
    """Complete records from byte `offset` on, and the offset after the last one.

    A record still being written (no newline yet) is left for the next call.
    """
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    lines = []
    for raw in data[:end].decode("utf-8", "replace").split("\n")[:-1]:
        parts = raw.split("\t", 4)
        if len(parts) != 5 or not parts[2].isdigit():
            lines.append(LogLine("", "?", 0, "stdout", raw))
            continue
        lines.append(LogLine(parts[0], parts[1], int(parts[2]), parts[3], parts[4]))
    return lines, offset + end


class TeeSink:
    """Sends every line to several sinks (file mirror, journal) and counts them.

    A line counts as lost only if no sink kept it.
    """

    def __init__(self, *sinks: LogSink) -> None:
        self.sinks = sinks
        self.lines_written = 0

    @property
    def lines_lost(self) -> int:
        return min(sink.lines_lost for sink in self.sinks)

    @property
    def error(self) -> str | None:
        errors = [sink.error for sink in self.sinks if sink.error]
        return "; ".join(errors) if errors else None

    def write(self, step_id: str, attempt: int, stream: str, text: str) -> None:
        self.lines_written += 1
        for sink in self.sinks:
            sink.write(step_id, attempt, stream, text)

    def flush(self) -> None:
        for sink in self.sinks:
            sink.flush()

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
