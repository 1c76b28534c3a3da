"""One text form for lampc's configuration records, derived from their dataclass fields.

A record (a site's producer, rule, execution or model facts; see lampc/config/) is written as its tag (if its
class has one), its positional fields' values, then `name=value` for every other field that is not at its default:

    >>> encode(Emulated(format="m4", block_k=32))
    'emulate m4 block_k=32'
    >>> encode(Rule(criterion="strict", tau=0.1))
    'strict tau=0.1'

`decode` reads it back. The same field parsing (`parse_field`) serves the op arguments of a rewritten graph, policy
files, the command line and lm-eval's `model_args`, so a new field is one line in its dataclass: its annotation
says how its text is read. Values: "none" is None; a bool is 1/0 (true/false, yes/no, on/off when read); an
`int | float` field reads "8" as a count and "0.05" or "5e-2" as a fraction; a `tuple[int, int]` field is written
"64x32" (a tile's rows x keys). Loads no torch.
"""

from __future__ import annotations

import dataclasses
import functools
import typing

from ..formats import Format

TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class Record:
    """Base of the configuration records: `CODE_TAG` (the first word of the text, or None) and `CODE_POSITIONAL`
    (fields written by value alone, in order, after the tag); `CODE_ALL_FIELDS` writes defaults too."""

    CODE_TAG: typing.ClassVar[str | None] = None
    CODE_POSITIONAL: typing.ClassVar[tuple[str, ...]] = ()
    CODE_ALL_FIELDS: typing.ClassVar[bool] = False
    CODE_WHEN_SET: typing.ClassVar[tuple[str, ...]] = ()  # with CODE_ALL_FIELDS: fields written only off default

    def to_text(self) -> str:
        return encode(self)

    @classmethod
    def from_text(cls, text: str):
        return decode(cls, text)


@functools.cache
def field_kinds(cls) -> dict[str, tuple[str, bool]]:
    """{field: (kind, optional)} of a record class, from its annotations: kind is one of bool, int, float, number
    (int | float), pair (tuple[int, int]), format, str."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        args = set(typing.get_args(hints[f.name])) or {hints[f.name]}
        optional = type(None) in args
        args.discard(type(None))
        if hints[f.name] == tuple[int, int] or args == {tuple[int, int]}:
            kind = "pair"
        elif Format in args:
            kind = "format"
        elif args == {int, float}:
            kind = "number"
        elif len(args) == 1 and next(iter(args)) in (bool, int, float, str):
            kind = next(iter(args)).__name__
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: no text form for type {hints[f.name]}")
        out[f.name] = (kind, optional)
    return out


def value_text(value) -> str:
    """One field value as text: a Format by name, a bool as 1/0, None as none, a float by repr."""
    if isinstance(value, Format):
        return value.name
    if isinstance(value, bool):
        return str(int(value))
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return "x".join(str(v) for v in value)
    return repr(value) if isinstance(value, float) else str(value)


def parse_field(cls, name: str, text: str, owner: str | None = None):
    """The value of field `name` of record class `cls` from its text (ValueError naming the field otherwise).
    The field's range is the record's to check, on construction."""
    kinds = field_kinds(cls)
    where = f"{owner or cls.__name__}.{name}"
    if name not in kinds:
        raise ValueError(f"{where}: no such field; fields: {', '.join(kinds)}")
    kind, optional = kinds[name]
    word = text.strip()
    if optional and word.lower() == "none":
        return None
    try:
        if kind == "bool":
            if word.lower() in TRUE_WORDS:
                return True
            if word.lower() in FALSE_WORDS:
                return False
            raise ValueError
        if kind == "int":
            return int(word)
        if kind == "float":
            return float(word)
        if kind == "number":
            return float(word) if any(c in word.lower() for c in ".e") else int(word)
        if kind == "pair":
            rows, keys = word.lower().split("x")
            return int(rows), int(keys)
    except ValueError:
        expected = {"bool": "true or false (1/0)", "int": "an integer", "float": "a number",
                    "number": "an integer count or a fraction like 0.05", "pair": "rows x keys, like 64x32"}[kind]
        raise ValueError(f"{where}: expected {expected}" + (" or none" if optional else "") + f", got {text!r}") \
            from None
    return word


def encode(record: Record) -> str:
    cls = type(record)
    words = [cls.CODE_TAG] if cls.CODE_TAG else []
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if f.name in cls.CODE_POSITIONAL:
            words.append(value_text(value))
        elif ((cls.CODE_ALL_FIELDS and f.name not in cls.CODE_WHEN_SET) or f.default is dataclasses.MISSING
              or value != f.default):
            words.append(f"{f.name}={value_text(value)}")
    return " ".join(words)


def decode(cls, text: str):
    """The record of class `cls` that `encode` wrote as `text` (ValueError naming what does not fit)."""
    words = text.split()
    if cls.CODE_TAG:
        if not words or words[0] != cls.CODE_TAG:
            raise ValueError(f"{cls.__name__}: expected text starting with {cls.CODE_TAG!r}, got {text!r}")
        words = words[1:]
    values = {}
    for name in cls.CODE_POSITIONAL:
        if not words or "=" in words[0]:
            raise ValueError(f"{cls.__name__}: {name} missing in {text!r}")
        values[name] = parse_field(cls, name, words.pop(0))
    for word in words:
        name, equals, value = word.partition("=")
        if not equals:
            raise ValueError(f"{cls.__name__}: expected name=value, got {word!r} in {text!r}")
        values[name] = parse_field(cls, name, value)
    return cls(**values)
