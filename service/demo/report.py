"""What the demo shows and keeps: its timeline, the live status line, and the final report.

Pure functions of plain data (the daemon's ``/v1/status`` document, the demo's own notes and
tallies), so that they are tested without a daemon. Formatting reads every status field with
``.get``: the demo must keep going, and say what it cannot see, whatever the daemon reports
(before the adaptation half exists, ``/v1/status`` has no ``adaptation`` section).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "REPORT_FORMAT",
    "Step",
    "Timeline",
    "build_report",
    "format_report",
    "format_summary",
    "live_line",
    "status_facts",
    "write_report",
]

REPORT_FORMAT = 1
"""Version of ``report.json``."""

PHASES = (
    ("clean", "before the shift"),
    ("shifted", "after the shift, before adaptation"),
    ("label-free", "after the label-free answer (BN statistics of the new data)"),
    ("adapted", "after adaptation"),
    ("preference", "after the preference change"),
    ("re-exported", "after the budget was relaxed again (a model exported from the supernet in use)"),
)
"""The demo's phases, in order, with the words the report uses for them."""


@dataclass(frozen=True)
class Step:
    """One step of the demo and how long it took.

    Attributes:
        name: What the step does, in a few words.
        t: Seconds since the demo started, when the step began.
        seconds: How long it took.
        outcome: ``done``, ``reused`` (cached), ``failed``, ``timed out`` or ``interrupted``.
        detail: One line: what was found, made or waited for.
    """

    name: str
    t: float
    seconds: float
    outcome: str
    detail: str = ""


