"""Shipped presets: commented TOML policies in this folder, loaded by name.

Each ``NAME.toml`` here is a complete policy whose header says when to use it; copy one to
start a policy of your own. They are package data, read through :mod:`importlib.resources`
so that they are found in an installed wheel as well as in the source tree.
"""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable

from policies._checks import closest
from policies.errors import PolicyError
from policies.loader import parse_policy_text
from policies.schema import Policy

__all__ = ["load_preset", "preset_names"]

_SUFFIX = ".toml"


def _folder() -> Traversable:
    return files("policies") / "presets"


def preset_names() -> list[str]:
    """Names of the shipped presets, sorted."""
    return sorted(p.name.removesuffix(_SUFFIX) for p in _folder().iterdir() if p.name.endswith(_SUFFIX))


def load_preset(name: str) -> Policy:
    """The shipped preset ``name`` (a name from :func:`preset_names`, without ``.toml``).

    Raises:
        PolicyError: No preset has that name; the message lists those that exist.
    """
    names = preset_names()
    if name not in names:
        suggestion = closest(name, names) if isinstance(name, str) else None
        mean = f" (did you mean {suggestion!r}?)" if suggestion else ""
        raise PolicyError(f"unknown policy preset {name!r}{mean}; the presets are: {', '.join(names)}")
    text = (_folder() / f"{name}{_SUFFIX}").read_text(encoding="utf-8")
    return parse_policy_text(text, f"presets/{name}{_SUFFIX}")
