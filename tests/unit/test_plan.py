"""Plan validation: the bad-plan corpus, special files, and what a good plan becomes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from minipipe_svc.plan import MAX_PLAN_BYTES, Plan, PlanError, Workspace, load_plan, parse_plan

DATA = Path(__file__).parent.parent / "data"
BAD = DATA / "bad_plans"
EXPECTED = json.loads((DATA / "bad_plans.json").read_text())
ROOT = Path(__file__).parent.parent.parent
EXAMPLES = ROOT / "examples"


def test_corpus_and_expectations_match() -> None:
    assert sorted(p.name for p in BAD.iterdir()) == sorted(EXPECTED)
    assert len(EXPECTED) >= 25


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bad_plan_is_rejected_with_a_clear_message(name: str) -> None:
    expected = EXPECTED[name]
    with pytest.raises(PlanError) as caught:
        load_plan(str(BAD / name))
    error = caught.value
    text = str(error)
    assert expected["message"] in text
    assert text.startswith(str(BAD / name)), "the message must name the file"
    assert error.line == expected["line"]
    if expected["line"] is not None:
        assert text.startswith(f"{BAD / name}:{expected['line']}:")
    assert "Traceback" not in text


def test_step_errors_name_the_step() -> None:
    with pytest.raises(PlanError, match="step 'a': unknown key 'tiemout'") as caught:
        load_plan(str(BAD / "unknown_step_key.toml"))
    assert caught.value.hint == "did you mean 'timeout'?"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="no such file"):
        load_plan(str(tmp_path / "nope.toml"))


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="is a directory"):
        load_plan(str(tmp_path))


def test_binary_file(tmp_path: Path) -> None:
    path = tmp_path / "plan.toml"
    path.write_bytes(b'name = "x"\n\x00\x01\x02\x7fELF')
    with pytest.raises(PlanError, match=r"binary file \(NUL byte at offset 11\)") as caught:
        load_plan(str(path))
    assert caught.value.line == 2


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "plan.toml"
    path.write_bytes(b'name = "caf\xe9"\n')
    with pytest.raises(PlanError, match="not valid UTF-8"):
        load_plan(str(path))


def test_fifty_megabytes_is_refused_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "huge.toml"
    with open(path, "wb") as handle:
        handle.truncate(50 * 1000 * 1000)
    with pytest.raises(PlanError, match=r"too large \(50.0 MB\)"):
        load_plan(str(path))


def test_just_over_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "big.toml"
    path.write_text("# " + "x" * MAX_PLAN_BYTES)
    with pytest.raises(PlanError, match="too large"):
        load_plan(str(path))


@pytest.mark.parametrize("fmt", ["toml", "json"])
def test_deep_nesting(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"deep.{fmt}"
    depth = 100_000
    path.write_text(("x = " if fmt == "toml" else '{"x": ') + "[" * depth + "]" * depth
                    + ("" if fmt == "toml" else "}"))
    with pytest.raises(PlanError):
        load_plan(str(path))


def test_unreadable_file(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    path = tmp_path / "secret.toml"
    path.write_text('[[steps]]\nid = "a"\nrun = ["true"]\n')
    path.chmod(0)
    if os.geteuid() != 0:
        with pytest.raises(PlanError, match="permission denied"):
            load_plan(str(path))
        return
    # root reads every file: try it as nobody instead
    code = ("import sys; from minipipe_svc.plan import load_plan, PlanError\n"
            "try: load_plan(sys.argv[1])\nexcept PlanError as e: print(e)")
    result = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
         code, str(path)], capture_output=True, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "permission denied while reading the plan" in result.stdout, result.stderr


def test_hello_example() -> None:
    plan = load_plan(str(EXAMPLES / "hello.toml"))
    assert plan.name == "hello"
    assert [(s.id, s.phase) for s in plan.steps] == [
        ("greet", "build"), ("count", "build"), ("report", "verify")]
    assert plan.steps[0].argv == ("echo", "hello from minipipe")
    assert not plan.steps[0].shell
    assert plan.steps[1].argv[:2] == ("/bin/sh", "-c") and plan.steps[1].shell
    assert all(s.timeout == 60.0 for s in plan.steps)
    assert all(s.cwd == str(EXAMPLES.resolve()) for s in plan.steps)


def test_fails_example_is_valid() -> None:
    plan = load_plan(str(EXAMPLES / "fails.toml"))
    assert plan.steps[1].retries == 1


def test_defaults_merge_and_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "plan.toml"
    path.write_text(f"""
