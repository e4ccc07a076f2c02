"""Reading and writing policies: TOML file -> validated :class:`~policies.schema.Policy` -> TOML.

The loader checks every key of every section before it builds anything, so a bad file
raises one :class:`~policies.errors.PolicyValidationError` that lists every problem, and
no caller ever sees half a policy.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from policies._checks import check_value, describe, unknown_key
from policies._toml import dumps, format_key
from policies.errors import PolicyError, PolicyFileError, PolicyValidationError, Problem
from policies.schema import _DEFAULT_NAME, _MISSING, _NAME, _SECTIONS, Policy, _format_version_problem

__all__ = ["load_policy", "parse_policy", "parse_policy_text", "policy_to_dict", "policy_to_toml"]

_TOP_LEVEL = ("format_version", "name")
_AT = re.compile(r"\(at line (\d+), column (\d+)\)")


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """Read and validate a policy file.

    Raises:
        PolicyFileError: The file is missing, unreadable, not UTF-8 or not valid TOML.
        PolicyValidationError: The TOML breaks the schema; every problem is listed.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyFileError(path, "policy file not found") from None
    except UnicodeDecodeError as exc:
        raise PolicyFileError(path, f"not UTF-8 text (byte {exc.start}): a policy is a TOML file") from None
    except OSError as exc:
        raise PolicyFileError(path, f"cannot read the policy file: {exc.strerror or exc}") from None
    return parse_policy_text(text, str(path))


def parse_policy_text(text: str, source: str = "<policy>") -> Policy:
    """Parse and validate policy TOML held in a string; ``source`` names it in errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = _AT.search(str(exc))
        line, column = (int(found[1]), int(found[2])) if found else (None, None)
        raise PolicyFileError(source, f"not valid TOML: {exc}", line, column) from None
    return parse_policy(data, source)


def parse_policy(data: Mapping[str, Any], source: str = "<policy>") -> Policy:
    """Validate a policy already read from TOML (or built as a dict) and build it.

    Every key, type and range is checked, and unknown sections and keys are problems with a
    "did you mean"; all problems are collected before anything is built.

    Args:
        data: The TOML document, as ``tomllib`` returns it.
        source: Names the policy in problems, usually its file.

    Raises:
        PolicyError: ``data`` is not a table at all.
        PolicyValidationError: Every problem found.
    """
    if not isinstance(data, Mapping):
        raise PolicyError(f"{source}: a policy is a TOML table of keys and sections, found {describe(data)}")
    problems: list[Problem | None] = []
    version = data.get("format_version", _MISSING)
    problems.append(_format_version_problem(version, source))
    name, name_problem = check_value(_NAME, data.get("name", _DEFAULT_NAME), source, "name")
    problems.append(name_problem)

    sections: dict[str, object] = {}
    for raw_key, value in data.items():
        key = str(raw_key)  # TOML keys are strings; a dict built in Python may hold others
        if key in _TOP_LEVEL:
            continue
        cls = _SECTIONS.get(key)
        if cls is None:
            homes = {k: f"{s}.{k}" for s, c in _SECTIONS.items() for k in c.specs()}
            what = "section" if isinstance(value, Mapping) else "key"
            problems.append(unknown_key(source, key, format_key(key), [*_TOP_LEVEL, *_SECTIONS], homes, what=what))
        elif not isinstance(value, Mapping):
            problems.append(Problem(source, key, f"a table (a [{key}] section)", describe(value)))
        else:
            values, found = cls.check(value, source)
            problems += found
            sections[key] = values

    real = [p for p in problems if p is not None]
    if real:
        raise PolicyValidationError(real)
    built = {key: _SECTIONS[key](**values) for key, values in sections.items()}
    return Policy(format_version=version, name=name, **built)


def policy_to_dict(policy: Policy) -> dict[str, Any]:
    """The policy as plain data (TOML and JSON friendly); keys set to ``None`` are left out."""
    document: dict[str, Any] = {"format_version": policy.format_version, "name": policy.name}
    for key in _SECTIONS:
        document[key] = getattr(policy, key).to_table()
    return document


def policy_to_toml(policy: Policy) -> str:
    """TOML text that :func:`parse_policy_text` reads back to an equal policy."""
    return dumps(policy_to_dict(policy))
