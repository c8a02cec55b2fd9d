"""The wire format and the identity rules that need no daemon: exact."""

from __future__ import annotations

import grp
import pwd

import pytest

from minipipe_svc import protocol
from minipipe_svc.identity import IdentityError, identity_of, may_act_on


def test_a_message_is_one_ascii_json_line_and_back() -> None:
    message = {"v": 1, "op": "submit", "plan": "caf\u00e9 \udcff\n[x]"}
    line = protocol.encode(message)
    assert line.endswith(b"\n") and line.count(b"\n") == 1 and line.isascii()
    assert protocol.decode(line) == message  # lone surrogates (undecodable bytes) survive


@pytest.mark.parametrize("line", [b"", b"nope", b"[1]", b"\xff", b"[" * 100_000, b'"x"'])
def test_anything_but_a_json_object_is_a_protocol_error(line: bytes) -> None:
    with pytest.raises(protocol.ProtocolError):
        protocol.decode(line)


def test_every_error_code_has_an_exit_status_and_bad_input_is_2() -> None:
    assert protocol.error("no_such_run", "x") == {"ok": False, "error": "no_such_run",
                                                  "message": "x"}
    assert {code for code, status in protocol.EXIT_FOR_ERROR.items() if status == 2} == {
        "bad_request", "bad_plan", "no_such_run", "conflict", "too_large"}
    with pytest.raises(AssertionError):
        protocol.error("made_up", "x")


def test_owners_and_admins_may_act_and_nobody_else() -> None:
    assert may_act_on(1000, 1000, "alice", None)
    assert not may_act_on(1001, 1000, "alice", None)
    assert may_act_on(0, 1000, "alice", None)  # root
    # Runs from before uids were recorded: the name decides.
    nobody = pwd.getpwnam("nobody").pw_uid
    assert may_act_on(nobody, None, "nobody", None)
    assert not may_act_on(nobody, None, "somebody", None)


def test_steps_never_run_as_root() -> None:
    with pytest.raises(IdentityError, match="never execute as root"):
        identity_of(pwd.getpwuid(0))


def test_steps_lose_the_group_that_reads_state() -> None:
    daemon = pwd.getpwnam("daemon")  # uid 1, primary group daemon (not nogroup)
    nogroup = grp.getgrnam("nogroup").gr_gid
    plain = identity_of(daemon)
    assert plain.gid == daemon.pw_gid and daemon.pw_gid in plain.groups
    # The state group is the user's primary group: the step gets nogroup instead.
    stripped = identity_of(daemon, state_gid=daemon.pw_gid)
    assert stripped.gid == nogroup
    assert daemon.pw_gid not in stripped.groups and nogroup in stripped.groups
    assert stripped.login_environment()["USER"] == "daemon"


@pytest.mark.parametrize("text", [
    "{}", ' {"a": 1, "b": [1, 2, {"c": null}], "d": "caf\\u00e9 \\udcff"}\n', "[1]", '"x"',
    "1e5", '{"a": NaN}', "{not json", '{"a":', "[1,", '"abc', '{"a" 1}', "", "{} x"])
def test_jsonline_reads_exactly_what_json_reads(text: str) -> None:
    import json

    from minipipe_svc import jsonline

    try:
        expected: object = json.loads(text)
    except json.JSONDecodeError as exc:
        with pytest.raises(json.JSONDecodeError) as raised:
            jsonline.loads(text)
        assert str(raised.value) == str(exc)
        return
    assert repr(jsonline.loads(text)) == repr(expected)


def test_jsonline_writes_a_flat_request_as_json_does() -> None:
    import json

    from minipipe_svc import jsonline

    for message in ({"v": 1, "op": "submit", "plan": "caf\u00e9\n\udcff[x]\x1b", "path": None,
                     "read_back": False, "priority": -5, "all": True},
                    {"results": [{"run": 1}], "ok": True}):  # nested: json's own
        assert jsonline.dumps_flat(message) == json.dumps(message, separators=(",", ":"))


def test_records_are_immutable_keyword_built_and_compare_by_value() -> None:
    from minipipe_svc.config import Config, build_config
    from minipipe_svc.limits import Limits

    limits = Limits(memory_max=5)
    assert limits == Limits(memory_max=5) != Limits(memory_max=6)
    assert hash(limits) == hash(Limits(memory_max=5))
    assert limits._replace(cpu_quota=50.0) == Limits(memory_max=5, cpu_quota=50.0)
    assert limits._asdict() == {"memory_max": 5, "cpu_quota": None, "runtime_max": None,
                                "tasks_max": None}
    assert repr(Limits()) == ("Limits(memory_max=None, cpu_quota=None, runtime_max=None, "
                              "tasks_max=None)")
    with pytest.raises(AttributeError, match="immutable"):
        limits.memory_max = 1  # type: ignore[misc]
    with pytest.raises(TypeError, match="no field"):
        Limits(memory=1)
    config = build_config({"db_path": "/x/state.db"}, source=None)
    assert isinstance(config, Config) and config.socket_path == "/x/minipipe.sock"
    assert config._replace(db_path="/y/state.db").db_path == "/y/state.db"
    assert config.default_limits == Limits()
