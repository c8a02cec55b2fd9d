"""Plans: what a user submits. Loading, validation and the normalized form stored in the DB.

Everything is checked at submit time and the first problem becomes one `PlanError`
that names the file, the line (where TOML lets us find it), the step and key, and
what to do. Nothing is queued from an invalid plan. The runner only ever sees the
normalized dict (`Plan.to_dict`), never user files.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from typing import Any, NamedTuple

from .limits import LIMIT_KEYS, Limits, limit_parsers, merge_limits, valid_pool_name
from .planfile import MAX_PLAN_BYTES, PlanError, read_plan_file
from .quantities import parse_duration

__all__ = ["LIMIT_KEYS", "MAX_PLAN_BYTES", "Limits", "Plan", "PlanError", "Step", "load_plan",
           "merge_limits", "parse_plan"]

MAX_STEPS = 1000
MAX_RETRIES = 100
MAX_NAME_CHARS = 100
PRIORITY_RANGE = (-1000, 1000)
MAX_DEPENDENCIES = 64

TOP_KEYS = ("name", "description", "priority", "defaults", "limits", "steps", "workspace",
            "review", "on_approve", "after", "after_any", "pool", "finally", "matrix")
MAX_MATRIX_RUNS = 256
DEFAULT_KEYS = ("timeout", "retries", "cwd", "env")
STEP_KEYS = ("id", "phase", "run", "cwd", "env", "timeout", "retries")
WORKSPACE_KEYS = ("repo", "ref", "setup", "land", "target")
SETUP_STEP_ID = "workspace-setup"

STEP_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
STEP_ID_HELP = (
    'use 1-64 letters, digits, "_", "-" or ".", starting with a letter or digit (no "..")'
)
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# The runner sets these itself; letting a plan override them would confuse the
# service manager or the step's view of which run it belongs to.
RESERVED_ENV = re.compile(r"NOTIFY_SOCKET|WATCHDOG_(PID|USEC)|LISTEN_(FDS|PID|FDNAMES)|MINIPIPE_.*")
DEFAULT_PHASE = "main"


class Step(NamedTuple):
    id: str
    phase: str
    argv: tuple[str, ...]
    cwd: str
    env: dict[str, str]  # never changed after parsing
    timeout: float | None = None
    retries: int = 0
    shell: bool = False
    stage: str = "main"  # model.STAGES

    @property
    def command(self) -> str:
        """The command as the user wrote it, for display."""
        return self.argv[2] if self.shell else shlex.join(self.argv)


class Workspace(NamedTuple):
    """A run's own git worktree (workspace.py): of `repo` at `ref`, landing on `target`."""

    repo: str
    ref: str
    land: str | None  # workspace.LAND_MODES (None: "merge" with review, else "branch-only")
    target: str | None  # the branch a landing updates (None: the one `ref` names)