@dataclass
class Timeline:
    """Timed entries from the demo itself and from the daemon's status events.

    Args:
        started: Wall-clock time (``time.time()``) the demo started; entries keep seconds since.
    """

    started: float
    entries: list[dict[str, Any]] = field(default_factory=list)
    _seen: set[tuple[float, str, str]] = field(default_factory=set)

    def note(self, kind: str, message: str, *, at: float | None = None, source: str = "demo") -> dict[str, Any]:
        """Add an entry (``at``: wall-clock time, default now) and return it."""
        at = time.time() if at is None else at
        entry = {"t": round(at - self.started, 2), "at": at, "source": source, "kind": kind, "message": message}
        self.entries.append(entry)
        self.entries.sort(key=lambda e: e["at"])
        return entry

    def merge_events(self, events: Iterable[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
        """Add the daemon's status events not seen before (those from before the demo are skipped).

        Returns:
            The entries added, oldest first.
        """
        added = []
        for ev in sorted(events or [], key=lambda e: float(e.get("at") or 0.0)):
            at, kind, message = float(ev.get("at") or 0.0), str(ev.get("kind", "?")), str(ev.get("message", ""))
            key = (at, kind, message)
            if key in self._seen or at < self.started:
                continue
            self._seen.add(key)
            added.append(self.note(kind, message, at=at, source="daemon"))
        return added

    def first(self, kind: str, *, after: float = 0.0, source: str | None = None) -> dict[str, Any] | None:
        """The first entry of ``kind`` at or after wall-clock ``after``."""
        for e in self.entries:
            if e["kind"] == kind and e["at"] >= after and (source is None or e["source"] == source):
                return e
        return None


def _pct(value: float | None) -> str:
    return "?" if value is None else f"{100 * value:.1f}%"


def status_facts(status: Mapping[str, Any] | None) -> dict[str, Any]:
    """The few facts the live line and the waits need, from a ``/v1/status`` document.

    Returns:
        ``model`` (serving id or None), ``p50_ms``, ``drifting`` (kinds), ``reference``
        (``(samples, target)`` while collected, else None), ``adaptation`` (the section or None:
        the daemon has no adaptation), ``canary`` (the model under watch or None), ``needs``.
    """
    status = status or {}
    live = status.get("live") or {}
    p50 = (live.get("latency") or {}).get("p50_ms")
    drift = status.get("drift") or {}
    ref = ((drift.get("watching") or {}).get("reference")) or {}
    samples, target = ref.get("samples"), ref.get("target")
    collecting = isinstance(samples, int) and isinstance(target, int) and samples < target
    canary = status.get("canary") or {}
    return {
        "model": live.get("model") or ((status.get("store") or {}).get("deployment") or {}).get("model_id"),
        "p50_ms": p50,
        "drifting": list(drift.get("drifting") or []),
        "reference": (samples, target) if collecting else None,
        "reference_done": isinstance(samples, int) and isinstance(target, int) and samples >= target,
        "adaptation": status.get("adaptation") if "adaptation" in status else None,
        "has_adaptation": "adaptation" in status,
        "canary": canary.get("model"),
        "needs": list(drift.get("needs") or []),
        "export": status.get("export"),
    }


def _adapt_text(section: Mapping[str, Any] | None, supported: bool) -> str:
    if not supported:
        return "adapt: n/a"
    section = section or {}
    if section.get("state") == "running":
        phase, progress = section.get("phase") or "starting", section.get("progress")
        return f"adapt: {phase}" + ("" if progress is None else f" {100 * float(progress):.0f}%")
    if section.get("state") == "pending":
        return "adapt: pending (waiting for labels)"
    last = section.get("last") or {}
    return f"adapt: idle (last {last['outcome']})" if last.get("outcome") else "adapt: idle"


def live_line(
    t: float,
    phase: str,
    sent: int,
    window_accuracy: float | None,
    status: Mapping[str, Any] | None,
    names: Mapping[str, str] | None = None,
) -> str:
    """One line of what is happening now, printed about every second while data streams.

    Args:
        t: Seconds since the demo started.
        phase: The demo's phase (``clean``, ``shifted``, ...).
        sent: Samples sent so far.
        window_accuracy: Accuracy on the last window of samples.
        status: The daemon's latest status (None: it did not answer).
        names: Short names of known model ids (``initial``, ``fast``...).
    """
    facts = status_facts(status)
    model = facts["model"]
    label = "-" if model is None else (names or {}).get(model, model[:8])
    parts = [
        f"{t:7.1f} s",
        f"{phase:<10}",
        f"{sent:>6} sent",
        f"acc {_pct(window_accuracy):>6}",
        f"model {label}" + ("" if facts["p50_ms"] is None else f" {facts['p50_ms']:.2f} ms"),
    ]
    if status is None:
        parts.append("daemon: no answer")
    elif facts["drifting"]:
        parts.append("DRIFT: " + ",".join(facts["drifting"]))
    elif facts["reference"] is not None:
        parts.append(f"drift: reference {facts['reference'][0]}/{facts['reference'][1]}")
    else:
        parts.append("no drift")
    if status is not None:
        parts.append(_adapt_text(facts["adaptation"], facts["has_adaptation"]))
    if facts["canary"]:
        parts.append("canary")
    return " | ".join(parts)


def build_report(
    *,
    timeline: Timeline,
    steps: Iterable[Step],
    tallies: Mapping[str, Mapping[str, Any]],
    models: Mapping[str, Mapping[str, Any]],
    settings: Mapping[str, Any],
    outcome: str,
    notes: Iterable[str] = (),
    milestones: Mapping[str, Any] | None = None,
    adaptation: Mapping[str, Any] | None = None,
    deployments: Iterable[Mapping[str, Any]] = (),
    png: str | None = None,
    finished: float | None = None,
) -> dict[str, Any]:
    """The report as JSON-ready data (``report.json``); :func:`format_report` writes it as Markdown.

    Args:
        timeline: Every timed entry.
        steps: The demo's steps with their durations.
        tallies: Phase -> :meth:`~service.demo.stream.PhaseTally.to_dict`.
        models: Model id -> what the demo knows of it (name, subnet, test accuracy, latency).
        settings: The demo's settings.
        outcome: ``completed``, ``interrupted`` or ``failed: ...``.
        notes: Honest remarks (what did not happen, and why).
        milestones: Times and delays of the shift, the detection, the swaps.
        adaptation: The daemon's last adaptation (``status["adaptation"]["last"]``), if any.
        deployments: The daemon's deployment history, newest first.
        png: The front's plot.
        finished: Wall-clock time the demo ended (default now).
    """
    finished = time.time() if finished is None else finished
    accuracy = {}
    for phase, words in PHASES:
        tally = tallies.get(phase)
        accuracy[phase] = {"what": words, **(dict(tally) if tally else {"samples": 0, "accuracy": None})}
    return {
        "format": REPORT_FORMAT,
        "outcome": outcome,
        "started_at": timeline.started,
        "finished_at": finished,
        "seconds": round(finished - timeline.started, 1),
        "settings": dict(settings),
        "steps": [asdict(s) for s in steps],
        "accuracy": accuracy,
        "milestones": dict(milestones or {}),
        "adaptation": None if adaptation is None else dict(adaptation),
        "models": {k: dict(v) for k, v in models.items()},
        "deployments": [dict(d) for d in deployments],
        "timeline": list(timeline.entries),
        "notes": list(notes),
        "front_png": png,
    }


def _clock(at: float | None) -> str:
    return "-" if at is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def format_report(doc: Mapping[str, Any]) -> str:
    """``report.json`` as the Markdown a person reads (``report.md``)."""
    settings = doc.get("settings") or {}
    lines = [
        "# lifelong demo report",
        "",
        f"{_clock(doc.get('started_at'))}, {doc.get('seconds', '?')} s in all, outcome: **{doc.get('outcome')}**. "
        f"State: `{settings.get('state_dir', '?')}`; shift: {settings.get('shift', '?')}.",
        "",
        "## Accuracy",
        "",
        "| phase | samples | accuracy | served by |",
        "|---|---|---|---|",
    ]
    models = doc.get("models") or {}
    for phase, words in PHASES:
        row = (doc.get("accuracy") or {}).get(phase) or {}
        served = ", ".join(
            f"{(models.get(m) or {}).get('name', m[:8])} ({_pct(v.get('accuracy'))}, {v.get('samples')})"
            for m, v in (row.get("by_model") or {}).items()
        )
        lines.append(f"| {words} | {row.get('samples', 0)} | {_pct(row.get('accuracy'))} | {served or '-'} |")
    ms = doc.get("milestones") or {}
    if ms:
        lines += ["", "## Milestones", ""]
        lines += [f"- {_cell(k.replace('_', ' '))}: {_cell(v)}" for k, v in ms.items()]
    adapt = doc.get("adaptation")
    if adapt:
        lines += ["", "## Adaptation", "", "```", json.dumps(adapt, indent=2, default=str), "```"]
    notes = doc.get("notes") or []
    if notes:
        lines += ["", "## Notes", ""] + [f"- {_cell(n)}" for n in notes]
    lines += ["", "## Steps", "", "| step | outcome | seconds | detail |", "|---|---|---|---|"]
    for s in doc.get("steps") or []:
        lines.append(f"| {_cell(s['name'])} | {s['outcome']} | {s['seconds']:.1f} | {_cell(s.get('detail', ''))} |")
    lines += [
        "",
        "## Models",
        "",
        "| id | name | subnet | test top-1 | front latency (ms, batch 1) |",
        "|---|---|---|---|---|",
    ]
    for mid, m in models.items():
        lat = m.get("latency_ms")
        if isinstance(lat, Mapping):  # by batch size, as an adaptation reports it
            lat = lat.get("1", lat.get(1))
        top1 = _pct(m.get("test_accuracy")) if m.get("test_accuracy") is not None else "-"
        if m.get("local_accuracy") is not None:
            top1 += f" ({_pct(m['local_accuracy'])} on held-out local samples)"
        lines.append(
            f"| `{mid}` | {_cell(m.get('name', '?'))} | `{m.get('subnet', '?')}` | {top1} | "
            f"{'?' if not isinstance(lat, int | float) else f'{lat:.3f}'} |"
        )
    deps = doc.get("deployments") or []
    if deps:
        lines += ["", "## Deployments (the daemon's history, newest first)", "", "| at | model | state | reason |"]
        lines.append("|---|---|---|---|")
        for d in deps:
            lines.append(
                f"| {_clock(d.get('at'))} | `{d.get('model_id')}` | {d.get('state')} | {_cell(d.get('reason'))} |"
            )
    lines += ["", "## Timeline", "", "| t (s) | from | kind | what |", "|---|---|---|---|"]
    for e in doc.get("timeline") or []:
        lines.append(f"| {e['t']:.1f} | {e['source']} | {e['kind']} | {_cell(e['message'])} |")
    png = doc.get("front_png")
    if png:
        lines += ["", "## The front", "", f"![front]({Path(png).name})"]
    return "\n".join(lines) + "\n"


def format_summary(doc: Mapping[str, Any]) -> list[str]:
    """The few lines the demo ends with: accuracy by phase, the detection, the swaps, the notes."""
    lines = [f"summary ({doc.get('seconds', 0):.0f} s, {doc.get('outcome')}):"]
    for row in (doc.get("accuracy") or {}).values():
        acc = row.get("accuracy")
        lines.append(
            f"  accuracy {row.get('what')}: "
            + ("-" if acc is None else f"{100 * acc:.1f}% on {row.get('samples')} samples")
        )
    ms = doc.get("milestones") or {}
    if "detection_delay_s" in ms:
        lines.append(f"  drift detected {ms['detection_delay_s']} s after the shift")
    if "adaptation_outcome" in ms:
        first = "label-free answer" if ms.get("adaptation_mode") == "bn" else "adaptation"
        lines.append(
            f"  {first}: {ms['adaptation_outcome']}, {ms.get('adaptation_after_detection_s')} s after the detection"
        )
    if "labelled_outcome" in ms:
        lines.append(
            f"  labelled answer: {ms['labelled_outcome']}, {ms.get('labelled_after_detection_s')} s after the detection"
        )
    if "preference_swap_s" in ms:
        lines.append(f"  preference change answered by a swap in {ms['preference_swap_s']} s")
    if "export_swap_s" in ms:
        lines.append(
            f"  budget relaxed after the adaptation: exported from the supernet in use and swapped in {ms['export_swap_s']} s"
        )
    lines += [f"  note: {n}" for n in doc.get("notes") or []]
    return lines


def write_report(doc: Mapping[str, Any], folder: Path) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.md`` into ``folder``; returns both paths."""
    folder.mkdir(parents=True, exist_ok=True)
    js, md = folder / "report.json", folder / "report.md"
    tmp = js.with_name(".report.json.tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    tmp.replace(js)
    tmp = md.with_name(".report.md.tmp")
    tmp.write_text(format_report(doc))
    tmp.replace(md)
    return js, md