name = "merge"
priority = 5
[defaults]
timeout = "10m"
retries = 2
cwd = "{tmp_path}"
env = {{ A = "1", B = "2" }}
[limits]
memory_max = "2G"
cpu_quota = "150%"
runtime_max = "1h"
tasks_max = 64
[[steps]]
id = "one"
run = ["true"]
env = {{ B = "override" }}
[[steps]]
id = "two"
phase = "later"
run = "true"
timeout = 5
retries = 0
cwd = "/"
[[steps]]
id = "three"
run = ["true"]
""")
    plan = load_plan(str(path))
    one, two, three = plan.steps
    assert one.env == {"A": "1", "B": "override"}
    assert (one.timeout, one.retries, one.cwd, one.phase) == (600.0, 2, str(tmp_path), "main")
    assert (two.timeout, two.retries, two.cwd, two.phase) == (5.0, 0, "/", "later")
    assert three.phase == "later", "a step without phase continues the previous one"
    assert plan.limits.memory_max == 2 * 1024**3
    assert plan.limits.cpu_quota == 150.0
    assert plan.limits.runtime_max == 3600.0
    assert plan.limits.tasks_max == 64
    assert plan.priority == 5
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


def test_json_plan(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"name": "j", "steps": [{"id": "a", "run": ["echo", "x"]}]}))
    plan = load_plan(str(path))
    assert plan.name == "j" and plan.steps[0].argv == ("echo", "x")


def test_name_defaults_to_file_stem(tmp_path: Path) -> None:
    path = tmp_path / "nightly-build.toml"
    path.write_text('[[steps]]\nid = "a"\nrun = ["true"]\n')
    assert load_plan(str(path)).name == "nightly-build"


def test_stdin_plan() -> None:
    plan = load_plan("-", stdin=b'[[steps]]\nid = "a"\nrun = ["true"]\n')
    assert plan.name == "stdin"


def _parse(text: str) -> Plan:
    return parse_plan(text.encode(), source="p.toml", fmt="toml", base_dir="/srv/plans")


def test_a_workspace_plan_runs_its_stages_in_the_worktree() -> None:
    plan = _parse("""
        review = true
        [workspace]
        repo = "/srv/git/app/"
        ref = "main"
        setup = ["make", "deps"]
        [[steps]]
        id = "edit"
        run = "sed -i s/a/b/ x"
        [[steps]]
        id = "sub"
        run = "true"
        cwd = "docs/./api"
        [[steps]]
        id = "elsewhere"
        run = "true"
        cwd = "/srv/other"
        [[on_approve]]
        id = "push"
        run = ["git", "push", "origin", "main"]
    """)
    assert plan.workspace == Workspace(repo="/srv/git/app", ref="main", land="merge",
                                       target=None)
    assert plan.review is True
    assert [(s.id, s.stage, s.cwd) for s in plan.steps] == [
        ("workspace-setup", "setup", ""), ("edit", "main", ""), ("sub", "main", "docs/api"),
        ("elsewhere", "main", "/srv/other"), ("push", "on_approve", "")]
    assert plan.steps[0].argv == ("make", "deps") and plan.steps[-1].phase == "on_approve"
    assert Plan.from_dict(plan.to_dict()) == plan


def test_without_review_a_workspace_keeps_its_change_on_the_branch() -> None:
    plan = _parse('[workspace]\nrepo = "/r"\n[[steps]]\nid = "a"\nrun = "true"\n')
    # Landing is decided with review: the config's, when the plan does not say (None).
    assert (plan.workspace.land, plan.workspace.ref, plan.review) == (None, "HEAD", None)
    # A plan without a workspace is unchanged: steps run in the plan's directory.
    plain = _parse('[[steps]]\nid = "a"\nrun = "true"\n')
    assert plain.workspace is None and plain.steps[0].cwd == "/srv/plans"
    assert Plan.from_dict({**plain.to_dict(), "workspace": None}) == plain


def test_the_review_example_is_a_valid_plan() -> None:
    plan = load_plan(str(EXAMPLES / "review.toml"))
    assert plan.review is True and plan.workspace is not None
    assert [s.stage for s in plan.steps] == ["setup", "main", "on_approve"]


def test_after_and_after_any_name_runs_once_each() -> None:
    plan = _parse('after = [12, 13, 12]\nafter_any = [13, 14]\n'
                  '[[steps]]\nid = "a"\nrun = "true"\n')
    assert (plan.after, plan.after_any) == ((12, 13), (14,))  # 13: already waited for
    again = Plan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert (again.after, again.after_any) == ((12, 13), (14,))
    # A plan stored before waits existed reads as waiting for nothing.
    stored = plan.to_dict()
    del stored["after"], stored["after_any"]
    assert Plan.from_dict(stored).after == ()
    for bad in ('after = 12', 'after = [0]', 'after = ["12"]', 'after_any = [true]',
                f'after = {list(range(1, 66))}'):
        with pytest.raises(PlanError, match=r"run ids|at most 64"):
            _parse(bad + '\n[[steps]]\nid = "a"\nrun = "true"\n')


def test_finally_steps_are_their_own_stage_and_phase() -> None:
    plan = _parse('[[steps]]\nid = "a"\nrun = "true"\n[[finally]]\nid = "z"\nrun = "true"\n'
                  '[[finally]]\nid = "y"\nphase = "notify"\nrun = "true"\n')
    assert [(s.id, s.stage, s.phase) for s in plan.steps] == [
        ("a", "main", "main"), ("z", "finally", "finally"), ("y", "finally", "notify")]
    with pytest.raises(PlanError, match=r"p.toml:5: step .a.: duplicate step id"):
        _parse('[[steps]]\nid = "a"\nrun = "true"\n[[finally]]\nid = "a"\nrun = "true"\n')
