r"""`minipipe logs` and `show` on a terminal show hostile text made visible; pipes get the bytes.

A step's output and a run's text are an attacker's: printed as they are,
`\x1b]0;…\x07` retitles the operator's terminal and `\x1b[2J` clears it. The run
is written with the real Store and file mirror (the path `logs` reads for a run
without a journal); the real CLI runs in a subprocess, on a real pseudo-terminal
for the terminal case and on a pipe otherwise, and in-process with the terminal
check replaced.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import termios

import pytest
from click.testing import CliRunner

from minipipe_svc import render
from minipipe_svc.cli import cli
from minipipe_svc.config import load_config
from minipipe_svc.logs import FileLogSink, log_path
from minipipe_svc.model import RunState, StepState
from minipipe_svc.render import printable
from minipipe_svc.store import Store

from .conftest import ROOT, Instance
from .monitor_fixtures import hostile_plan

OUTPUT = ["title \x1b]0;pwned\x07 set", "clear \x1b[2J screen", "red \x1b[31mtext\x1b[0m",
          "csi \x9b2J 8-bit", "bidi abc\u202eevil", "cr progress 50%\rprogress 100%",
          "[bold]not markup[/bold]"]
NAME = "nightly \x1b]0;owned\x07 [/x]"
REASON = "exited \x1b[2J with status 1"
LINK = "err \x1b]8;;file:///etc/passwd\x07link\x1b]8;;\x07"
SGR = re.compile(r"\x1b\[[0-9;]*m")  # colours, as click.style writes them


def write_hostile_run(db_path: str, log_dir: str) -> int:
    """A failed run whose name, step, reason and output carry escape sequences."""
    plan = hostile_plan("s")
    plan["name"] = NAME
    plan["steps"][0]["command"] = "printf '\x1b[2J'"
    with Store.open(db_path) as store:
        run_id = store.submit(plan, source=None, submitted_by="mallory")
        store.start_run(run_id)
        store.start_step(run_id, 0, "s")
        sink = FileLogSink(log_path(log_dir, run_id))
        for text in OUTPUT:
            sink.write("s", 1, "stdout", text)
        sink.write("s", 1, "stderr", LINK)
        sink.close()
        store.finish_step(run_id, 0, StepState.FAILED, exit_code=1, reason=REASON)
        store.finish_run(run_id, RunState.FAILED, exit_code=1, reason=REASON,
                         output_lines=len(OUTPUT) + 1)
    return run_id


def hostile_run(instance: Instance) -> int:
    """`write_hostile_run` in the instance, as the user its daemon would run as."""
    db_path = str(instance.db_path)
    log_dir = load_config(str(instance.config_path)).log_dir
    user = getattr(instance, "user", None)  # set when the tests run as root
    if user is None:
        return write_hostile_run(db_path, log_dir)
    code = ("import sys; from tests.integration.test_display_safety import write_hostile_run; "
            "print(write_hostile_run(sys.argv[1], sys.argv[2]))")
    result = subprocess.run([sys.executable, "-c", code, db_path, log_dir], cwd=ROOT,
                            capture_output=True, text=True, check=True, timeout=60,
                            user=user.pw_uid, group=user.pw_gid, extra_groups=[])
    return int(result.stdout)


def cli_output(instance: Instance, *args: str, terminal: bool, colour: bool = False) -> str:
    """The CLI's exact stdout, printed to a terminal (a pty with no output processing,
    so "\n" stays "\n") or to a pipe; run as the instance's user, if it has one."""
    env = {k: v for k, v in os.environ.items() if k not in ("MINIPIPE_CONFIG", "NO_COLOR")}
    if not colour:
        env["NO_COLOR"] = "1"
    user = getattr(instance, "user", None)  # set when the tests run as root
    as_user = {} if user is None else {"user": user.pw_uid, "group": user.pw_gid,
                                       "extra_groups": []}
    primary, secondary = pty.openpty() if terminal else os.pipe()
    if terminal:
        attrs = termios.tcgetattr(secondary)
        attrs[1] &= ~termios.OPOST
        termios.tcsetattr(secondary, termios.TCSANOW, attrs)
    process = subprocess.Popen(
        [sys.executable, "-m", "minipipe_svc", "--config", str(instance.config_path), *args],
        stdout=secondary, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env,
        **as_user)
    os.close(secondary)
    chunks = []
    while True:
        ready, _, _ = select.select([primary], [], [], 60)
        assert ready, "the CLI printed nothing for 60 s"
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # EIO: the CLI closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(primary)
    stderr = process.communicate(timeout=60)[1].decode()
    assert process.returncode == 0 and "Traceback" not in stderr, stderr
    return b"".join(chunks).decode("utf-8")