class Plan(NamedTuple):
    name: str
    steps: tuple[Step, ...]
    priority: int = 0
    description: str = ""
    limits: Limits = Limits()
    workspace: Workspace | None = None
    review: bool | None = None  # None: the config's `review` decides (at submit)
    after: tuple[int, ...] = ()  # runs that must have SUCCEEDED before this one starts
    after_any: tuple[int, ...] = ()  # runs that must have ended, whatever the result
    pool: str | None = None  # a config pool whose slots limit how many run at once
    # [matrix]: key -> values; one run per combination (see combinations()).
    matrix: tuple[tuple[str, tuple[str, ...]], ...] = ()
    matrix_values: tuple[tuple[str, str], ...] = ()  # this run's combination

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "description": self.description, "priority": self.priority,
            "after": list(self.after), "after_any": list(self.after_any), "pool": self.pool,
            "matrix": {key: list(values) for key, values in self.matrix},
            "matrix_values": dict(self.matrix_values),
            "limits": self.limits._asdict(),
            "workspace": self.workspace._asdict() if self.workspace else None,
            "review": self.review,
            "steps": [
                {"id": s.id, "phase": s.phase, "argv": list(s.argv), "shell": s.shell,
                 "cwd": s.cwd, "env": dict(s.env), "timeout": s.timeout, "retries": s.retries,
                 "command": s.command, "stage": s.stage}
                for s in self.steps
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        steps = tuple(
            Step(id=s["id"], phase=s["phase"], argv=tuple(s["argv"]), cwd=s["cwd"],
                 env=dict(s["env"]), timeout=s["timeout"], retries=s["retries"],
                 shell=s["shell"], stage=s.get("stage", "main"))
            for s in data["steps"]
        )
        workspace = data.get("workspace")
        return cls(name=data["name"], steps=steps, priority=data["priority"],
                   description=data.get("description", ""), limits=Limits(**data["limits"]),
                   workspace=Workspace(**workspace) if workspace else None,
                   review=data.get("review"), after=tuple(data.get("after", ())),
                   after_any=tuple(data.get("after_any", ())), pool=data.get("pool"),
                   matrix=tuple((k, tuple(v)) for k, v in data.get("matrix", {}).items()),
                   matrix_values=tuple(data.get("matrix_values", {}).items()))

    def combinations(self) -> list[Plan]:
        """One plan per combination of the [matrix] values (in order), each named
        `name[key=value,...]`; a plan without [matrix] is its own one."""
        if not self.matrix:
            return [self]
        import itertools

        keys = [key for key, _ in self.matrix]
        plans = []
        limit = MAX_NAME_CHARS * 2
        for number, values in enumerate(
                itertools.product(*(values for _, values in self.matrix)), 1):
            label = ",".join(f"{k}={v}" for k, v in zip(keys, values, strict=True))
            name = f"{self.name}[{label}]"
            if len(name) > limit:  # cut: the combination's number keeps names apart
                mark = f"…#{number}"
                name = name[:limit - len(mark)] + mark
            plans.append(self._replace(name=name,
                                       matrix_values=tuple(zip(keys, values, strict=True))))
        return plans

    def stage(self, name: str) -> list[tuple[int, Step]]:
        """(index, step) of the steps in one stage, in order."""
        return [(idx, step) for idx, step in enumerate(self.steps) if step.stage == name]


# ---------------------------------------------------------------- loading


def load_plan(path: str, *, fmt: str | None = None, stdin: bytes | None = None) -> Plan:
    """Read and validate a plan file (`-` with `stdin` bytes reads standard input)."""
    source = "<stdin>" if path == "-" else path
    if path == "-":
        data = stdin or b""
        base_dir = os.getcwd()
    else:
        data = read_plan_file(path)
        base_dir = os.path.dirname(os.path.abspath(path))
    if fmt is None:
        fmt = "json" if path.lower().endswith(".json") else "toml"
    return parse_plan(data, source=source, fmt=fmt, base_dir=base_dir,
                      default_name=_default_name(path))


def _default_name(path: str) -> str:
    if path == "-":
        return "stdin"
    stem = os.path.splitext(os.path.basename(path))[0]
    return stem[:MAX_NAME_CHARS] or "plan"


def parse_plan(data: bytes, *, source: str, fmt: str, base_dir: str,
               default_name: str = "plan") -> Plan:
    if len(data) > MAX_PLAN_BYTES:
        raise PlanError(source, f"is too large ({len(data) / 1e6:.1f} MB); plans are at most "
                        f"{MAX_PLAN_BYTES // 1024} KiB")
    nul = data.find(b"\0")
    if nul >= 0:
        raise PlanError(source, f"looks like a binary file (NUL byte at offset {nul})",
                        line=data.count(b"\n", 0, nul) + 1,
                        hint="plans are UTF-8 text in TOML or JSON")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PlanError(source, f"is not valid UTF-8 (byte offset {exc.start})",
                        line=data.count(b"\n", 0, exc.start) + 1,
                        hint="save the file as UTF-8") from None
    document = _decode(text, source, fmt)
    lines = _toml_line_index(text) if fmt == "toml" else {}
    return _Validator(source, lines, base_dir).plan(document, default_name)


def _decode(text: str, source: str, fmt: str) -> dict[str, Any]:
    if fmt not in ("toml", "json"):
        raise PlanError(source, f"unknown plan format {fmt!r}", hint="use toml or json")
    try:
        if fmt == "toml":
            import tomllib

            try:
                return tomllib.loads(text)
            except tomllib.TOMLDecodeError as exc:
                message = str(exc)
                match = re.search(r"\(at line (\d+), column \d+\)", message)
                line = int(match.group(1)) if match else None
                message = re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)", "", message)
                raise PlanError(source, f"invalid TOML: {message}", line=line,
                                hint="see https://toml.io for the syntax") from None
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanError(source, f"invalid JSON: {exc.msg} (column {exc.colno})",
                            line=exc.lineno) from None
    except RecursionError:
        raise PlanError(source, "is nested too deeply to be a plan") from None
    if not isinstance(document, dict):
        raise PlanError(source, f"the top level must be an object, not {_kind(document)}")
    return document


