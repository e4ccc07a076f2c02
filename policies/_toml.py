"""A tiny TOML writer for policies: top-level scalars first, then one flat table per section.

Only what a policy holds is supported: strings, booleans, integers, floats (inf and nan too),
and tables of those one level deep. Anything else is a ``TypeError``: this writer exists so
that ``tomllib`` reads back exactly what was written, and guessing would break that.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def format_key(key: str) -> str:
    """A key as TOML spells it: bare where allowed, else a quoted string."""
    return key if _BARE_KEY.fullmatch(key) else format_string(key)


def format_string(text: str) -> str:
    """A TOML basic string; control characters are escaped so it stays on one line."""
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def format_value(value: object) -> str:
    """A scalar as TOML spells it."""
    if isinstance(value, bool):  # before int: bool is an int subclass
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)  # shortest text that reads back to the same float; has '.' or 'e'
    if isinstance(value, str):
        return format_string(value)
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as a TOML policy value")


def dumps(document: Mapping[str, object]) -> str:
    """TOML text for ``document``: scalars at the top, then ``[table]`` sections in order."""
    lines = [f"{format_key(k)} = {format_value(v)}" for k, v in document.items() if not isinstance(v, Mapping)]
    for name, table in document.items():
        if not isinstance(table, Mapping):
            continue
        if lines:
            lines.append("")
        lines.append(f"[{format_key(name)}]")
        for key, value in table.items():
            if isinstance(value, Mapping):
                raise TypeError(f"cannot write nested table {name}.{key}: policy sections are flat")
            lines.append(f"{format_key(key)} = {format_value(value)}")
    return "\n".join(lines) + "\n"
