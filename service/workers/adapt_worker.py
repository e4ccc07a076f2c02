"""Worker job: one adaptation of the supernet to local data (runs in a worker process, with torch).

Started by :class:`service.workers.adaptation.Adaptation` as
``python -m service.workers.worker_io [priority] -- service.workers.adapt_worker REQUEST.json``; it reads the
request (:class:`lifelong.jobs.adapt.AdaptRequest`), runs :func:`lifelong.jobs.adapt.run_adaptation`,
reports progress at most every half second (and at each new phase) and, at the end, the
result's path and headline figures. The daemon reads the full result from the file. A request
in ``"bn"`` mode (the label-free answer) runs :func:`lifelong.jobs.bn_adapt.run_bn_adaptation`
instead.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

from service.workers.worker_io import report_progress, report_result

PROGRESS_EVERY_S = 0.5


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        raise SystemExit("usage: python -m service.workers.worker_io -- service.workers.adapt_worker REQUEST.json")
    from pathlib import Path

    from lifelong.jobs.adapt import AdaptRequest, run_adaptation
    from policies import parse_policy

    request = AdaptRequest.load(args[0])
    policy = parse_policy(request.policy, source=f"{args[0]} [policy]")
    last = {"at": 0.0, "phase": ""}

    def progress(fraction: float, phase: str, message: str) -> None:
        now = time.monotonic()
        if phase != last["phase"] or now - last["at"] >= PROGRESS_EVERY_S:
            last.update(at=now, phase=phase)
            report_progress(fraction, phase, message)

    if request.mode == "bn":
        from lifelong.jobs.bn_adapt import run_bn_adaptation

        candidate = run_bn_adaptation(request, policy, progress)["candidate"]
    else:
        candidate = run_adaptation(request, policy, progress).candidate
    report_result({"result": str(Path(request.out_dir) / "result.json"), "candidate": candidate})
    return 0


if __name__ == "__main__":
    sys.exit(main())
