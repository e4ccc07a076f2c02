"""The daemon's admin endpoints: deploy, rollback, history.

They are served on their own Unix socket (``lifelong-admin.sock``, mode 0600: the service's
user, and root), never on the API socket that applications predict through (mode 0660, the
service's group), which answers them 403 naming the admin socket. An application allowed to
predict cannot roll the service back or deploy a model of its own.

- ``POST /v1/deploy``: JSON ``{"model": ID}`` (a model in the registry) or ``{"path": FILE}``
  (an absolute path in ``STATE/inbox`` or a folder given with ``lifelong serve --deploy-dir``;
  anything else is refused 403 before the file is looked at, so the answer is the same
  whether or not it exists; its ``NAME.parity.npz`` sibling is checked as the parity
  sample), optional ``"reason"``; or the ONNX bytes themselves (``application/octet-stream``,
  ``?name=FILE.onnx&reason=...``), which is what ``lifelong deploy FILE`` sends, since the daemon's
  sandbox may not see the caller's files. Answers the :class:`~service.daemon.swap.SwapResult`;
  422 when the model is refused (the old one serves on), 404 for an unknown id.
- ``POST /v1/deploy`` with JSON ``{"subnet": NAME}``: export that subnet of the supernet in use
  in a worker (behind the parity gate) and deploy it when the export ends. Answers at once
  with what was queued (``{"export": ...}``); ``lifelong status`` shows the export and its outcome.
- ``POST /v1/rollback``: optional JSON ``{"reason": ...}``; 404 when there is nothing to go back to.
- ``GET /v1/history?limit=N``: deployments, newest first.

A change is never made on the request's thread: the handler hands a command to the daemon's
loop (:meth:`~service.daemon.loop.EventLoop.submit`) and waits for its result, so deploys and
rollbacks are serialised with every other change.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs

from lifelong.errors import SpaceError
from lifelong.space.config import SubnetConfig
from service.api.app import JSON, ApiApp
from service.errors import Forbidden, RequestError

__all__ = ["CommandSink", "allowed_model_path", "install_admin_routes"]

MODEL_ID = re.compile(r"[0-9a-f]{16}")
NAMED_EXTREME = re.compile(r"(largest|smallest)(:w\d+a\d+)?")


def is_subnet_name(value: str) -> bool:
    """A subnet name in the space's grammar (:class:`lifelong.space.config.SubnetConfig`, one owner) or
    a named extreme; the worker checks that the subnet belongs to the supernet in use."""
    if NAMED_EXTREME.fullmatch(value):
        return True
    try:
        SubnetConfig.parse(value)
    except SpaceError:
        return False
    return True


ONNX_TYPES = ("application/octet-stream", "application/x-onnx", "application/onnx")


class CommandSink(Protocol):
    """Runs a named command where changes are made (the daemon's loop) and returns its result."""

    def submit(self, name: str, args: dict[str, Any] | None = None, timeout: float | None = None) -> Any: ...


def _reason(doc: dict[str, Any]) -> str | None:
    reason = doc.get("reason")
    if reason is not None and (not isinstance(reason, str) or not reason.strip() or len(reason) > 500):
        raise RequestError(f'"reason" is {reason!r}; expected a non-empty string of at most 500 characters')
    return reason


def allowed_model_path(value: str, roots: Sequence[Path]) -> str:
    """``value`` with its links resolved, if it lies in one of ``roots``.

    Decided on the path alone (``realpath`` does not need the file to exist), so a refusal
    says nothing about whether the file exists or can be read.

    Raises:
        RequestError: a relative path.
        Forbidden: a path outside every root.
    """
    if not os.path.isabs(value):
        raise RequestError(f"path {value!r} is relative; expected an absolute path the daemon reads")
    real = os.path.realpath(value)
    for root in roots:
        top = os.path.realpath(root)
        if real != top and os.path.commonpath([real, top]) == top:
            return real
    folders = ", ".join(str(r) for r in roots)
    raise Forbidden(
        f"deploy by path reads models only from {folders}; copy the model there (or add a folder with "
        "`lifelong serve --deploy-dir`), or send its bytes: `lifelong deploy FILE` does"
    )


def install_admin_routes(
    app: ApiApp,
    commands: CommandSink,
    *,
    history: Callable[[int], dict[str, Any]],
    max_upload_bytes: int,
    deploy_roots: Sequence[Path] = (),
) -> None:
    """Add the admin endpoints to ``app`` (the admin socket's).

    Args:
        app: The admin application.
        commands: Where deploy and rollback run (``submit("deploy", {...})``).
        history: Reads the deployment history (on the request's thread: it changes nothing).
        max_upload_bytes: The largest model upload read.
        deploy_roots: The folders a deploy by path may read from (none: no deploy by path).
    """

    def deploy_route(environ: dict[str, Any]) -> tuple[int, Any]:
        ctype = str(environ.get("CONTENT_TYPE") or "").split(";")[0].strip().lower()
        if ctype in ONNX_TYPES:
            query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
            name = query.get("name", "model.onnx")[:200]
            data = app.read_body(environ, max_upload_bytes)
            return 200, commands.submit("deploy", {"data": data, "name": name, "reason": _reason(query)})
        if ctype not in ("", JSON):
            raise RequestError(f"Content-Type {ctype!r} is not read here; send {JSON} or application/octet-stream")
        doc = app.read_json(environ)
        if not isinstance(doc, dict):
            raise RequestError('expected a JSON object {"model": ID} or {"path": FILE}')
        unknown = sorted(set(doc) - {"model", "path", "subnet", "reason"})
        if unknown:
            raise RequestError(f"unknown keys {unknown}; expected 'model', 'path' or 'subnet', and optionally 'reason'")
        given = [k for k in ("model", "path", "subnet") if doc.get(k) is not None]
        if len(given) != 1 or not isinstance(doc[given[0]], str) or not doc[given[0]].strip():
            raise RequestError(
                'expected exactly one of {"model": "<model id>"}, {"path": "/path/to/model.onnx"} or '
                '{"subnet": "<subnet name>"}'
            )
        key, value = given[0], doc[given[0]].strip()
        if key == "model" and not MODEL_ID.fullmatch(value):
            raise RequestError(f"model id {value!r} is not one; expected 16 hex digits as `lifelong history` shows")
        if key == "subnet":
            if not is_subnet_name(value):
                raise RequestError(
                    f"subnet {value!r} is not a subnet name; expected a canonical name as `lifelong front` "
                    "shows, or largest[:wXaY] / smallest[:wXaY]"
                )
            return 202, commands.submit("export", {"subnet": value, "reason": _reason(doc)})
        if key == "path":
            value = allowed_model_path(value, deploy_roots)
        return 200, commands.submit("deploy", {key: value, "reason": _reason(doc)})

    def rollback_route(environ: dict[str, Any]) -> tuple[int, Any]:
        doc = app.read_json(environ, optional=True)
        if not isinstance(doc, dict) or set(doc) - {"reason"}:
            raise RequestError('expected no body or a JSON object {"reason": "..."}')
        return 200, commands.submit("rollback", {"reason": _reason(doc)})

    def history_route(environ: dict[str, Any]) -> tuple[int, Any]:
        raw = parse_qs(environ.get("QUERY_STRING", "")).get("limit", ["20"])[0]
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 4) or not 1 <= int(raw) <= 1000:
            raise RequestError(f"?limit={raw!r}; expected an integer from 1 to 1000")
        return 200, history(int(raw))

    app.add_route("/v1/deploy", "POST", deploy_route)
    app.add_route("/v1/rollback", "POST", rollback_route)
    app.add_route("/v1/history", "GET", history_route)
