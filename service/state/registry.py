"""The model registry on disk: content-addressed ONNX models and the atomic current pointer.

Layout under the state directory::

    STATE/models/<id>/model.onnx    id = sha256(model.onnx)[:16]; a folder never changes once visible
    STATE/models/<id>/meta.json     {"format": REGISTRY_FORMAT, "id", "sha256", "subnet", ...}
    STATE/current.json              the pointer: {"format", "id", "at"}; the truth about what serves
    STATE/current.onnx              symlink -> models/<id>/model.onnx, for other programs

Crash safety, by construction: a model is written into ``models/.tmp-<pid>-*``, its files and
the folder are fsynced, and only then renamed into place, so a model is visible only when
complete. The pointer is replaced by temp file + fsync + rename, then the symlink by a temp
symlink renamed over the old one: a crash leaves the pointer and the link each old or new,
never partial, and the link always names a complete model. Opening a registry deletes
leftovers of dead processes and points the link where the pointer says.

Who owns what: the registry's pointer says which model serves; the store keeps the history
(:class:`~service.state.store.Store` deployments) and measured values. :meth:`Registry.deploy`
switches in write-ahead order (pending row, pointer, row made live) and
:meth:`Registry.reconcile`, run at daemon start, settles whatever a crash left between them.

Tests pause a process at a named point by setting ``LIFELONG_REGISTRY_PAUSE=<point>`` and
``LIFELONG_REGISTRY_PAUSE_MARKER=<file>`` (see :func:`_pause`); nothing else reads them.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from lifelong.deploy.model_format import META_CHECKPOINT, META_FORMAT, META_SUBNET, read_metadata
from service.errors import RegistryError
from service.state.store import Deployment, ModelRecord, Store

__all__ = ["REGISTRY_FORMAT", "ReconcileReport", "Registry"]

logger = logging.getLogger(__name__)

REGISTRY_FORMAT = 1
"""Version of ``meta.json`` and ``current.json``."""

MODEL_FILE, META_FILE = "model.onnx", "meta.json"
POINTER_FILE, LINK_FILE = "current.json", "current.onnx"
_CHUNK = 1 << 20
_META_KEYS = {f.name for f in fields(ModelRecord)} - {"id", "sha256", "bytes", "removed"}


def _pause(point: str) -> None:
    """Test hook: stop here (for a SIGKILL) when ``LIFELONG_REGISTRY_PAUSE`` names ``point``."""
    if os.environ.get("LIFELONG_REGISTRY_PAUSE") != point:
        return
    marker = os.environ.get("LIFELONG_REGISTRY_PAUSE_MARKER")
    if marker:
        Path(marker).write_text(point)
    time.sleep(3600)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _onnx_props(path: Path) -> dict[str, str]:
    try:
        return read_metadata(path.read_bytes())
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise RegistryError(f"{path} is not a readable ONNX model: {exc}") from exc


@dataclass(frozen=True)
class ReconcileReport:
    """What :meth:`Registry.reconcile` found and fixed; ``clean`` when nothing."""

    adopted: list[str] = field(default_factory=list)  # folders on disk the store did not know
    missing: list[str] = field(default_factory=list)  # store rows whose folder is gone: marked removed
    pending: list[tuple[int, str]] = field(default_factory=list)  # (deployment id, state it was settled to)
    current: list[str] = field(default_factory=list)  # how pointer and live deployment were made to agree

    @property
    def clean(self) -> bool:
        return not (self.adopted or self.missing or self.pending or self.current)


class Registry:
    """Models under ``STATE/models`` and the current pointer. Opening cleans crash leftovers.

    Args:
        state_dir: the service's state directory (created if missing).
    """

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.root = Path(state_dir)
        self.models_dir = self.root / "models"
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self.pointer, self.link = self.root / POINTER_FILE, self.root / LINK_FILE
        self.recovered = self.recover()

    def __repr__(self) -> str:
        return f"Registry({str(self.root)!r})"

    def _tmp_name(self, prefix: str) -> str:
        return f"{prefix}{os.getpid()}-{secrets.token_hex(4)}"

    # -- models --------------------------------------------------------------------------

    def add(self, source: bytes | str | os.PathLike[str], meta: Mapping[str, Any] | None = None) -> ModelRecord:
        """Add an ONNX model (bytes or a file path) and return its record.

        ``meta`` may set any :class:`ModelRecord` field but ``id``, ``sha256``, ``bytes`` and
        ``removed`` (``source`` defaults to "import"); ``subnet``, ``checkpoint_sha`` and
        ``format_version`` default to the model's ONNX metadata and must agree with it.
        Adding content already present returns the existing record unchanged: ``meta.json``
        is written once; later measurements belong in the store (``Store.update_model``).

        Raises:
            RegistryError: not an ONNX file, unknown or conflicting meta keys, disk errors.
        """
        meta = dict(meta or {})
        unknown = sorted(set(meta) - _META_KEYS)
        if unknown:
            raise RegistryError(f"unknown model meta keys {unknown}; expected some of {sorted(_META_KEYS)}")
        tmp = self.models_dir / self._tmp_name(".tmp-")
        tmp.mkdir(mode=0o755)
        try:
            sha, size = self._copy(source, tmp / MODEL_FILE)
            model_id = sha[:16]
            if (self.models_dir / model_id / META_FILE).exists():
                logger.info("model %s is already in the registry", model_id)
                return self.get(model_id)
            props = _onnx_props(tmp / MODEL_FILE)
            from_onnx = {
                "subnet": props.get(META_SUBNET),
                "checkpoint_sha": props.get(META_CHECKPOINT),
                "format_version": int(props[META_FORMAT]) if props.get(META_FORMAT, "").isdigit() else None,
            }
            for key, value in from_onnx.items():
                if meta.get(key) is not None and value is not None and meta[key] != value:
                    raise RegistryError(f"meta {key}={meta[key]!r} contradicts the model's ONNX metadata {value!r}")
                meta.setdefault(key, value)
            meta.setdefault("source", "import")
            meta.setdefault("created", time.time())
            record = ModelRecord(id=model_id, sha256=sha, bytes=size, **meta)
            body = {"format": REGISTRY_FORMAT, **asdict(record)}
            del body["removed"]
            _write_durably(tmp / META_FILE, json.dumps(body, indent=2, sort_keys=True).encode())
            _fsync_dir(tmp)
            _pause("add:before-rename")
            try:
                os.rename(tmp, self.models_dir / model_id)
            except OSError:  # another process added the same content meanwhile
                if (self.models_dir / model_id / META_FILE).exists():
                    return self.get(model_id)
                raise
            _fsync_dir(self.models_dir)
            logger.info("added model %s (%d bytes, subnet %s, source %s)", model_id, size, record.subnet, record.source)
            return record
        except OSError as exc:
            raise RegistryError(f"cannot add a model to {self.models_dir}: {exc}") from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @staticmethod
    def _copy(source: bytes | str | os.PathLike[str], dest: Path) -> tuple[str, int]:
        digest, size = hashlib.sha256(), 0
        with open(dest, "wb") as out:
            if isinstance(source, bytes | bytearray | memoryview):
                chunks: Iterable[bytes] = (bytes(source[i : i + _CHUNK]) for i in range(0, len(source), _CHUNK))
                src = None
            else:
                src = open(source, "rb")  # noqa: SIM115 - closed below
                chunks = iter(lambda: src.read(_CHUNK), b"")
            try:
                for chunk in chunks:
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                    if size == len(chunk):
                        out.flush()
                        _pause("add:writing")
            finally:
                if src is not None:
                    src.close()
            out.flush()
            os.fsync(out.fileno())
        if size == 0:
            raise RegistryError("cannot add an empty model")
        return digest.hexdigest(), size

    def get(self, model_id: str) -> ModelRecord:
        """The record in ``meta.json``. Raises RegistryError for an unknown id or bad file."""
        path = self.models_dir / model_id / META_FILE
        try:
            body = json.loads(path.read_text())
        except FileNotFoundError:
            raise RegistryError(f"no model {model_id!r} in {self.models_dir}") from None
        except (OSError, ValueError) as exc:
            raise RegistryError(f"unreadable {path}: {exc}") from exc
        found = body.pop("format", None)
        if found != REGISTRY_FORMAT:
            raise RegistryError(
                f"{path} has format {found!r}; this lifelong reads format {REGISTRY_FORMAT}: upgrade lifelong"
            )
        return ModelRecord(**{k: v for k, v in body.items() if k in {f.name for f in fields(ModelRecord)}})

    def path(self, model_id: str) -> Path:
        """The model file of ``model_id``. Raises RegistryError if it is not in the registry."""
        path = self.models_dir / model_id / MODEL_FILE
        if model_id.startswith(".") or "/" in model_id or not (path.parent / META_FILE).is_file():
            raise RegistryError(f"no model {model_id!r} in {self.models_dir}")
        return path

    def __contains__(self, model_id: object) -> bool:
        return isinstance(model_id, str) and (self.models_dir / model_id / META_FILE).is_file()

    def list(self) -> builtins.list[ModelRecord]:
        """Complete models, newest first."""
        records = [self.get(p.name) for p in self.models_dir.iterdir() if not p.name.startswith(".") and p.name in self]
        return sorted(records, key=lambda r: (-r.created, r.id))

    def verify(self, model_id: str) -> ModelRecord:
        """Re-hash the model file; raise RegistryError if it is not what was added."""
        record = self.get(model_id)
        digest = hashlib.sha256()
        with open(self.path(model_id), "rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                digest.update(chunk)
        if digest.hexdigest() != record.sha256:
            raise RegistryError(
                f"model {model_id} is corrupt: {self.path(model_id)} hashes to {digest.hexdigest()}, "
                f"expected {record.sha256}; delete the folder and add the model again"
            )
        return record

    # -- the current pointer -------------------------------------------------------------

    def current_id(self) -> str | None:
        """The serving model according to the pointer file; ``None`` before the first."""
        return read_current_id(self.root)

    def set_current(self, model_id: str) -> None:
        """Point the registry (and ``STATE/current.onnx``) at ``model_id``, atomically."""
        self.path(model_id)  # must exist and be complete
        try:
            tmp = self.root / self._tmp_name(".current.json.tmp-")
            body = {"format": REGISTRY_FORMAT, "id": model_id, "at": time.time()}
            _write_durably(tmp, json.dumps(body).encode())
            os.replace(tmp, self.pointer)
            _fsync_dir(self.root)
            _pause("set_current:pointer")
            self._link_to(model_id)
        except OSError as exc:
            raise RegistryError(f"cannot switch the current model in {self.root} to {model_id}: {exc}") from exc
        logger.info("current model is now %s", model_id)

    def _link_to(self, model_id: str) -> None:
        tmp = self.root / self._tmp_name(".current.onnx.tmp-")
        os.symlink(os.path.join("models", model_id, MODEL_FILE), tmp)
        _pause("set_current:link-tmp")
        os.replace(tmp, self.link)
        _fsync_dir(self.root)

    def _link_id(self) -> str | None:
        try:
            return Path(os.readlink(self.link)).parent.name
        except OSError:
            return None

    def clear_current(self) -> None:
        """Remove the pointer, then the link (the daemon then has nothing to serve)."""
        self.pointer.unlink(missing_ok=True)
        self.link.unlink(missing_ok=True)
        _fsync_dir(self.root)

    def recover(self) -> builtins.list[str]:
        """Delete temp files of dead processes and make the link follow the pointer.

        Runs at open; returns what it did, for the log. Temp names carry the writer's pid, so
        a second process opening the registry never deletes a live process's work. An
        unparsable pointer is rebuilt from the link; one of a newer format is left alone
        (:meth:`current_id` then raises, asking for an upgrade).
        """
        done = []
        for parent, prefixes in (
            (self.models_dir, (".tmp-", ".trash-")),
            (self.root, (".current.json.tmp-", ".current.onnx.tmp-")),
        ):
            for p in parent.iterdir():
                prefix = next((x for x in prefixes if p.name.startswith(x)), None)
                if prefix is None:
                    continue
                pid = p.name[len(prefix) :].split("-", 1)[0]
                if pid.isdigit() and _pid_alive(int(pid)):
                    continue
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
                done.append(f"removed leftover {p.name}")
        try:
            json.loads(self.pointer.read_text())
        except FileNotFoundError:
            pass
        except (OSError, ValueError):  # written atomically, so only a failing disk gets here
            link_id = self._link_id()
            if link_id is not None and link_id in self:
                self.set_current(link_id)
                done.append(f"rewrote the unreadable pointer from the link ({link_id})")
            else:
                self.pointer.unlink()
                done.append("removed the unreadable pointer (no usable link)")
        current = self.current_id()
        if current is None and os.path.lexists(self.link):
            self.link.unlink()
            done.append("removed the link of a cleared pointer")
        elif current is not None and current in self and self._link_id() != current:
            self._link_to(current)
            done.append(f"pointed {LINK_FILE} at {current}")
        elif current is not None and current not in self:
            logger.error("the current model %s has no folder in %s; reconcile with the store", current, self.root)
        for line in done:
            logger.warning("registry recovery: %s", line)
        return done

    # -- retention -----------------------------------------------------------------------

    def prune(
        self,
        keep_models: int,
        keep_days: float,
        protect: Iterable[str] = (),
        *,
        store: Store | None = None,
        now: float | None = None,
    ) -> builtins.list[str]:
        """Delete old models; return the ids removed.

        A model stays if it is among the ``keep_models`` newest, or younger than
        ``keep_days``, or protected: ``protect``, the pointer's and the link's model, and with
        ``store`` its live deployment, rollback target and pending deployments. Removed
        models are marked ``removed`` in ``store``. A folder is renamed to ``.trash-*``
        before deletion, so a crash never leaves a half-deleted model visible.
        """
        if keep_models < 0 or keep_days < 0:
            raise ValueError(f"keep_models and keep_days must be >= 0, got {keep_models!r} and {keep_days!r}")
        now = time.time() if now is None else now
        keep = set(protect) | {self.current_id(), self._link_id()}
        if store is not None:
            live = store.current_deployment()
            keep |= {live.model_id if live else None, store.previous_model()}
            keep |= {d.model_id for d in store.pending_deployments()}
        records = self.list()
        keep |= {r.id for r in records[:keep_models]}
        keep |= {r.id for r in records if r.created >= now - keep_days * 86400}
        removed: builtins.list[str] = []
        try:
            for record in records:
                if record.id in keep:
                    continue
                self._remove_folder(record.id, "prune")
                removed.append(record.id)
                logger.info("pruned model %s (created %.0f s ago)", record.id, now - record.created)
        finally:
            if store is not None and removed:
                store.mark_models_removed(removed)
        return removed

    def discard(self, model_id: str, store: Store | None = None) -> bool:
        """Remove a model that was refused before it ever served (a failed task check); the
        pointer's, the link's and the store's live and rollback models are never removed.
        True if it was removed."""
        protected = {self.current_id(), self._link_id()}
        if store is not None:
            live = store.current_deployment()
            protected |= {live.model_id if live else None, store.previous_model()}
        if model_id in protected or model_id not in self:
            return False
        self._remove_folder(model_id, "discard")
        if store is not None:
            store.mark_models_removed([model_id])
        logger.info("discarded model %s: refused before it served", model_id)
        return True

    def _remove_folder(self, model_id: str, why: str) -> None:
        """Rename the model's folder to ``.trash-*`` (atomic, durable), then delete it."""
        trash = self.models_dir / self._tmp_name(".trash-")
        try:
            os.rename(self.models_dir / model_id, trash)
            _fsync_dir(self.models_dir)
        except OSError as exc:
            raise RegistryError(f"cannot {why} model {model_id} from {self.models_dir}: {exc}") from exc
        shutil.rmtree(trash, ignore_errors=True)

    # -- agreement with the store --------------------------------------------------------

    def deploy(
        self, store: Store, model_id: str, *, reason: str, state: str = "active", detail: str | None = None
    ) -> Deployment:
        """Make ``model_id`` current, in write-ahead order so that a crash at any point is
        settled by :meth:`reconcile`: (1) a ``pending`` deployment row, (2) the pointer and
        link, (3) the row made ``state`` ("canary" or "active"; the old live row is superseded).

        The caller loads and validates the model (``path(model_id)``) before, and swaps its
        runtime after; the model is recorded in the store first if it is not yet.
        """
        if state not in ("canary", "active"):
            raise ValueError(f"a deployment goes 'canary' or 'active', got {state!r}")
        record = self.verify(model_id)
        known = store.get_model(model_id)
        if known is None or known.removed is not None:
            store.record_model(record)
        pending = store.record_deployment(model_id, reason=reason, state="pending", detail=detail)
        _pause("deploy:pending")
        self.set_current(model_id)
        return store.update_deployment(pending.id, state)

    def reconcile(self, store: Store) -> ReconcileReport:
        """Make the store agree with the disk after a crash or a manual change; run at start.

        Folders the store does not know are recorded; rows whose folder is gone are marked
        removed. A pending deployment becomes ``canary`` if the pointer reached its model (the
        daemon watches it before promoting) and ``failed`` otherwise. Then the pointer and
        the live deployment are made to agree: the pointer wins when its model exists (it is
        what was serving), a lost pointer is restored from the store, and a pointer to a
        missing folder falls back to the store's live model or is cleared.
        """
        report = ReconcileReport()
        on_disk = {r.id: r for r in self.list()}
        known = {m.id: m for m in store.list_models(include_removed=True)}
        for model_id, record in on_disk.items():
            if model_id not in known or known[model_id].removed is not None:
                store.record_model(record)
                report.adopted.append(model_id)
        report.missing.extend(m for m, r in known.items() if r.removed is None and m not in on_disk)
        store.mark_models_removed(report.missing)
        current = self.current_id()
        for dep in store.pending_deployments():
            settled = "canary" if dep.model_id == current else "failed"
            note = (
                "switched before a crash; watch before promoting"
                if settled == "canary"
                else "interrupted before the switch"
            )
            store.update_deployment(dep.id, settled, f"{dep.detail or ''} [reconcile: {note}]".strip())
            report.pending.append((dep.id, settled))
        live = store.current_deployment()
        live_id = live.model_id if live else None
        if current is not None and current not in on_disk:
            if live_id in on_disk:
                self.set_current(live_id)
                report.current.append(f"pointer named missing model {current}; restored {live_id} from the store")
            else:
                self.clear_current()
                report.current.append(f"pointer named missing model {current}; cleared it")
        elif current is None and live_id in on_disk:
            self.set_current(live_id)
            report.current.append(f"pointer was missing; restored {live_id} from the store")
        elif current is not None and current != live_id:
            store.record_deployment(
                current, reason="reconcile", state="active", detail=f"the pointer named {current}, the store {live_id}"
            )
            report.current.append(f"store's live model was {live_id}; recorded {current} from the pointer")
        if live is not None and live_id not in on_disk and self.current_id() is None:
            store.update_deployment(live.id, "failed", f"[reconcile: model {live_id} is missing on disk]")
            report.current.append(f"store's live model {live_id} is missing on disk; marked its deployment failed")
        if not report.clean:
            logger.warning("reconciled registry and store: %s", report)
        return report


def read_current_id(state_dir: str | os.PathLike[str]) -> str | None:
    """The serving model named by ``STATE``'s pointer file, read without creating or repairing
    anything (for commands run beside the daemon); ``None`` before the first deploy.

    Raises:
        RegistryError: the pointer cannot be read or has another format.
    """
    pointer = Path(state_dir) / POINTER_FILE
    try:
        body = json.loads(pointer.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise RegistryError(f"unreadable pointer {pointer}: {exc}") from exc
    if body.get("format") != REGISTRY_FORMAT:
        raise RegistryError(f"{pointer} has format {body.get('format')!r}, expected {REGISTRY_FORMAT}")
    return body["id"]
