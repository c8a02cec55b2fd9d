"""Small immutable records for the submit client's path, without typing or collections.

`typing.NamedTuple` costs about a bare Python start and `collections.namedtuple` a
tenth of one (bench/ figure 0); the config and the limits are read on every
`minipipe submit`. A subclass lists its fields with their defaults in FIELDS and
the same names in __slots__; records are built by keyword and never change.
"""

from __future__ import annotations


class Record:
    __slots__ = ()
    FIELDS: dict[str, object] = {}

    def __init__(self, **values: object) -> None:
        unknown = values.keys() - self.FIELDS.keys()
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field(s) {', '.join(sorted(unknown))}")
        for name, default in self.FIELDS.items():
            object.__setattr__(self, name, values.get(name, default))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable; use _replace()")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def _asdict(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.FIELDS}

    def _replace(self, **changes: object) -> Record:
        return type(self)(**{**self._asdict(), **changes})

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._asdict() == other._asdict()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(tuple(self._asdict().values()))

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={value!r}" for name, value in self._asdict().items())
        return f"{type(self).__name__}({fields})"