def _toml_line_index(text: str) -> dict[tuple[Any, ...], int]:
    """Map (section, key) to the line that defines it, for error messages.

    tomllib reports lines only for syntax errors, so this light scan finds where
    `[[steps]]` number N and its keys are. Inline-table spellings are not found;
    errors about them simply carry no line number.
    """
    index: dict[tuple[Any, ...], int] = {}
    section: tuple[Any, ...] = ()
    counts = {"steps": -1, "on_approve": -1, "finally": -1}  # the plan's arrays of tables
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        # Patterns without nested quantifiers: a plan is user input parsed by the
        # root daemon, and a backtracking pattern would let one line stall it.
        if (match := re.match(r"\[\[([^\]]*)\]\]", line)) and match.group(1).strip():
            name = "".join(match.group(1).split())
            if name in counts:
                counts[name] += 1
                section = (name, counts[name])
            else:
                section = ("?", name)
            index.setdefault(section, number)
            continue
        if (match := re.match(r"\[([^\]]*)\]", line)) and match.group(1).strip():
            parts = "".join(match.group(1).split()).split(".")
            section = ((parts[0], counts[parts[0]], *parts[1:]) if parts[0] in counts
                       else tuple(parts))
            index.setdefault(section, number)
            continue
        if match := re.match(r"""("[^"]*"|'[^']*'|[A-Za-z0-9_-]+)\s*=""", line):
            index.setdefault((*section, match.group(1).strip("\"'")), number)
    return index


def key_line(text: str, fmt: str, *path: Any) -> int | None:
    """The line of a TOML plan that sets `path` (e.g. "workspace", "ref"), if found."""
    return _toml_line_index(text).get(tuple(path)) if fmt == "toml" else None


