import json
from pathlib import Path

import pytest

from minipipe_svc.config import ConfigError, build_config, load_config
from minipipe_svc.runner import RunnerArgs, parse_args


def write(tmp_path: Path, document: object) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(document))
    return str(path)


def test_minimal_private_instance(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, {"db_path": "state.db", "isolation": "none"}))
    assert config.db_path == str(tmp_path / "state.db")
    assert config.log_dir == str(tmp_path / "logs")
    assert config.socket_path == str(tmp_path / "minipipe.sock")
    assert config.max_concurrent_runs == 4
    assert config.poll_interval_seconds == 30.0
    assert config.auto_cleanup_completed_runs is False
    assert config.minipipe_command == ()  # the daemon forks its runners


def test_defaults_without_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MINIPIPE_CONFIG", raising=False)
    config = build_config({}, source=None)
    assert config.db_path == "/var/lib/minipipe/state.db"
    assert config.log_dir == "/var/lib/minipipe/logs"


def test_env_variable_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINIPIPE_CONFIG", write(tmp_path, {"max_concurrent_runs": 9}))
    assert load_config(None).max_concurrent_runs == 9


def test_command_as_string(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, {"minipipe_command": "/usr/bin/python3 -m x"}))
    assert config.minipipe_command == ("/usr/bin/python3", "-m", "x")


@pytest.mark.parametrize(("document", "message"), [
    ({"max_concurent_runs": 2}, "unknown key 'max_concurent_runs'"),
    ({"max_concurrent_runs": 0}, "'max_concurrent_runs' must be an integer from 1 to 1024"),
    ({"max_concurrent_runs": "4"}, "'max_concurrent_runs' must be an integer"),
    ({"max_concurrent_runs": True}, "'max_concurrent_runs' must be an integer"),
    ({"poll_interval_seconds": 0}, "'poll_interval_seconds' must be a number from 0.05"),
    ({"poll_interval_seconds": "5"}, "'poll_interval_seconds' must be a number"),
    ({"isolation": "docker"}, "'isolation' must be \"auto\" or \"none\" or \"scope\""),
    ({"auto_cleanup_completed_runs": "yes"}, "must be true or false"),
    ({"db_path": ""}, "'db_path' must be a non-empty path string"),
    ({"db_path": 5}, "'db_path' must be a non-empty path string"),
    ({"minipipe_command": []}, "'minipipe_command' must be a command line"),
    ({"kill_grace_seconds": -1}, "'kill_grace_seconds' must be a number"),
])
def test_bad_values(tmp_path: Path, document: dict, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, document))
    assert message in str(caught.value)
    assert str(tmp_path / "config.json") in str(caught.value)


def test_invalid_json_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{\n  "db_path": "x",\n  oops\n}\n')
    with pytest.raises(ConfigError, match=r"config.json:3: invalid JSON"):
        load_config(str(path))


def test_missing_explicit_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(str(tmp_path / "absent.json"))


def test_not_an_object(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must be a JSON object"):
        load_config(write(tmp_path, [1, 2]))


def test_run_user_is_never_root(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must not be root"):
        load_config(write(tmp_path, {"run_user": "root"}))


def test_default_limits(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, {"default_limits": {"memory_max": "1G",
                                                             "cpu_quota": "50%"}}))
    assert config.default_limits.memory_max == 1024**3
    assert config.default_limits.cpu_quota == 50.0
    with pytest.raises(ConfigError, match="unknown key 'memory' in 'default_limits'"):
        load_config(write(tmp_path, {"default_limits": {"memory": "1G"}}))
    with pytest.raises(ConfigError, match=r"default_limits\.cpu_quota"):
        load_config(write(tmp_path, {"default_limits": {"cpu_quota": "lots"}}))


def test_auto_isolation_follows_how_the_daemon_was_started(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(write(tmp_path, {}))
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    assert config.effective_isolation() == "none"
    assert load_config(write(tmp_path, {"isolation": "scope"})).effective_isolation() == "scope"


def test_runner_args_as_a_command_line() -> None:
    args = RunnerArgs("/db", "/logs", 5, kill_grace=2, finally_grace=30, runtime_max=90.0,
                      journal=True)
    assert args.argv() == ["--db-path", "/db", "--log-dir", "/logs", "--kill-grace", "2",
                           "--finally-grace", "30", "--journal", "--runtime-max", "90", "5"]
    assert parse_args(args.argv()) == args
    plain = RunnerArgs("/db", "/logs", 6)
    assert plain.argv() == ["--db-path", "/db", "--log-dir", "/logs", "--kill-grace", "10",
                            "--finally-grace", "300", "6"]
    assert parse_args(plain.argv()) == plain


def test_pools_and_the_review_gate_are_checked() -> None:
    config = build_config({"pools": {"gpu": 2, "io.disk": 1}}, source=None)
    assert config.pools == {"gpu": 2, "io.disk": 1} and config.review_gate == "enforced"
    assert build_config({}, source=None).pools == {}
    for bad in ({"pools": [1]}, {"pools": {"g p": 1}}, {"pools": {"gpu": 0}},
                {"pools": {"gpu": True}}, {"pools": {"x" * 65: 1}}):
        with pytest.raises(ConfigError, match="'pools' must be an object"):
            build_config(bad, source="c.json")
    with pytest.raises(ConfigError, match="'review_gate' must be"):
        build_config({"review_gate": "off"}, source="c.json")


def test_trusted_filter_programs_reach_the_runner() -> None:
    assert build_config({}, source=None).trusted_filter_programs == ("git-lfs", "git-crypt")
    config = build_config({"trusted_filter_programs": ["git-lfs", "tidy"]}, source=None)
    assert config.trusted_filter_programs == ("git-lfs", "tidy")
    for bad in ("git-lfs", ["/usr/bin/git-lfs"], [""], [1]):
        with pytest.raises(ConfigError, match="'trusted_filter_programs' must be"):
            build_config({"trusted_filter_programs": bad}, source="c.json")
    args = RunnerArgs("/db", "/logs", 7, trusted_filters=("git-lfs", "tidy"))
    assert args.argv()[-5:] == ["--trusted-filter", "git-lfs", "--trusted-filter", "tidy", "7"]
    assert parse_args(args.argv()) == args


def test_every_config_key_is_documented_in_the_readme_and_the_man_page() -> None:
    from minipipe_svc.config import KEYS

    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    man = (root / "packaging/man/minipipe.conf.5").read_text().replace("\\-", "-")
    missing_readme = [key for key in KEYS if f"| `{key}` |" not in readme]
    missing_man = [key for key in KEYS if f".B {key}\n" not in man]
    assert (missing_readme, missing_man) == ([], [])


def test_the_hook_never_runs_as_a_user_runs_execute_as() -> None:
    """Its environment holds other users' output: a step running as the same user
    could read /proc/PID/environ (tests/system/test_issue13_attacks2.py)."""
    hook = {"on_finish": ["/bin/true"]}
    for config in ({**hook, "run_user": "nobody"}, {**hook, "run_as": "nobody"},
                   {**hook, "run_user": "65534", "on_finish_user": "nobody"},
                   {**hook, "run_user": "minipipe", "on_finish_user": "minipipe"}):
        with pytest.raises(ConfigError, match="is a user runs execute as"):
            build_config(config, source="c.json")
    assert build_config(hook, source=None).on_finish_user == "nobody"
    assert build_config({"run_user": "nobody"}, source=None).run_user == "nobody"  # no hook
