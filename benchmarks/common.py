"""Shared helpers of the benchmarks: the machine description and the results file."""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    from lifelong.device.profile import cpu_model

    cpu = cpu_model()
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return info


def target(name: str, value: float | None, goal: str, met: bool) -> dict[str, Any]:
    return {"name": name, "value": value, "target": goal, "met": bool(met)}


def write_results(name: str, payload: dict[str, Any], out: Path | None = None) -> Path:
    """Write ``results/NAME.json`` (or ``out``) with the command, the time and the machine."""
    out = out or RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    from lifelong.space.config import SPACE_VERSION

    doc = {
        "benchmark": name,
        "space_version": SPACE_VERSION,  # results of another version describe another search space
        "command": " ".join(shlex.quote(a) for a in ["python", *sys.argv]),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        **payload,
    }
    out.write_text(json.dumps(doc, indent=2) + "\n")
    return out


def markdown_targets(targets: list[dict[str, Any]]) -> str:
    lines = ["| target | value | goal | met |", "|---|---|---|---|"]
    for t in targets:
        v = t["value"]
        vs = f"{v:.4g}" if isinstance(v, float) else str(v)
        lines.append(f"| {t['name']} | {vs} | {t['target']} | {'yes' if t['met'] else 'no'} |")
    return "\n".join(lines)
