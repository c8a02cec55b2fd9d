"""The `minipipe` executable: a click-free fast path for the plainest commands.

`minipipe [--config PATH] submit [--json] PLAN`, `ls [--json] [--mine]`,
`show [--json] RUN` and `status [--json]` are what scripts and `watch` run in
loops; importing click costs more than any of them (bench/ figures 0 and 7), so
those exact forms are served here. Every other command line, including any other
option, `--help` and every mistake, goes to the click CLI (cli.py), which owns
usage. Both paths call the same code (submit.py, reads.py), so they print and
exit alike.
"""

from __future__ import annotations

import sys

EXIT_BAD_INPUT = 2


def split_config(argv: list[str]) -> tuple[str | None, list[str]] | None:
    """(the --config value or None, the rest), or None if --config is malformed."""
    config_path = None
    if argv[:1] == ["--config"] and len(argv) >= 2:
        config_path, argv = argv[1], argv[2:]
    elif argv[:1] and argv[0].startswith("--config="):
        config_path, argv = argv[0].split("=", 1)[1], argv[1:]
    if not config_path and config_path is not None:
        return None
    return config_path, argv


def plain_submit(argv: list[str]) -> tuple[str | None, bool, str] | None:
    """(config path, --json, plan) when argv is a plain submit, else None."""
    split = split_config(argv)
    if split is None:
        return None
    config_path, argv = split
    if argv[:1] != ["submit"]:
        return None
    options = [a for a in argv[1:] if a.startswith("-")]
    plans = [a for a in argv[1:] if not a.startswith("-")]
    if len(plans) != 1 or options not in ([], ["--json"]):
        return None
    return config_path, options == ["--json"], plans[0]


def quick_submit(config_path: str | None, as_json: bool, plan: str) -> int:
    from .config import ConfigError, load_config
    from .submit import submit_and_report

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return submit_and_report(config.socket_path, plan, as_json=as_json)


# The read commands' plain forms: the verb, its flags, and whether it takes a run id.
_READS = {"ls": (("--json", "--mine"), False), "show": (("--json",), True),
          "status": (("--json",), False)}


def plain_read(argv: list[str]) -> tuple[str | None, str, set[str], int | None] | None:
    """(config path, verb, flags, run id) when argv is a plain read command, else None.

    A run id must look like one (1 to 18 ASCII digits, not 0): anything else goes to
    click, which explains what a run id is.
    """
    split = split_config(argv)
    if split is None or not split[1] or split[1][0] not in _READS:
        return None
    config_path, (verb, *rest) = split
    allowed, takes_run = _READS[verb]
    flags = {a for a in rest if a.startswith("-")}
    values = [a for a in rest if not a.startswith("-")]
    if not flags <= set(allowed) or len(flags) != len(rest) - len(values):
        return None
    if not takes_run:
        return (config_path, verb, flags, None) if not values else None
    if (len(values) != 1 or not values[0].isascii() or not values[0].isdigit()
            or len(values[0]) > 18 or int(values[0]) < 1):
        return None
    return config_path, verb, flags, int(values[0])


def quick_read(config_path: str | None, verb: str, flags: set[str],
               run_id: int | None) -> int:
    from . import reads
    from .config import ConfigError, load_config

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    out, as_json = reads.Printer(), "--json" in flags
    try:
        if verb == "ls":
            owner = None
            if "--mine" in flags:
                from .procs import user_name

                owner = user_name()
            reads.list_runs(config, out, submitted_by=owner, as_json=as_json)
        elif verb == "show":
            reads.show_run(config, out, run_id or 0, as_json=as_json)
        else:
            reads.status(config, out, as_json=as_json)
    except reads.ReadError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return exc.exit_status
    return 0


def main() -> None:
    """Never returns: exits with the command's status (no typing import: start-up)."""
    argv = sys.argv[1:]
    try:
        if (submit := plain_submit(argv)) is not None:
            sys.exit(quick_submit(*submit))
        if (read := plain_read(argv)) is not None:
            status = quick_read(*read)
            sys.stdout.flush()
            sys.exit(status)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:  # `minipipe ls | head`: the reader left, nothing to say
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    from .cli import main as click_main

    click_main()
