"""The accuracy predictor's quality: Kendall tau and RMSE on held-out quantized subnets.

Builds the predictor from the evaluated subnets that ``lifelong predictor collect`` wrote
(the collection itself is the expensive part: its cost is reported from the file), and
writes ``benchmarks/results/predictor.json`` with the held-out quality of the predictor
trained on full-precision subnets and transferred to quantized ones (APQ), of one trained
on the quantized samples alone, and of the untransferred one; the label-noise ceiling; and
the transfer-vs-scratch comparison at small sample counts.

    .venv/bin/python benchmarks/predictor.py --state-dir /work/state
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

from common import target, write_results

from lifelong.predictor.build import BuildSettings, build_predictor
from lifelong.predictor.samples import PredictorData
from lifelong.space.config import SPACE_VERSION
from service.state.paths import default_predictor_data, resolve_state_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None, help="[STATE/predictor/samples.json]")
    ap.add_argument("--holdout", type=int, default=200)
    ap.add_argument("--state-dir", type=Path, default=None)
    args = ap.parse_args()
    path = args.data or default_predictor_data(resolve_state_dir(args.state_dir))
    data = PredictorData.load(path)
    _, report = build_predictor(data, BuildSettings(holdout=args.holdout))
    r = report.to_dict()
    cost = report.data_cost
    targets = [
        target(
            f"Kendall tau on {report.holdout} held-out quantized subnets (FP-trained, transferred)",
            report.transfer.kendall_tau,
            f">= {report.target_tau}",
            report.meets_target,
        ),
        target(
            f"Kendall tau on {report.holdout} held-out quantized subnets of space v{SPACE_VERSION} (issue 13's bar)",
            report.transfer.kendall_tau,
            ">= 0.8",
            report.transfer.kendall_tau >= 0.8,
        ),
        target(
            "transfer at least as good as quantized samples alone (tau)",
            report.transfer.kendall_tau - report.scratch.kendall_tau,
            ">= 0",
            report.transfer.kendall_tau >= report.scratch.kendall_tau,
        ),
    ]
    write_results(
        "predictor",
        {
            "samples_file": str(path),
            "rebuild": "lifelong train (full preset) then lifelong predictor collect --state-dir STATE; see README 'Benchmarks'",
            "provenance": asdict(data.provenance),
            "report": r,
            "data_cost": cost,
            "summary": {
                "tau_transfer": report.transfer.kendall_tau,
                "rmse_transfer_pt": report.transfer.rmse_pt,
                "tau_scratch": report.scratch.kendall_tau,
                "tau_ceiling_from_label_noise": report.tau_ceiling,
                "holdout_top1_std_pt": report.holdout_top1_std_pt,
                "label_noise_pt": report.label_noise_pt,
                **_corner_summary(report),
            },
            "targets": targets,
        },
    )
    print(
        f"tau {report.transfer.kendall_tau:.3f} (scratch {report.scratch.kendall_tau:.3f}, "
        f"ceiling {report.tau_ceiling}), RMSE {report.transfer.rmse_pt:.2f} pt"
    )
    if report.corner is not None:
        c = report.corner
        print(
            f"corners ({report.corner_holdout} held out): tau {c.transfer.kendall_tau:.3f}, RMSE {c.transfer.rmse_pt:.2f} pt, bias {c.bias_pt:+.2f} pt"
        )


def _corner_summary(report: object) -> dict[str, object]:
    """The held-out corner figures (the accurate end of the space), when any were held out."""
    c = report.corner
    if c is None:
        return {"corner_holdout": 0}
    return {
        "corner_holdout": report.corner_holdout,
        "corner_tau_transfer": c.transfer.kendall_tau,
        "corner_rmse_transfer_pt": c.transfer.rmse_pt,
        "corner_bias_pt": c.bias_pt,
    }


if __name__ == "__main__":
    main()
