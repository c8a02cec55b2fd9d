"""Hostile and broken input through the real CLI: a clear error, exit 2, nothing queued.

The plan corpus is tests/data/bad_plans (each with its expected message, checked
exactly by tests/unit/test_plan.py); here every one of them goes through
`minipipe submit` against a live queue, which must stay exactly as it was.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import ROOT, Instance

DATA = Path(__file__).resolve().parent.parent / "data"
BAD_PLANS = sorted((DATA / "bad_plans").iterdir())
EXPECTED = json.loads((DATA / "bad_plans.json").read_text())


@pytest.fixture(scope="module")
def queue(tmp_path_factory: pytest.TempPathFactory):
    """One instance with one queued run, shared by the bad-input cases (none may change it)."""
    instance = Instance(tmp_path_factory.mktemp("bad-input"))
    instance.start_daemon()
    instance.cli("pause")
    instance.submit('[[steps]]\nid = "a"\nrun = ["true"]\n')
    yield instance
    instance.close()
    with instance.store() as store:
        assert store.counts()["PENDING"] == 1 and sum(store.counts().values()) == 1
        assert store.integrity_check() == "ok"


def _state(instance: Instance) -> tuple[int, int]:
    with instance.store() as store:
        return len(store.list_runs(limit=None)), store.count_events()


@pytest.mark.parametrize("plan", BAD_PLANS, ids=[p.name for p in BAD_PLANS])
def test_bad_plan_via_the_cli(queue: Instance, plan: Path) -> None:
    before = _state(queue)
    result = queue.cli("submit", str(plan), check=False)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert str(plan) in result.stderr
    assert EXPECTED[plan.name]["message"] in result.stderr
    assert _state(queue) == before


@pytest.mark.parametrize(("name", "content"), [
    ("huge.toml", None),
    ("nul.toml", b'name = "x"\x00\n'),
    ("latin1.toml", b'name = "caf\xe9"\n'),
    ("deep.json", b"[" * 200_000 + b"]" * 200_000),
    ("deep.toml", b"x = " + b"[" * 200_000 + b"]" * 200_000),
    ("empty.toml", b""),
    ("spaces.toml", b"   \n\n  \t\n"),
    ("negative-retries.json", json.dumps(
        {"steps": [{"id": "a", "run": ["true"], "retries": -5}]}).encode()),
    ("huge-timeout.toml", b'[[steps]]\nid = "a"\nrun = ["true"]\ntimeout = "99999999d"\n'),
    ("float-priority.toml", b'priority = 1.5\n[[steps]]\nid = "a"\nrun = ["true"]\n'),
], ids=lambda value: value if isinstance(value, str) else "")
def test_hostile_plan_files(queue: Instance, tmp_path: Path, name: str,
                            content: bytes | None) -> None:
    path = tmp_path / name
    if content is None:
        with open(path, "wb") as handle:
            handle.truncate(50 * 1000 * 1000)
    else:
        path.write_bytes(content)
    tmp_path.chmod(0o755)  # the CLI runs as the test user: it must fail on content, not access
    path.chmod(0o644)
    before = _state(queue)
    result = queue.cli("submit", str(path), check=False)
    assert result.returncode == 2, (name, result.stderr)
    assert str(path) in result.stderr and result.stdout == ""
    assert _state(queue) == before


@pytest.mark.parametrize("args", [
    ["submit"], ["submit", "/no/such/plan.toml"], ["submit", "--priority", "5000", "x.toml"],
    ["submit", "--format", "yaml", "x.toml"], ["show"], ["show", "1;rm"], ["show", "../1"],
    ["logs", "1", "--step", "no/such"], ["cancel"], ["retry", "1", "2"], ["wait", "1",
    "--timeout", "-1"], ["ls", "--limit", "0"], ["ls", "--state", "DONE"], ["frobnicate"],
])
def test_bad_command_lines(queue: Instance, args: list[str]) -> None:
    before = _state(queue)
    result = queue.cli(*args, check=False)
    assert result.returncode == 2, (args, result.stderr)
    assert "Error" in result.stderr or "Usage" in result.stderr
    assert _state(queue) == before


@pytest.mark.parametrize("config", [
    b"{", b"[]", b"null", b'{"max_concurrent_runs": -1}', b'{"poll_interval_seconds": 1e309}',
    b'{"db_path": "x\\u0000y"}', b'{"isolation": "chroot"}', b'{"run_user": "root"}',
    b'{"default_limits": {"memory_max": "lots"}}', b"\xff\xfe{}", b"{" * 100_000,
], ids=lambda value: repr(value[:24])[2:-1])
def test_bad_config_files(tmp_path: Path, config: bytes) -> None:
    instance = Instance(tmp_path)
    instance.config_path.write_bytes(config)
    for args in (["ls"], ["submit", "-"], ["daemon"]):
        result = instance.cli(*args, check=False, input='[[steps]]\nid = "a"\nrun = ["true"]\n')
        assert result.returncode == 2, (config[:40], args, result.stderr)
        assert str(instance.config_path) in result.stderr
    assert not instance.db_path.exists()


def test_a_missing_working_directory_is_refused_by_the_daemon(queue: Instance) -> None:
    """Checked by the daemon as the run's user (the plan validator cannot: root there may
    not look inside a private home), so the message names the step, not a line."""
    plan = ROOT / "tests" / "data" / "cwd_missing.toml"
    before = _state(queue)
    result = queue.cli("submit", str(plan), check=False)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(f"Error: {plan}: step ")
    assert "does not exist as the minipipe service sees it" in result.stderr
    assert _state(queue) == before
