"""Where the service keeps its state: ``--state-dir``, ``$LIFELONG_STATE_DIR``, systemd's
``$STATE_DIRECTORY``, else ``~/.local/state/lifelong``.

The API socket and the policy file follow the same pattern (an option, a ``LIFELONG_*``
variable, the directory systemd hands the unit, a fallback in the state directory). A client
outside the unit (``lifelong status`` in a shell) has no ``$RUNTIME_DIRECTORY``, so it also
looks for the unit's socket at ``/run/lifelong/lifelong.sock``.

The admin commands (deploy, rollback, history) have their own socket beside the API's
(:func:`admin_socket_for`: ``lifelong.sock`` -> ``lifelong-admin.sock``), owner-only, so that
an application allowed to predict cannot change what serves.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "SOCKET_NAME",
    "SYSTEM_SOCKET",
    "admin_socket_for",
    "default_checkpoint",
    "default_front",
    "default_policy",
    "default_predictor",
    "default_predictor_data",
    "default_profile",
    "default_socket",
    "resolve_state_dir",
]

SOCKET_NAME = "lifelong.sock"
SYSTEM_SOCKET = Path("/run/lifelong") / SOCKET_NAME
"""Where the systemd unit's daemon listens (``RuntimeDirectory=lifelong``)."""
SYSTEM_POLICY = Path("/etc/lifelong/policy.toml")


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


def default_profile(state_dir: Path) -> Path:
    return state_dir / "profile" / "device.json"


def default_predictor(state_dir: Path) -> Path:
    """The accuracy predictor (``AccuracyPredictor.save`` writes ``.npz``)."""
    return state_dir / "predictor" / "predictor.npz"


def default_predictor_data(state_dir: Path) -> Path:
    """The evaluated subnets the predictor is built from (``lifelong predictor collect``)."""
    return state_dir / "predictor" / "samples.json"


def default_front(state_dir: Path) -> Path:
    """The cached front that ``lifelong search`` writes and ``lifelong front`` reads."""
    return state_dir / "front" / "front.json"


def _first_dir(variable: str) -> Path | None:
    value = os.environ.get(variable, "")
    return Path(value.split(":")[0]) if value else None


def default_socket(state_dir: Path, *, client: bool = False) -> Path:
    """The API socket: ``$LIFELONG_SOCKET``, ``$RUNTIME_DIRECTORY/lifelong.sock``, else ``STATE/lifelong.sock``.

    With ``client``, the unit's ``/run/lifelong/lifelong.sock`` is preferred to the state
    directory's when it exists, so a shell finds the service without options.
    """
    if os.environ.get("LIFELONG_SOCKET"):
        return Path(os.environ["LIFELONG_SOCKET"]).expanduser()
    runtime = _first_dir("RUNTIME_DIRECTORY")
    if runtime is not None:
        return runtime / SOCKET_NAME
    if client and SYSTEM_SOCKET.is_socket():
        return SYSTEM_SOCKET
    return state_dir / SOCKET_NAME


def admin_socket_for(socket_path: str | os.PathLike[str]) -> Path:
    """The admin socket beside an API socket: ``DIR/NAME.sock`` -> ``DIR/NAME-admin.sock`` (an
    admin socket is its own)."""
    path = Path(socket_path)
    if path.stem.endswith("-admin"):
        return path
    return path.with_name(f"{path.stem}-admin{path.suffix}")


def default_policy(state_dir: Path, *, client: bool = False) -> Path:
    """The policy file: ``$LIFELONG_POLICY``, ``$CONFIGURATION_DIRECTORY/policy.toml``, else ``STATE/policy.toml``.

    With ``client``, ``/etc/lifelong/policy.toml`` is preferred to the state directory's when it exists.
    """
    if os.environ.get("LIFELONG_POLICY"):
        return Path(os.environ["LIFELONG_POLICY"]).expanduser()
    config = _first_dir("CONFIGURATION_DIRECTORY")
    if config is not None:
        return config / "policy.toml"
    if client and SYSTEM_POLICY.is_file():
        return SYSTEM_POLICY
    return state_dir / "policy.toml"
