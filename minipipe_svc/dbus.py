"""Just enough of the D-Bus wire protocol to ask systemd for a transient scope.

Why not a D-Bus library: the one call minipipe makes (StartTransientUnit, then wait
for its job) happens in a freshly forked runner, once per run. `systemd-run --scope`
costs a process start per run; dbus-python is not on the design card and its
connections do not survive fork(). This module speaks the protocol directly on
systemd's private socket (/run/systemd/private, root only, no bus daemon needed):
marshalling per the D-Bus specification (little- or big-endian, every basic type,
arrays, structs, variants, dict entries) and a blocking call/signal loop.

It knows nothing about systemd: the conversation lives in systemd.py.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any

METHOD_CALL, METHOD_RETURN, ERROR, SIGNAL = 1, 2, 3, 4
# Header field codes.
PATH, INTERFACE, MEMBER, ERROR_NAME, REPLY_SERIAL, DESTINATION, SENDER, SIGNATURE = range(1, 9)
HEADER_FIELD_TYPES = {PATH: "o", INTERFACE: "s", MEMBER: "s", ERROR_NAME: "s",
                      REPLY_SERIAL: "u", DESTINATION: "s", SENDER: "s", SIGNATURE: "g"}

_FIXED = {"y": ("B", 1), "b": ("I", 4), "n": ("h", 2), "q": ("H", 2), "i": ("i", 4),
          "u": ("I", 4), "x": ("q", 8), "t": ("Q", 8), "d": ("d", 8), "h": ("I", 4)}
_ALIGN = {**{code: size for code, (_fmt, size) in _FIXED.items()},
          "s": 4, "o": 4, "g": 1, "v": 1, "a": 4, "(": 8, "{": 8}


class DBusError(Exception):
    """A failed call (with the D-Bus error name) or a broken conversation."""

    def __init__(self, message: str, name: str | None = None) -> None:
        super().__init__(f"{name}: {message}" if name else message)
        self.name = name


def split_signature(signature: str) -> list[str]:
    """"sa(sv)u" -> ["s", "a(sv)", "u"]: the complete types of a signature."""
    types, index = [], 0
    while index < len(signature):
        end = _complete_type_end(signature, index)
        types.append(signature[index:end])
        index = end
    return types


def _complete_type_end(signature: str, index: int) -> int:
    code = signature[index]
    if code == "a":
        return _complete_type_end(signature, index + 1)
    if code in "({":
        close, depth = {"(": ")", "{": "}"}[code], 0
        for end in range(index, len(signature)):
            if signature[end] == code:
                depth += 1
            elif signature[end] == close:
                depth -= 1
                if depth == 0:
                    return end + 1
        raise DBusError(f"unbalanced signature {signature!r}")
    if code in _ALIGN:
        return index + 1
    raise DBusError(f"unknown type code {code!r} in signature {signature!r}")


class Writer:
    """Marshals values; offsets (for alignment) count from the message start."""

    def __init__(self, endian: str = "<") -> None:
        self.endian = endian
        self.data = bytearray()

    def align(self, size: int) -> None:
        self.data += b"\0" * (-len(self.data) % size)

    def _pack(self, fmt: str, value: Any) -> None:
        self.data += struct.pack(self.endian + fmt, value)

    def write(self, signature: str, values: list[Any] | tuple[Any, ...]) -> None:
        types = split_signature(signature)
        if len(types) != len(values):
            raise DBusError(f"signature {signature!r} needs {len(types)} value(s), "
                            f"got {len(values)}")
        for sig, value in zip(types, values, strict=True):
            self.value(sig, value)

    def value(self, sig: str, value: Any) -> None:
        code = sig[0]
        if code in _FIXED:
            fmt, size = _FIXED[code]
            self.align(size)
            self._pack(fmt, int(bool(value)) if code == "b" else value)
        elif code in "so":
            raw = value.encode()
            self.align(4)
            self._pack("I", len(raw))
            self.data += raw + b"\0"
        elif code == "g":
            raw = value.encode()
            self._pack("B", len(raw))
            self.data += raw + b"\0"
        elif code == "v":
            inner_sig, inner = value
            self.value("g", inner_sig)
            self.value(inner_sig, inner)
        elif code == "a":
            element = sig[1:]
            self.align(4)
            length_at = len(self.data)
            self._pack("I", 0)
            self.align(_ALIGN[element[0]])
            start = len(self.data)
            items = value.items() if isinstance(value, dict) else value
            for item in items:
                self.value(element, item)
            struct.pack_into(self.endian + "I", self.data, length_at, len(self.data) - start)
        elif code in "({":
            self.align(8)
            self.write(sig[1:-1], value)
        else:
            raise DBusError(f"cannot marshal type {sig!r}")


class Reader:
    """Unmarshals values from `data`, whose first byte sits at message offset `base`."""

    def __init__(self, data: bytes, endian: str = "<", base: int = 0) -> None:
        self.data, self.endian, self.base, self.pos = data, endian, base, 0

    def align(self, size: int) -> None:
        self.pos += -(self.base + self.pos) % size

    def _unpack(self, fmt: str, size: int) -> Any:
        if self.pos + size > len(self.data):
            raise DBusError("truncated D-Bus message")
        (value,) = struct.unpack_from(self.endian + fmt, self.data, self.pos)
        self.pos += size
        return value

    def read(self, signature: str) -> list[Any]:
        return [self.value(sig) for sig in split_signature(signature)]

    def value(self, sig: str) -> Any:
        code = sig[0]
        if code in _FIXED:
            fmt, size = _FIXED[code]
            self.align(size)
            value = self._unpack(fmt, size)
            return bool(value) if code == "b" else value
        if code in "sog":
            if code == "g":
                length = self._unpack("B", 1)
            else:
                self.align(4)
                length = self._unpack("I", 4)
            raw = self.data[self.pos:self.pos + length]
            self.pos += length + 1
            return raw.decode("utf-8", "replace")
        if code == "v":
            inner_sig = self.value("g")
            return inner_sig, self.value(inner_sig)
        if code == "a":
            element = sig[1:]
            self.align(4)
            length = self._unpack("I", 4)
            self.align(_ALIGN[element[0]])
            end, items = self.pos + length, []
            while self.pos < end:
                items.append(self.value(element))
            return dict(items) if element[0] == "{" else items
        if code in "({":
            self.align(8)
            return tuple(self.read(sig[1:-1]))
        raise DBusError(f"cannot unmarshal type {sig!r}")


@dataclass
class Message:
    """A received message; its body is unmarshalled only if someone reads it (a
    connection to systemd sees every unit's signals, most of them of no interest)."""

    type: int
    serial: int
    fields: dict[int, Any] = field(default_factory=dict)
    raw_body: bytes = b""
    endian: str = "<"
    _body: list[Any] | None = None

    @property
    def member(self) -> str | None:
        return self.fields.get(MEMBER)

    @property
    def body(self) -> list[Any]:
        if self._body is None:
            self._body = Reader(self.raw_body, self.endian).read(self.fields.get(SIGNATURE, ""))
        return self._body


def encode_call(serial: int, *, destination: str, path: str, interface: str, member: str,
                signature: str, args: list[Any] | tuple[Any, ...]) -> bytes:
    body = Writer()
    body.write(signature, args)
    fields = [(PATH, ("o", path)), (INTERFACE, ("s", interface)), (MEMBER, ("s", member)),
              (DESTINATION, ("s", destination))]
    if signature:
        fields.append((SIGNATURE, ("g", signature)))
    header = Writer()
    header.write("yyyyuua(yv)", [ord("l"), METHOD_CALL, 0, 1, len(body.data), serial, fields])
    header.align(8)
    return bytes(header.data + body.data)


def message_size(head: bytes) -> int:
    """Total size of the message whose first 16 bytes are `head`."""
    endian = {ord("l"): "<", ord("B"): ">"}.get(head[0])
    if endian is None:
        raise DBusError(f"bad endianness byte {head[0]!r}")
    body_length, _serial, fields_length = struct.unpack_from(endian + "III", head, 4)
    return 16 + fields_length + (-(16 + fields_length) % 8) + body_length


def decode(data: bytes) -> Message:
    endian = {ord("l"): "<", ord("B"): ">"}[data[0]]
    reader = Reader(data, endian)
    _e, kind, _flags, _version, body_length, serial, fields = reader.read("yyyyuua(yv)")
    reader.align(8)
    header_fields = {code: value for code, (_sig, value) in fields}
    return Message(kind, serial, header_fields, data[reader.pos:reader.pos + body_length],
                   endian)


class Connection:
    """A blocking peer-to-peer connection (EXTERNAL auth by uid), for a few calls."""

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.settimeout(timeout)
        self.serial = 0
        self.buffer = b""
        try:
            self.sock.connect(path)
            uid_hex = str(os.geteuid()).encode().hex()
            self.sock.sendall(b"\0AUTH EXTERNAL " + uid_hex.encode() + b"\r\nBEGIN\r\n")
            line = self._read_line()
        except OSError as exc:
            self.sock.close()
            raise DBusError(f"cannot talk to {path}: {exc.strerror or exc}") from None
        if not line.startswith(b"OK "):
            self.sock.close()
            raise DBusError(f"{path} refused authentication: {line.decode(errors='replace')}")

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def _receive(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise DBusError("the peer closed the connection")
        self.buffer += chunk

    def _read_line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            self._receive()
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def receive(self, deadline: float) -> Message:
        while True:
            if len(self.buffer) >= 16 and len(self.buffer) >= message_size(self.buffer[:16]):
                size = message_size(self.buffer[:16])
                data, self.buffer = self.buffer[:size], self.buffer[size:]
                return decode(data)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DBusError("no answer from the peer in time")
            self.sock.settimeout(remaining)
            try:
                self._receive()
            except TimeoutError:
                raise DBusError("no answer from the peer in time") from None

    def call(self, *, destination: str, path: str, interface: str, member: str,
             signature: str = "", args: list[Any] | tuple[Any, ...] = (),
             on_signal: Any = None) -> list[Any]:
        """Send a method call, return the reply's body; signals meanwhile go to on_signal."""
        self.serial += 1
        serial = self.serial
        self.sock.sendall(encode_call(serial, destination=destination, path=path,
                                      interface=interface, member=member,
                                      signature=signature, args=args))
        deadline = time.monotonic() + self.timeout
        while True:
            message = self.receive(deadline)
            if message.type == SIGNAL and on_signal is not None:
                on_signal(message)
            elif message.fields.get(REPLY_SERIAL) == serial:
                if message.type == ERROR:
                    text = message.body[0] if message.body else ""
                    raise DBusError(str(text), message.fields.get(ERROR_NAME))
                return message.body
