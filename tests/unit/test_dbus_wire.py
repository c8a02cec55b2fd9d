"""The D-Bus codec against byte sequences worked out by hand from the specification.

Whether systemd understands it is checked for real in tests/system (every run there
joins its scope through it).
"""

import pytest

from minipipe_svc.dbus import (
    ERROR_NAME,
    MEMBER,
    METHOD_CALL,
    REPLY_SERIAL,
    DBusError,
    Reader,
    Writer,
    decode,
    encode_call,
    message_size,
    split_signature,
)


def marshal(signature: str, *values: object) -> bytes:
    writer = Writer()
    writer.write(signature, list(values))
    return bytes(writer.data)


def test_split_signature() -> None:
    assert split_signature("ssa(sv)a(sa(sv))") == ["s", "s", "a(sv)", "a(sa(sv))"]
    assert split_signature("a{sv}ua{s(ii)}") == ["a{sv}", "u", "a{s(ii)}"]
    assert split_signature("") == []
    with pytest.raises(DBusError, match="unbalanced"):
        split_signature("a(sv")
    with pytest.raises(DBusError, match="unknown type code"):
        split_signature("sz")


@pytest.mark.parametrize(("signature", "values", "expected"), [
    ("yu", (1, 2), b"\x01\0\0\0\x02\0\0\0"),
    ("yt", (1, 2), b"\x01" + b"\0" * 7 + b"\x02" + b"\0" * 7),
    ("s", ("ab",), b"\x02\0\0\0ab\0"),
    ("g", ("au",), b"\x02au\0"),
    ("b", (True,), b"\x01\0\0\0"),
    # array length counts the elements only, with the padding between them
    ("as", (["a", "bc"],), b"\x0f\0\0\0" + b"\x01\0\0\0a\0" + b"\0\0" + b"\x02\0\0\0bc\0"),
    # an empty array of structs still pads to the (8-aligned) first element
    ("a(sv)", ([],), b"\0\0\0\0" + b"\0\0\0\0"),
    ("v", (("au", [7]),), b"\x02au\0" + b"\x04\0\0\0" + b"\x07\0\0\0"),
])
def test_marshalling_matches_the_specification(signature: str, values: tuple[object, ...],
                                               expected: bytes) -> None:
    assert marshal(signature, *values) == expected
    assert Reader(expected).read(signature) == list(values)


def test_big_endian() -> None:
    writer = Writer(">")
    writer.write("u", [1])
    assert bytes(writer.data) == b"\0\0\0\x01"
    assert Reader(b"\0\0\0\x01", ">").read("u") == [1]


def test_nested_values_round_trip() -> None:
    signature = "ssa(sv)a(sa(sv))a{sv}"
    values = ["minipipe-run-7.scope", "fail",
              [("Description", ("s", "minipipe run 7")), ("PIDs", ("au", [1234])),
               ("MemoryMax", ("t", 2**31)), ("Flag", ("b", False))],
              [], {"x": ("i", -5), "y": ("d", 1.5)}]
    assert Reader(marshal(signature, *values)).read(signature) == values


def test_a_method_call_message() -> None:
    data = encode_call(9, destination="org.freedesktop.systemd1", path="/org/freedesktop/systemd1",
                       interface="org.freedesktop.systemd1.Manager", member="Subscribe",
                       signature="", args=[])
    assert data[:4] == b"l\x01\x00\x01"
    assert len(data) % 8 == 0
    assert message_size(data[:16]) == len(data)
    message = decode(data)
    assert (message.type, message.serial, message.member) == (METHOD_CALL, 9, "Subscribe")
    assert message.body == []


def test_an_error_reply_is_read_with_its_name_and_text() -> None:
    body = Writer()
    body.write("s", ["Unit minipipe-run-7.scope already exists."])
    header = Writer()
    header.write("yyyyuua(yv)", [ord("l"), 3, 1, 1, len(body.data), 44, [
        (ERROR_NAME, ("s", "org.freedesktop.systemd1.UnitExists")),
        (REPLY_SERIAL, ("u", 2)), (8, ("g", "s"))]])
    header.align(8)
    message = decode(bytes(header.data + body.data))
    assert message.fields[ERROR_NAME] == "org.freedesktop.systemd1.UnitExists"
    assert message.fields[REPLY_SERIAL] == 2
    assert message.body == ["Unit minipipe-run-7.scope already exists."]
    assert MEMBER not in message.fields


def test_truncated_input_is_an_error_not_a_crash() -> None:
    with pytest.raises(DBusError, match="truncated"):
        Reader(b"\x05\0").read("u")
