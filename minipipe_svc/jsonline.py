"""JSON for the submit client's start-up budget: the C codec without the `json` package.

`import json` pulls in `re` and compiles its patterns: about half a bare Python
start, more than the rest of a submit's client (bench/ figure 0). The request is a
flat object of strings, numbers, booleans and null, and the C scanner `_json` (what
`json` itself uses) reads any reply or config. Whatever these cannot do, or any
error, goes to the `json` package, so every message and exception is json's own.
"""

from __future__ import annotations

import _json

_ASCII = _json.encode_basestring_ascii


class _Context:
    """The decoder attributes the C scanner reads (json.JSONDecoder's defaults)."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    memo: dict[str, str] = {}

    @staticmethod
    def parse_constant(name: str) -> float:
        return {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}[name]


_scan = _json.make_scanner(_Context())
_SPACE = " \t\n\r"


def loads(text: str) -> object:
    """json.loads(text), for a str."""
    start = len(text) - len(text.lstrip(_SPACE))
    try:
        value, end = _scan(text, start)
    except Exception:  # json, below, raises the real error
        # (The C scanner reports errors through json.decoder, which is not imported
        # here: it may fail with a bare SystemError. json says what is wrong.)
        end = -1
    finally:
        _Context.memo.clear()
    if end < 0 or text[end:].strip(_SPACE):
        import json

        return json.loads(text)  # raises json's own JSONDecodeError
    return value


def dumps_flat(message: dict[str, object]) -> str:
    """json.dumps(message, separators=(",", ":")) (ASCII) for an object whose values are
    str, int, float, bool or None; anything else goes to the json package."""
    parts = []
    for key, value in message.items():
        if value is None:
            text = "null"
        elif value is True or value is False:
            text = "true" if value else "false"
        elif isinstance(value, str):
            text = _ASCII(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            text = int.__repr__(value)
        else:
            import json

            return json.dumps(message, separators=(",", ":"))
        parts.append(f"{_ASCII(str(key))}:{text}")
    return "{" + ",".join(parts) + "}"
