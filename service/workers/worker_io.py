"""The worker's side of the supervisor protocol, and the bootstrap every worker runs under.

A worker is a module run as ``python -m service.workers.worker_io [options] -- MODULE ARGS...`` by
:class:`service.workers.supervisor.WorkerSupervisor`. The bootstrap lowers the process's priority
(``nice``, ``SCHED_IDLE``, a higher OOM score) in the fresh interpreter *before* anything
else runs, so every thread the job starts later (torch's intra-op pool) inherits it; then it
runs ``MODULE`` as ``__main__``. Doing this here rather than in a ``preexec_fn`` keeps
Python code out of the window between ``fork`` and ``exec`` of a multi-threaded daemon,
where it can deadlock on a lock another thread held at fork time.

Protocol: one JSON object per line, written to the pipe whose file descriptor is in
``$LIFELONG_WORKER_FD`` (to stdout when unset, so a worker run by hand shows its reports;
anything else the worker prints goes to its log, never into the channel)::

    {"v": 1, "progress": 0.4, "phase": "adapt", "message": "epoch 2/5"}
    {"v": 1, "result": {"model": "c32.k3w8a8.p_c64..."}}
    {"v": 1, "error": {"type": "TrainingError", "message": "no samples"}}

The last ``result`` wins; a worker that exits 0 must have reported one. An exception that
escapes ``MODULE`` is reported as ``error`` by the bootstrap, which then exits 1.

Both ends of the protocol live here: the writers a worker calls, and the supervisor's
:class:`ReportReader` and :func:`parse_report`. The module imports nothing but the standard
library, so it starts fast and a worker can always report, whatever else fails to import.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import runpy
import selectors
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence

__all__ = [
    "PROTOCOL_VERSION",
    "REPORT_FD_ENV",
    "ReportReader",
    "lower_priority",
    "main",
    "parse_report",
    "report_error",
    "report_progress",
    "report_result",
]

PROTOCOL_VERSION = 1
REPORT_FD_ENV = "LIFELONG_WORKER_FD"
MAX_REPORT_BYTES = 1 << 20  # a longer line is garbage, not a report

logger = logging.getLogger("service.workers.worker_io")  # the same name when run as __main__
_write_lock = threading.Lock()


def _emit(message: dict[str, object]) -> None:
    line = (json.dumps({"v": PROTOCOL_VERSION, **message}, allow_nan=False) + "\n").encode("utf-8")
    fd_text = os.environ.get(REPORT_FD_ENV, "")
    with _write_lock:
        if not fd_text:
            sys.stdout.write(line.decode("utf-8"))
            sys.stdout.flush()
            return
        view = memoryview(line)
        while view:  # one write when under PIPE_BUF (atomic), a loop for long results
            view = view[os.write(int(fd_text), view) :]


def report_progress(fraction: float, phase: str = "", message: str = "") -> None:
    """Tell the supervisor how far the job is.

    Args:
        fraction: Done so far, from 0 to 1.
        phase: A short name of the current step (``"bn-recalibration"``).
        message: One human-readable line (``"epoch 2/5, loss 0.41"``).
    """
    if not _valid_fraction(fraction):
        raise ValueError(f"progress fraction {fraction!r}: expected a number from 0 to 1")
    _emit({"progress": float(fraction), "phase": str(phase), "message": str(message)})


def report_result(result: Mapping[str, object]) -> None:
    """Hand the job's result (JSON-serialisable) to the supervisor; call it once, at the end."""
    if not isinstance(result, Mapping):
        raise ValueError(f"result {result!r}: expected a mapping (a JSON object)")
    _emit({"result": dict(result)})


def report_error(error: BaseException | str) -> None:
    """Report why the job failed, before exiting non-zero (the bootstrap does it for exceptions)."""
    if isinstance(error, BaseException):
        _emit({"error": {"type": type(error).__name__, "message": str(error)}})
    else:
        _emit({"error": {"type": "Error", "message": str(error)}})


