"""Rewrite the README's benchmark table from ``benchmarks/results/*.json``.

.venv/bin/python benchmarks/report.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- benchmarks:start -->", "<!-- benchmarks:end -->"


def table() -> str:
    """The targets of every results file in one table, then the ``readme_table`` (markdown)
    that a benchmark may add to show its figures (search.json: the front and the baselines).
    The ``space`` column is the search-space version the figures were measured on."""
    lines = ["| benchmark | space | target | measured | goal | met |", "|---|---|---|---|---|---|"]
    extra = []
    for path in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
        doc = json.loads(path.read_text())
        if doc.get("benchmark", "").endswith("-quick"):
            continue
        if doc.get("readme_table"):
            extra.append(f"\n**{doc['benchmark']}** ({path.name}):\n\n{doc['readme_table']}")
        for t in doc.get("targets", []):
            v = t["value"]
            vs = "n/a" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)
            space = f"v{doc.get('space_version', 1)}"  # results before versions were recorded: v1
            lines.append(
                f"| {doc['benchmark']} | {space} | {t['name']} | {vs} | {t['target']} | {'yes' if t['met'] else '**no**'} |"
            )
    return "\n".join(lines + extra)


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    block = f"{START}\n{table()}\n{END}"
    if START in text:
        text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text = text.replace("BENCHMARK_TABLE", block)
    readme.write_text(text)


if __name__ == "__main__":
    main()