def _kind(value: object) -> str:
    return {dict: "a table", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


class _Validator:
    """Walks a decoded document and builds a Plan, raising the first PlanError."""

    def __init__(self, source: str, lines: dict[tuple[Any, ...], int], base_dir: str) -> None:
        self.source, self.lines, self.base_dir = source, lines, base_dir
        self.in_workspace = False
        self.base: dict[str, Any] = {"env": {}, "timeout": None}

    def fail(self, path: tuple[Any, ...], where: str | None, message: str,
             hint: str | None = None) -> PlanError:
        line = None
        for depth in range(len(path), 0, -1):
            line = self.lines.get(path[:depth])
            if line is not None:
                break
        return PlanError(self.source, message, line=line, where=where, hint=hint)

    def unknown_keys(self, table: dict[str, Any], allowed: tuple[str, ...],
                     path: tuple[Any, ...], where: str | None) -> None:
        for key in table:
            if key not in allowed:
                close = [k for k in allowed if _similar(k, key)]
                hint = f"did you mean {close[0]!r}?" if close else (
                    "valid keys: " + ", ".join(allowed))
                raise self.fail((*path, key), where, f"unknown key {key!r}", hint)

    def table(self, document: dict[str, Any], key: str, path: tuple[Any, ...],
              where: str | None) -> dict[str, Any]:
        value = document.get(key, {})
        if not isinstance(value, dict):
            raise self.fail((*path, key), where, f"{key!r} must be a table, not {_kind(value)}")
        return value

    def plan(self, doc: dict[str, Any], default_name: str) -> Plan:
        self.unknown_keys(doc, TOP_KEYS, (), None)
        name = doc.get("name", default_name)
        if not isinstance(name, str) or not name.strip():
            raise self.fail(("name",), None, "'name' must be a non-empty string")
        if len(name) > MAX_NAME_CHARS or not name.isprintable():
            raise self.fail(("name",), None,
                            f"'name' must be at most {MAX_NAME_CHARS} printable characters")
        description = doc.get("description", "")
        if not isinstance(description, str):
            raise self.fail(("description",), None, "'description' must be a string")
        priority = doc.get("priority", 0)
        if isinstance(priority, bool) or not isinstance(priority, int) or not (
                PRIORITY_RANGE[0] <= priority <= PRIORITY_RANGE[1]):
            raise self.fail(("priority",), None,
                            f"'priority' must be an integer from {PRIORITY_RANGE[0]} to "
                            f"{PRIORITY_RANGE[1]}, got {priority!r}", "higher runs first")
        defaults = self.table(doc, "defaults", (), None)
        self.unknown_keys(defaults, DEFAULT_KEYS, ("defaults",), "[defaults]")
        limits = self.limits(self.table(doc, "limits", (), None))
        review = doc.get("review")
        if review is not None and not isinstance(review, bool):
            raise self.fail(("review",), None, f"'review' must be true or false, not "
                            f"{_kind(review)}")
        workspace, setup = self.workspace(doc, review)
        self.in_workspace = workspace is not None
        steps = self.steps(doc, defaults, "steps", "main")
        if "on_approve" in doc:
            if workspace is None:
                raise self.fail(("on_approve", 0), None, "'on_approve' steps need a [workspace]",
                                "add a [workspace] with the repo whose change they follow")
            steps += self.steps(doc, defaults, "on_approve", "on_approve", seen=steps)
        if "finally" in doc:
            # Phase "finally" unless a step names its own: shown apart from the others.
            steps += self.steps(doc, defaults, "finally", "finally", seen=steps)
        if setup is not None:
            if any(step.id == SETUP_STEP_ID for step in steps):
                raise self.fail(("steps",), None, f"step id {SETUP_STEP_ID!r} is the "
                                "workspace's setup command's", "rename that step")
            steps = (Step(id=SETUP_STEP_ID, phase="setup", argv=setup[0], shell=setup[1],
                          cwd="", env=self.base["env"], timeout=self.base["timeout"],
                          stage="setup"), *steps)
        after = self.run_ids(doc, "after")
        after_any = tuple(i for i in self.run_ids(doc, "after_any") if i not in after)
        if len(after) + len(after_any) > MAX_DEPENDENCIES:
            raise self.fail(("after",), None, f"a run may wait for at most {MAX_DEPENDENCIES} "
                            "runs")
        pool = doc.get("pool")
        if pool is not None and not (isinstance(pool, str) and valid_pool_name(pool)):
            raise self.fail(("pool",), None, "'pool' must be a pool name from the config "
                            "(1-64 of A-Z a-z 0-9 _ - .)", 'like pool = "gpu"')
        matrix = self.matrix(doc)
        return Plan(name=name.strip(), description=description, priority=priority,
                    limits=limits, steps=steps, workspace=workspace, review=review,
                    after=after, after_any=after_any, pool=pool, matrix=matrix)

    def matrix(self, doc: dict[str, Any]) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """[matrix]: keys (letters, digits, _) to non-empty lists of scalar values."""
        table = self.table(doc, "matrix", (), None)
        matrix, count = [], 1
        variables: dict[str, str] = {}
        for key, values in table.items():
            if not (key.isascii() and key.replace("_", "a").isalnum() and len(key) <= 64):
                raise self.fail(("matrix", key), "[matrix]", f"invalid key {key!r}",
                                "letters, digits and _ (it becomes MINIPIPE_MATRIX_<KEY>)")
            if key.upper() in variables:
                raise self.fail(("matrix", key), "[matrix]", f"keys {variables[key.upper()]!r} "
                                f"and {key!r} would both be MINIPIPE_MATRIX_{key.upper()}",
                                "keys that differ in more than case")
            variables[key.upper()] = key
            if not isinstance(values, list) or not values or not all(
                    isinstance(v, str | int | float) and not isinstance(v, bool)
                    for v in values):
                raise self.fail(("matrix", key), "[matrix]", f"{key!r} must be a non-empty "
                                "list of strings or numbers", f'like {key} = ["a", "b"]')
            shown = tuple(dict.fromkeys(str(v) for v in values))
            if any(len(v) > 200 or not v.isprintable() for v in shown):
                # (each is part of the run's name: a terminal, a chat message)
                raise self.fail(("matrix", key), "[matrix]", f"a value of {key!r} is too long "
                                "or holds a control character", "printable text, at most "
                                "200 characters")
            count *= len(shown)
            matrix.append((key, shown))
        if count > MAX_MATRIX_RUNS:
            raise self.fail(("matrix",), "[matrix]", f"{count} combinations; at most "
                            f"{MAX_MATRIX_RUNS}")
        return tuple(matrix)

    def run_ids(self, doc: dict[str, Any], key: str) -> tuple[int, ...]:
        """`after = [12, 13]`: run ids, positive, each once, in order."""
        value = doc.get(key, [])
        if not isinstance(value, list) or not all(
                isinstance(i, int) and not isinstance(i, bool) and 0 < i < 2**63
                for i in value):
            raise self.fail((key,), None, f"'{key}' must be a list of run ids (positive "
                            f"integers), like {key} = [12, 13]",
                            "the runs this one waits for" if key == "after" else
                            "runs this one waits for, whatever their result")
        return tuple(dict.fromkeys(value))

    def workspace(self, doc: dict[str, Any], review: bool | None
                  ) -> tuple[Workspace | None, tuple[tuple[str, ...], bool] | None]:
        """[workspace]: the repository (absolute), a ref git could name, how to land."""
        where = "[workspace]"
        if "workspace" not in doc:
            if review:
                raise self.fail(("review",), None, "'review = true' needs a [workspace]",
                                "review gates a change to a repository: add [workspace] "
                                'with repo = "/path/to/repo"')
            return None, None
        table = self.table(doc, "workspace", (), None)
        self.unknown_keys(table, WORKSPACE_KEYS, ("workspace",), where)
        repo = table.get("repo")
        if not isinstance(repo, str) or not repo or "\0" in repo:
            raise self.fail(("workspace", "repo"), where,
                            "'repo' must be the path of a local git repository",
                            'e.g. repo = "/srv/git/app"')
        if not os.path.isabs(repo):
            raise self.fail(("workspace", "repo"), where, f"'repo' must be an absolute path, "
                            f"got {repo!r}", "write the full path, e.g. /srv/git/app")
        ref = table.get("ref", "HEAD")
        from .workspace import LAND_MODES, valid_ref

        if not isinstance(ref, str) or (problem := valid_ref(ref)) is not None:
            raise self.fail(("workspace", "ref"), where, f"invalid ref {ref!r}"
                            + (f": {problem}" if isinstance(ref, str) else ""),
                            "name a branch, tag or commit, e.g. ref = \"main\"")
        land = table.get("land")  # None: by review (the config's, if the plan is silent)
        if land is None and review is not None:
            land = "merge" if review else "branch-only"
        if land is not None and land not in LAND_MODES:
            raise self.fail(("workspace", "land"), where, f"'land' must be one of "
                            f"{', '.join(LAND_MODES)}, got {land!r}")
        target = table.get("target")  # None: the branch `ref` names (HEAD's, for HEAD)
        if target is not None and (not isinstance(target, str) or target == "HEAD"
                                   or valid_ref(target) is not None):
            raise self.fail(("workspace", "target"), where,
                            f"{target!r} is not a branch to land on",
                            'set target = "main" (the branch approving updates)')
        setup = None
        if "setup" in table:
            setup = self.command({"run": table["setup"]}, ("workspace", "setup"), where)
        return Workspace(repo=os.path.normpath(repo), ref=ref, land=land, target=target), setup

    def limits(self, table: dict[str, Any]) -> Limits:
        where = "[limits]"
        self.unknown_keys(table, LIMIT_KEYS, ("limits",), where)
        parsed: dict[str, Any] = {}
        for key, parse in LIMIT_PARSERS.items():
            if key in table:
                try:
                    parsed[key] = parse(table[key])
                except ValueError as exc:
                    raise self.fail(("limits", key), where, f"{key}: {exc}") from None
        return Limits(**parsed)

    def steps(self, doc: dict[str, Any], defaults: dict[str, Any], key: str, stage: str,
              seen: tuple[Step, ...] = ()) -> tuple[Step, ...]:
        raw_steps = doc.get(key)
        if raw_steps is None:
            raise self.fail((), None, "the plan has no steps",
                            'add at least one [[steps]] table with an "id" and a "run"')
        if not isinstance(raw_steps, list) or not raw_steps:
            raise self.fail((key,), None, f"{key!r} must be a non-empty list of tables",
                            f'write each step as a [[{key}]] table with an "id" and a "run"')
        if len(raw_steps) + len(seen) > MAX_STEPS:
            raise self.fail((key,), None, f"too many steps ({len(raw_steps) + len(seen)}; at "
                            f"most {MAX_STEPS})")
        # With a workspace, steps run in the run's worktree unless they say otherwise.
        self.base = base = self.step_settings(
            defaults, ("defaults",), "[defaults]",
            {"cwd": "" if self.in_workspace else self.base_dir, "env": {}, "timeout": None,
             "retries": 0})
        steps: list[Step] = []
        ids = {step.id: number for number, step in enumerate(seen)}
        phase = DEFAULT_PHASE if stage == "main" else stage
        for number, raw in enumerate(raw_steps):
            path: tuple[Any, ...] = (key, number)
            where = f"{key}[{number + 1}]"
            if not isinstance(raw, dict):
                raise self.fail(path, where, f"each step must be a table, not {_kind(raw)}")
            if not raw:
                raise self.fail(path, where, "the step is empty",
                                'give it at least an "id" and a "run"')
            step_id = raw.get("id")
            if isinstance(step_id, str) and STEP_ID.fullmatch(step_id):
                where = f"step {step_id!r}"
            self.unknown_keys(raw, STEP_KEYS, path, where)
            if step_id is None:
                raise self.fail(path, where, "the step has no 'id'", 'add id = "a-name"')
            if not isinstance(step_id, str) or not STEP_ID.fullmatch(step_id) or ".." in step_id:
                raise self.fail((*path, "id"), where, f"invalid step id {step_id!r}",
                                STEP_ID_HELP)
            where = f"step {step_id!r}"
            if step_id in ids:
                raise self.fail((*path, "id"), where,
                                f"duplicate step id (also used by step #{ids[step_id] + 1})",
                                "step ids must be unique within a plan")
            ids[step_id] = len(seen) + number
            if "phase" in raw:
                phase = raw["phase"]
                if not isinstance(phase, str) or not STEP_ID.fullmatch(phase) or ".." in phase:
                    raise self.fail((*path, "phase"), where, f"invalid phase {phase!r}",
                                    STEP_ID_HELP)
            argv, shell = self.command(raw, path, where)
            settings = self.step_settings(raw, path, where, base)
            env = {**base["env"], **settings["env"]} if "env" in raw else base["env"]
            steps.append(Step(id=step_id, phase=phase, argv=argv, shell=shell,
                              cwd=settings["cwd"], env=env, timeout=settings["timeout"],
                              retries=settings["retries"], stage=stage))
        return tuple(steps)

    def command(self, raw: dict[str, Any], path: tuple[Any, ...],
                where: str) -> tuple[tuple[str, ...], bool]:
        if "run" not in raw:
            raise self.fail(path, where, "the step has no 'run'",
                            'add run = ["program", "arg"] (no shell) or run = "shell line"')
        run = raw["run"]
        key_path = (*path, "run")
        if isinstance(run, str):
            if not run.strip():
                raise self.fail(key_path, where, "'run' is an empty command")
            return ("/bin/sh", "-c", run), True
        if not isinstance(run, list) or not run:
            raise self.fail(key_path, where,
                            f"'run' must be a list of strings or a string, not {_kind(run)}"
                            if not isinstance(run, list) else "'run' is an empty list",
                            'e.g. run = ["make", "-j2"] or run = "make -j2 | tee log"')
        for position, arg in enumerate(run):
            if not isinstance(arg, str):
                raise self.fail(key_path, where,
                                f"run[{position}] must be a string, not {_kind(arg)}",
                                'quote every argument, e.g. ["sleep", "5"]')
        if not run[0]:
            raise self.fail(key_path, where, "run[0] (the program) is empty")
        return tuple(run), False

    def step_settings(self, raw: dict[str, Any], path: tuple[Any, ...], where: str,
                      base: dict[str, Any]) -> dict[str, Any]:
        """timeout, retries, cwd and env of a step or of [defaults], falling back to base."""
        result = dict(base)
        if "timeout" in raw:
            try:
                result["timeout"] = parse_duration(raw["timeout"])
            except ValueError as exc:
                raise self.fail((*path, "timeout"), where, f"timeout: {exc}") from None
        if "retries" in raw:
            retries = raw["retries"]
            if isinstance(retries, bool) or not isinstance(retries, int) or not (
                    0 <= retries <= MAX_RETRIES):
                raise self.fail((*path, "retries"), where,
                                f"'retries' must be an integer from 0 to {MAX_RETRIES}, "
                                f"got {retries!r}")
            result["retries"] = retries
        if "cwd" in raw:
            result["cwd"] = self.cwd(raw["cwd"], (*path, "cwd"), where)
        if "env" in raw:
            result["env"] = self.env(raw["env"], (*path, "env"), where)
        return result

    def cwd(self, cwd: object, path: tuple[Any, ...], where: str) -> str:
        """An absolute path; with a workspace also a path inside the worktree, relative
        to it ("" is the worktree itself)."""
        if not isinstance(cwd, str) or not cwd or "\0" in cwd:
            raise self.fail(path, where, "'cwd' must be a non-empty path string")
        if self.in_workspace and not os.path.isabs(cwd):
            inside = os.path.normpath(cwd)
            if inside == ".." or inside.startswith("../"):
                raise self.fail(path, where, f"'cwd' {cwd!r} leaves the run's worktree",
                                "a relative cwd is a directory inside the worktree")
            return "" if inside == "." else inside
        if not os.path.isabs(cwd):
            raise self.fail(path, where, f"'cwd' must be an absolute path, got {cwd!r}",
                            "write the full path, e.g. /srv/app")
        # Whether it exists, and may be entered, is checked by the daemon as the run's
        # user (actions.py): root here may not even look inside a private home.
        return os.path.normpath(cwd)

    def env(self, env: object, path: tuple[Any, ...], where: str) -> dict[str, str]:
        if not isinstance(env, dict):
            raise self.fail(path, where, f"'env' must be a table, not {_kind(env)}",
                            'e.g. env = { CC = "gcc" }')
        for name, value in env.items():
            if not ENV_NAME.fullmatch(name):
                raise self.fail((*path, name), where, f"invalid environment variable name "
                                f"{name!r}", "names are letters, digits and _, not starting "
                                "with a digit")
            if RESERVED_ENV.fullmatch(name):
                raise self.fail((*path, name), where, f"{name} is set by minipipe itself "
                                "and cannot be overridden")
            if not isinstance(value, str):
                raise self.fail((*path, name), where,
                                f"env {name} must be a string, not {_kind(value)}",
                                f'quote it: {name} = "{value}"')
            if "\0" in value:
                raise self.fail((*path, name), where, f"env {name} contains a NUL character")
        return dict(env)


def _similar(a: str, b: str) -> bool:
    """Cheap typo detector: same letters give or take one, for 'did you mean'."""
    if abs(len(a) - len(b)) > 2:
        return False
    return len(set(a) ^ set(b)) <= 2 and a[0] == b[0]


LIMIT_PARSERS = limit_parsers()