def _valid_fraction(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and 0 <= value <= 1


def parse_report(raw: bytes) -> dict[str, object]:
    """Decode one report line into ``progress`` (fraction, phase, message), ``result``, ``error``.

    Raises:
        ValueError: Not JSON, another protocol version, or a field of the wrong type; the
            message says which.
    """
    try:
        msg = json.loads(raw)
    except ValueError:
        raise ValueError("not JSON") from None
    if not isinstance(msg, dict):
        raise ValueError(f"a JSON {type(msg).__name__}, expected an object")
    if msg.get("v", PROTOCOL_VERSION) != PROTOCOL_VERSION:
        raise ValueError(f"protocol version {msg.get('v')!r}, expected {PROTOCOL_VERSION}")
    out: dict[str, object] = {}
    if "progress" in msg:
        if not _valid_fraction(msg["progress"]):
            raise ValueError(f"progress {msg['progress']!r}, expected a number from 0 to 1")
        out["progress"] = (float(msg["progress"]), str(msg.get("phase", "")), str(msg.get("message", "")))
    if "result" in msg:
        if not isinstance(msg["result"], dict):
            raise ValueError(f"result {msg['result']!r}, expected an object")
        out["result"] = msg["result"]
    if "error" in msg:
        err = msg["error"]
        out["error"] = f"{err.get('type', 'Error')}: {err.get('message', '')}" if isinstance(err, dict) else str(err)
    return out


class ReportReader:
    """The supervisor's end: reads report lines from the pipe, never blocking for long.

    Args:
        fd: The read end of the pipe; closed by :meth:`close`.
        on_line: Called with each non-empty line, without its newline.
    """

    def __init__(self, fd: int, on_line: Callable[[bytes], None]) -> None:
        self.fd = fd
        self.on_line = on_line
        self.eof = False
        self._buf = b""
        self._sel = selectors.DefaultSelector()
        self._sel.register(fd, selectors.EVENT_READ)

    def poll(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for data and hand over the complete lines."""
        if self.eof:
            time.sleep(timeout)
            return
        if not self._sel.select(timeout):
            return
        data = os.read(self.fd, 65536)
        if not data:
            self.eof = True
            data = b"\n"  # a last line without its newline still counts
        *lines, self._buf = (self._buf + data).split(b"\n")
        if len(self._buf) > MAX_REPORT_BYTES:
            logger.warning("dropping a worker report longer than %d bytes", MAX_REPORT_BYTES)
            self._buf = b""
        for line in lines:
            if line.strip():
                self.on_line(line)

    def drain(self, timeout: float) -> None:
        """Read until every writer has closed the pipe, or ``timeout`` seconds."""
        end = time.monotonic() + timeout
        while not self.eof and time.monotonic() < end:
            self.poll(max(0.0, end - time.monotonic()))

    def close(self) -> None:
        """Close the pipe."""
        self._sel.close()
        try:
            os.close(self.fd)
        except OSError:
            pass


def lower_priority(nice: int = 10, sched_idle: bool = True, oom_score_adj: int = 0) -> list[str]:
    """Make this process yield to everything else on the machine; each step may be refused.

    Raising the nice value, entering ``SCHED_IDLE`` and raising ``oom_score_adj`` need no
    privilege on Linux, but a container or seccomp profile may still refuse them (``EPERM``):
    the job then runs at normal priority rather than not at all.

    Returns:
        One line per step that was refused, for the log.
    """
    refused = []
    if nice:
        try:
            os.nice(nice)
        except OSError as exc:
            refused.append(f"nice +{nice}: {exc}")
    if sched_idle and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except OSError as exc:
            refused.append(f"SCHED_IDLE: {exc}")
    if oom_score_adj:
        try:
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write(str(oom_score_adj))
        except OSError as exc:
            refused.append(f"oom_score_adj {oom_score_adj}: {exc}")
    return refused


def _guard_against_orphaning(interval_s: float) -> None:
    """End this process group if the supervisor dies (outside systemd nothing else would)."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval_s)
            if os.getppid() != parent:
                logger.error("supervisor (pid %d) is gone; ending this worker", parent)
                os.killpg(os.getpgrp(), signal.SIGTERM)
                time.sleep(10)
                os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=watch, name="orphan-guard", daemon=True).start()


def _terminate(signum: int, frame: object) -> None:
    # SIGTERM as an exception: the job's finally blocks (temp files, checkpoints) still run.
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Bootstrap: ``[OPTIONS] -- MODULE [ARGS...]``; lower priority, then run ``MODULE`` as ``__main__``.

    ``ARGS`` are passed on verbatim (an explicit ``--`` keeps them apart from our options).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m service.workers.worker_io",
        usage="%(prog)s [OPTIONS] -- MODULE [ARGS...]",
        description=__doc__.split("\n")[0],
    )
    parser.add_argument("--nice", type=int, default=0, help="add this to the nice value")
    parser.add_argument("--sched-idle", action="store_true", help="run under SCHED_IDLE")
    parser.add_argument("--oom-score-adj", type=int, default=0, help="raise the OOM killer's preference")
    parser.add_argument("--orphan-check", type=float, default=0.0, help="seconds between supervisor checks")
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        parser.error("expected -- MODULE [ARGS...]")
    split = argv.index("--")
    ns = parser.parse_args(argv[:split])
    module, args = argv[split + 1], argv[split + 2 :]

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    fd_text = os.environ.get(REPORT_FD_ENV, "")
    if fd_text:
        os.set_inheritable(int(fd_text), False)  # programs the job execs do not get the channel
    for line in lower_priority(ns.nice, ns.sched_idle, ns.oom_score_adj):
        logger.warning("priority not lowered: %s", line)
    if ns.orphan_check > 0:
        _guard_against_orphaning(ns.orphan_check)
    signal.signal(signal.SIGTERM, _terminate)

    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:
        traceback.print_exc()
        try:
            report_error(exc)
        except Exception:
            logger.exception("could not report the error")
        return 1
    return 0


if __name__ == "__main__":
    # Run the imported module's main, so a worker that imports service.workers.worker_io shares it.
    from service.workers.worker_io import main as _main

    sys.exit(_main())
