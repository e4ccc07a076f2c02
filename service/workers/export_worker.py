"""Worker job: export one subnet of the supernet in use (runs in a worker process, with torch).

Started by :class:`service.workers.front_export.FrontExport` as
``python -m service.workers.worker_io [priority] -- service.workers.export_worker REQUEST.json``; it reads the
request (:class:`lifelong.jobs.export_request.ExportRequest`), runs
:func:`lifelong.jobs.export.run_export`, reports each phase and, at the end, the exported
file with its parity figures. The daemon deploys it through its validated swap.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from service.workers.worker_io import report_progress, report_result


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        raise SystemExit("usage: python -m service.workers.worker_io -- service.workers.export_worker REQUEST.json")
    from lifelong.jobs.export import run_export
    from lifelong.jobs.export_request import ExportRequest

    report = run_export(ExportRequest.load(args[0]), report_progress)
    report_result(report.to_dict())
    return 0


if __name__ == "__main__":
    sys.exit(main())
