"""Benchmark: the headline's comparisons with every model at its own thread count.

    .venv/bin/python benchmarks/search_threads.py      # about 3 min on 2 cores, after search.py

``benchmarks/search.py`` times every model with two onnxruntime threads. The service now
serves each model with the count its export timed fastest (:mod:`lifelong.device.threads`,
``target.threads = 0``), and a user running a baseline would pick its faster count too. This
re-times the exact files of the last ``search.py`` run (``benchmarks/work/search/``: the
baselines' INT8 and FP32, the largest subnet, the exported front points, each front file
identified by the subnet in its metadata) with 1 and 2 threads, as the export does, in two
passes; each pass is ``--rounds`` rounds over all models in turn, so that the machine's drift
touches every model alike. The first pass chooses each model's count, the second is reported
at that count (and at 2 threads, for the comparison with ``search.json``). The accuracies are
those of ``search.json`` (the same files).

To rebuild: ``benchmarks/search.py`` (its command and state are in ``search.json``), then this.
Writes ``benchmarks/results/search-threads.json``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import RESULTS, markdown_targets, target, write_results  # noqa: E402

from lifelong.deploy.model_format import META_SUBNET  # noqa: E402
from lifelong.device.threads import choose_threads, time_threads  # noqa: E402

logger = logging.getLogger("search_threads")

WORK = Path(__file__).resolve().parent / "work" / "search"
BASELINE_FILES = {"tutorial": "tutorial CNN", "wide": "wider CNN", "mbv2": "MobileNetV2-style", "cnn": "small CNN"}
GAIN_PT, SPEEDUP = 0.5, 1.5


def _subnet_of(path: Path) -> str | None:
    import onnxruntime as ort

    meta = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta()
    return meta.custom_metadata_map.get(META_SUBNET)


def models_of(search: dict[str, Any], work: Path) -> dict[str, tuple[Path, float, bool]]:
    """label -> (file, test top-1, is a front point), for the files of the last search.py run."""
    out: dict[str, tuple[Path, float, bool]] = {}
    for stem, label in BASELINE_FILES.items():
        for prec in ("int8", "fp32"):
            name = f"{label} {prec.upper()}"
            if name in search["baselines"]:
                out[name] = (work / f"{stem}-{prec}.onnx", search["baselines"][name]["top1"], False)
    out["largest subnet W8A8"] = (work / "largest-w8a8.onnx", search["baselines"]["largest subnet W8A8"]["top1"], False)
    top1 = {p["subnet"]: p["top1"] for p in search["front_points"]}
    for path in sorted(work.glob("front-*.onnx")):
        subnet = _subnet_of(path)
        if subnet in top1:
            out[f"front {subnet}"] = (path, top1[subnet], True)
    return out


def compare(rows: dict[str, dict[str, Any]], key: str, batch: int) -> list[dict[str, Any]]:
    """Per INT8 baseline and the largest subnet: the gain at its latency and the speed-up at its top-1."""
    front = [r for r in rows.values() if r["front"]]
    out = []
    for name, r in rows.items():
        if r["front"] or not (name.endswith("INT8") or name.startswith("largest")):
            continue
        ms, acc = r[key][str(batch)], r["top1"]
        under = [f["top1"] for f in front if f[key][str(batch)] <= ms]
        good = [f[key][str(batch)] for f in front if f["top1"] >= acc]
        out.append({
            "baseline": name, "batch": batch, "baseline_ms": ms, "baseline_threads": r.get("chosen", {}).get(str(batch)),
            "gain_at_latency_pt": None if not under else 100 * (max(under) - acc),
            "speedup_at_accuracy": None if not good else ms / min(good),
        })  # fmt: skip
    return out


def interleaved(
    models: dict[str, tuple[Path, float, bool]], batches: tuple[int, ...], rounds: int
) -> dict[str, dict[int, dict[int, float]]]:
    """Each model's ms by batch and thread count: ``rounds`` rounds over all models in turn
    (one block of each count per model per round), the median over the rounds, so that a
    drift of the machine's speed touches every model alike (timing each model's rounds
    together let two models' figures come from different minutes)."""
    runs: dict[str, list[dict[int, dict[int, float]]]] = {name: [] for name in models}
    for r in range(rounds):
        for name, (path, _, _) in models.items():
            runs[name].append(time_threads(str(path), batches, runs=30))
        logger.info("round %d/%d: %d models timed with 1 and 2 threads", r + 1, rounds, len(models))
    return {
        name: {b: {t: float(np.median([x[b][t] for x in got])) for t in got[0][b]} for b in batches}
        for name, got in runs.items()
    }


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--search", type=Path, default=RESULTS / "search.json")
    ap.add_argument("--work", type=Path, default=WORK)
    ap.add_argument("--rounds", type=int, default=5, help="rounds over all models per pass [5]")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import json

    search = json.loads(args.search.read_text())
    models = models_of(search, args.work)
    if not any(front for _, _, front in models.values()):
        raise SystemExit(f"error: no front file of {args.search} in {args.work}: run benchmarks/search.py first")
    batches = (1, 32)
    passes = [interleaved(models, batches, args.rounds) for _ in range(2)]
    rows: dict[str, dict[str, Any]] = {}
    for name, (path, top1, front) in models.items():
        chosen = choose_threads(passes[0][name])
        rows[name] = {
            "file": path.name, "top1": top1, "front": front,
            "chosen": {str(b): t for b, t in chosen.items()},
            "pass1_ms": {str(b): {str(t): ms for t, ms in v.items()} for b, v in passes[0][name].items()},
            "pass2_ms": {str(b): {str(t): ms for t, ms in v.items()} for b, v in passes[1][name].items()},
            "own_ms": {str(b): passes[1][name][b][chosen[b]] for b in batches},
            "two_ms": {str(b): passes[1][name][b][2] for b in batches},
        }  # fmt: skip
    own = compare(rows, "own_ms", 1)
    two = compare(rows, "two_ms", 1)
    targets = []
    for c in own:
        gain, speed = c["gain_at_latency_pt"], c["speedup_at_accuracy"]
        targets.append(target(f"vs {c['baseline']}: top-1 gain at its batch-1 latency, each at its own threads (pt)",
                              None if gain is None else round(gain, 2), f">= +{GAIN_PT}", gain is not None and gain >= GAIN_PT))  # fmt: skip
        targets.append(target(f"vs {c['baseline']}: speed-up at its top-1, batch 1, each at its own threads (x)",
                              None if speed is None else round(speed, 3), f">= {SPEEDUP}", speed is not None and speed >= SPEEDUP))  # fmt: skip
    out = write_results(
        "search-threads",
        {
            "search": str(args.search),
            "search_checkpoint_sha256": search.get("checkpoint_sha256"),
            "search_command": search.get("command"),
            "rebuild": "benchmarks/search.py as recorded in search_command, then this command",
            "models": rows,
            "comparisons_own_threads": own,
            "comparisons_two_threads": two,
            "targets": targets,
        },
        out=args.out,
    )
    for c2, c1 in zip(two, own, strict=True):
        print(f"{c1['baseline']}: at 2 threads gain {c2['gain_at_latency_pt']}, speed-up {c2['speedup_at_accuracy']}; "
              f"each at its own: gain {c1['gain_at_latency_pt']}, speed-up {c1['speedup_at_accuracy']}")  # fmt: skip
    print(markdown_targets(targets))
    print(f"-> {out}")
    return out


if __name__ == "__main__":
    main()
