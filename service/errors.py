"""Exceptions raised by the service.

Every error the service raises on purpose derives from :class:`ServiceError` (itself a
:class:`~lifelong.errors.LifelongError`) and from the builtin it refines. The API turns
them into HTTP statuses (``http_status``) and the CLI into one-line messages, only at the
edge.

::

    LifelongError
    └── ServiceError
        ├── StoreError (RuntimeError)             the state database cannot be used
        │   ├── MigrationError                    a schema newer than this code, a failed migration
        │   └── RecordNotFound (LookupError)      no row with that id: 404
        ├── RegistryError (RuntimeError)          a model folder missing, incomplete or inconsistent
        ├── ModelLoadError (ValueError)           a model that cannot load, warm up or pass validation
        ├── InferenceError (RuntimeError)         a serving model gave NaN/inf outputs: 500
        ├── RequestError (ValueError)             a malformed request: 400
        │   ├── PayloadTooLarge                   a body over the limit: 413
        │   └── UnsupportedMediaType              a body in a format the endpoint does not read: 415
        ├── AddressInUse (OSError)                the API socket or port is served by another process
        ├── ApiError (RuntimeError)               an HTTP error answer the client has no class for
        ├── NoModelError (RuntimeError)           nothing is deployed yet: 503
        ├── WorkerError (RuntimeError)            a worker job failed, timed out or was killed
        ├── WatchError (RuntimeError)             a folder or file to watch is missing or cannot be watched
        ├── SettingsError (ValueError)            a service setting out of range (interval, limit, nice)
        ├── DaemonUnreachable (ConnectionError)   the CLI or client cannot reach the daemon
        ├── DaemonBusy (TimeoutError)             the daemon is stopping, or a command outran its time: 503
        └── DemoError (RuntimeError)              ``lifelong demo`` cannot start or one of its steps failed
"""

from __future__ import annotations

from lifelong.errors import LifelongError

__all__ = [
    "AddressInUse",
    "ApiError",
    "DaemonBusy",
    "DaemonUnreachable",
    "DemoError",
    "InferenceError",
    "MigrationError",
    "ModelLoadError",
    "NoModelError",
    "PayloadTooLarge",
    "RecordNotFound",
    "RegistryError",
    "RequestError",
    "ServiceError",
    "SettingsError",
    "StoreError",
    "UnsupportedMediaType",
    "WatchError",
    "WorkerError",
]


class ServiceError(LifelongError):
    """Base class of every error raised on purpose by the service."""

    http_status = 500


class StoreError(ServiceError, RuntimeError):
    """The state database cannot be opened, read or written."""


class MigrationError(StoreError):
    """The database schema is newer than this code, or a migration failed."""


class RecordNotFound(StoreError, LookupError):
    """No model, deployment, search or job with the id asked for."""

    http_status = 404


class RegistryError(ServiceError, RuntimeError):
    """A model in the registry is missing, incomplete or inconsistent with the store."""


class ModelLoadError(ServiceError, ValueError):
    """A model file that cannot be loaded, warmed up, or validated against the contract."""

    http_status = 422


class RequestError(ServiceError, ValueError):
    """A request the API cannot serve as sent (wrong shape, dtype, NaN, garbage)."""

    http_status = 400


class PayloadTooLarge(RequestError):
    """A request body larger than the configured limit."""

    http_status = 413


class NoModelError(ServiceError, RuntimeError):
    """No model is deployed yet."""

    http_status = 503


class WorkerError(ServiceError, RuntimeError):
    """A worker job failed, ran past its time limit, or was killed."""


class DaemonUnreachable(ServiceError, ConnectionError):
    """The daemon's socket does not exist or does not answer."""


class InferenceError(ServiceError, RuntimeError):
    """A model that passed validation produced NaN or infinite outputs for a request."""


class UnsupportedMediaType(RequestError):
    """A request body in a format the endpoint does not read."""

    http_status = 415


class Forbidden(ServiceError, PermissionError):
    """A request this socket does not take from its clients: an admin command on the API
    socket, or a deploy by path outside the folders the daemon reads models from."""

    http_status = 403


class AddressInUse(ServiceError, OSError):
    """The API's Unix socket or TCP port is already served by another process."""


class ApiError(ServiceError, RuntimeError):
    """An HTTP error from the daemon that no more specific class describes."""

    def __init__(self, message: str, http_status: int = 500) -> None:
        super().__init__(message)
        self.http_status = http_status


class WatchError(ServiceError, RuntimeError):
    """A folder or file the service should watch is missing or cannot be watched."""


class SettingsError(ServiceError, ValueError):
    """A service setting (an interval, a time limit, a nice value) outside its valid range."""


class DaemonBusy(ServiceError, TimeoutError):
    """The daemon is stopping, or a command it was sent did not finish within its time limit."""

    http_status = 503


class DemoError(ServiceError, RuntimeError):
    """``lifelong demo`` cannot start (no supernet and no training allowed) or one of its steps failed."""