def on_terminal(instance: Instance, *args: str, colour: bool = False) -> str:
    return cli_output(instance, *args, terminal=True, colour=colour)


def assert_inert(text: str) -> None:
    """Nothing in `text` a terminal acts on but newlines and the colours `ctx.style` adds."""
    for line in text.split("\n"):
        uncoloured = SGR.sub("", line)
        assert printable(uncoloured) == uncoloured, repr(line)


def test_logs_on_a_terminal_shows_escapes_visibly(instance: Instance) -> None:
    run_id = hostile_run(instance)
    shown = on_terminal(instance, "logs", str(run_id))
    assert_inert(shown)
    lines = shown.splitlines()
    assert lines == [*(f"s | {printable(text)}" for text in OUTPUT), f"s | {printable(LINK)}"]
    assert "s | title \\x1b]0;pwned\\x07 set" in lines
    assert "s | cr progress 50%\\x0dprogress 100%" in lines
    assert "s | bidi abc\\u202eevil" in lines
    assert "s | err \\x1b]8;;file:///etc/passwd\\x07link\\x1b]8;;\\x07" in lines


def test_logs_in_colour_on_a_terminal_adds_only_its_own_colours(instance: Instance) -> None:
    run_id = hostile_run(instance)
    shown = on_terminal(instance, "logs", str(run_id), colour=True)
    assert "\x1b[" in shown  # stderr in red, minipipe's notes dimmed
    assert_inert(shown)
    assert "\x1b]" not in shown and "\x1b[2J" not in shown and "\x07" not in shown
    assert "s | red \\x1b[31mtext\\x1b[0m" in shown.split("\n")  # the step's own, escaped


def test_logs_raw_on_a_terminal_and_logs_on_a_pipe_keep_the_bytes(instance: Instance) -> None:
    run_id = hostile_run(instance)
    raw = on_terminal(instance, "logs", "--raw", str(run_id))
    assert raw.split("\n") == [*OUTPUT, LINK, ""]
    piped = cli_output(instance, "logs", str(run_id), terminal=False)
    assert piped.split("\n") == [*(f"s | {text}" for text in OUTPUT), f"s | {LINK}", ""]
    piped_raw = cli_output(instance, "logs", "--raw", str(run_id), terminal=False)
    assert piped_raw == raw


def test_show_on_a_terminal_shows_the_runs_text_visibly(instance: Instance) -> None:
    run_id = hostile_run(instance)
    shown = on_terminal(instance, "show", str(run_id))
    assert_inert(shown)
    lines = shown.splitlines()
    assert lines[0] == f"run {run_id}  {printable(NAME)}  FAILED"
    assert f"  reason:    {printable(REASON)}" in lines
    assert any(line.endswith("printf '\\x1b[2J'") for line in lines)
    as_json = json.loads(instance.cli("show", "--json", str(run_id)).stdout)
    assert as_json["name"] == NAME and as_json["reason"] == REASON


@pytest.mark.parametrize(("terminal", "raw", "escaped"), [
    (True, False, True), (True, True, False), (False, False, False), (False, True, False)])
def test_logs_escapes_exactly_on_a_terminal_without_raw(
        instance: Instance, monkeypatch: pytest.MonkeyPatch, terminal: bool, raw: bool,
        escaped: bool) -> None:
    """In-process, the terminal check replaced: the one rule in one table."""
    run_id = hostile_run(instance)
    monkeypatch.setattr(render, "stdout_is_terminal", lambda: terminal)
    monkeypatch.delenv("MINIPIPE_CONFIG", raising=False)
    args = ["--config", str(instance.config_path), "logs", *(["--raw"] if raw else []),
            str(run_id)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    text = OUTPUT[1]
    expected = printable(text) if escaped else text
    assert (expected if raw else f"s | {expected}") in result.stdout.split("\n")
