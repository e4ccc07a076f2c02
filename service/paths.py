"""Where the service keeps its state: ``--state-dir``, ``$LIFELONG_STATE_DIR``, systemd's
``$STATE_DIRECTORY``, else ``~/.local/state/lifelong``."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_checkpoint", "resolve_state_dir"]


def resolve_state_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    if explicit:
        path = Path(explicit)
    elif os.environ.get("LIFELONG_STATE_DIR"):
        path = Path(os.environ["LIFELONG_STATE_DIR"])
    elif os.environ.get("STATE_DIRECTORY"):  # set by systemd's StateDirectory=
        path = Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    else:
        path = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "lifelong"
    return path.expanduser()


def default_checkpoint(state_dir: Path) -> Path:
    return state_dir / "supernet" / "supernet.pt"
