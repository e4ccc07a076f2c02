"""The status and history documents, and their text rendering for ``lifelong status``/``history``.

Data access and formatting are kept apart: :func:`history` reads the store (in the daemon);
:func:`format_status` and :func:`format_history` turn the JSON documents the API returns
into text (in the CLI), so ``--json`` and the text show the same facts. Formatting reads
every field with ``.get`` so that a CLI talking to an older or newer daemon still prints
what it can.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from lifelong.errors import SpaceError
from lifelong.space.config import SubnetConfig
from service.state.store import Store

__all__ = ["format_history", "format_status", "history", "precision_summary"]


def precision_summary(subnet: str | None) -> dict[str, Any] | None:
    """Per-layer precisions read from a subnet string (:mod:`lifelong.space.config`, no torch).

    Returns:
        ``{"subnet", "layers", "counts": {"w8a8": 12, ...}, "stages": [{"stage", "precisions"}]}``
        (stages: ``c<width>`` each, then ``head``: the hidden and output layers), or None when
        ``subnet`` is not a lifelong subnet string (a model exported by other tools).
    """
    if not subnet:
        return None
    try:
        cfg = SubnetConfig.parse(subnet)
    except SpaceError:
        return None
    layers = [str(p) for p in cfg.layer_precisions()]
    stages = [{"stage": f"c{st.width}", "precisions": [str(c.prec) for c in st.convs]} for st in cfg.stages]
    head = [cfg.head.hidden_prec] if cfg.head.hidden else []
    stages.append({"stage": "head", "precisions": [str(p) for p in [*head, cfg.head.out_prec]]})
    return {"subnet": subnet, "layers": len(layers), "counts": dict(Counter(layers).most_common()), "stages": stages}


def history(store: Store, current: str | None, serving: str | None, limit: int = 20) -> dict[str, Any]:
    """Deployments, newest first, each with its model's subnet and measured values."""
    rows = []
    models: dict[str, Any] = {}
    for dep in store.deployment_history(limit):
        if dep.model_id not in models:
            models[dep.model_id] = store.get_model(dep.model_id)
        m = models[dep.model_id]
        row = asdict(dep)
        row["model"] = None
        if m is not None:
            row["model"] = {
                "subnet": m.subnet,
                "source": m.source,
                "accuracy": m.accuracy,
                "latency_p50_ms": m.latency_p50_ms,
                "bytes": m.bytes,
                "removed": m.removed,
            }
        rows.append(row)
    return {"current": current, "serving": serving, "rollback_target": store.previous_model(), "deployments": rows}


def _ago(at: float | None, now: float) -> str:
    if at is None:
        return "never"
    s = max(0.0, now - at)
    if s < 90:
        return f"{s:.0f} s ago"
    if s < 5400:
        return f"{s / 60:.0f} min ago"
    if s < 172800:
        return f"{s / 3600:.1f} h ago"
    return f"{s / 86400:.1f} days ago"


def _clock(at: float | None) -> str:
    return "-" if at is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def _ms(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f} ms"


def _precision(precision_map: Mapping[str, Any] | None, summary: Mapping[str, Any] | None, subnet: str) -> str:
    """``w8a8 x6, w32a32 x2 (8 layers: c32 w8a8 x2 | ... | head w8a8 w32a32)``."""
    if summary and summary.get("counts"):
        counts = ", ".join(f"{kind} x{n}" for kind, n in summary["counts"].items())
        stages = []
        for st in summary.get("stages") or []:
            precs = [str(p) for p in st.get("precisions") or []]
            same = len(set(precs)) == 1
            stages.append(
                f"{st.get('stage')} " + (f"{precs[0]} x{len(precs)}" if same and len(precs) > 1 else " ".join(precs))
            )
        return f"{counts} ({summary.get('layers')} layers: {' | '.join(stages)})"
    if precision_map:
        counts = Counter(str(v) for v in precision_map.values())
        return ", ".join(f"{kind} x{n}" for kind, n in counts.most_common()) + f" ({len(precision_map)} layers)"
    return f"unknown (subnet {subnet!r} is not a lifelong subnet string)" if subnet != "?" else "unknown"


def _pct(value: float | None) -> str:
    return "?" if value is None else f"{100 * value:.1f}%"


def _canary(doc: Mapping[str, Any]) -> str:
    """``120/200 requests; latency p95 1.10 ms vs 1.00 ms baseline (batch 1); accuracy ...; 0 errors``."""
    d = doc.get("decision") or {}
    parts = [
        f"{d.get('requests', 0)}/{d.get('window', '?')} requests"
        + (f", {d['labelled']} labels" if d.get("labelled") else "")
    ]
    for c in d.get("checks") or []:
        figure, state = c.get("figure"), c.get("state")
        if state in ("waiting", "skipped") or c.get("value") is None:
            parts.append(str(c.get("detail", "")))
        elif figure == "latency":
            parts.append(
                f"latency p95 {_ms(c.get('value'))} vs {_ms(c.get('reference'))} baseline "
                f"(batch {c.get('batch')}, rollback above {_ms(c.get('threshold'))})"
            )
        elif figure == "accuracy":
            parts.append(
                f"accuracy {_pct(c.get('value'))} on {c.get('n')} labels vs {_pct(c.get('reference'))} baseline "
                f"(rollback below {_pct(c.get('threshold'))} if significant)"
            )
        else:
            parts.append(str(c.get("detail", "")))
    verdict = {"promote": " -> promote", "rollback": " -> roll back"}.get(str(d.get("action")), "")
    return "; ".join(parts) + verdict


def _live(live: Mapping[str, Any]) -> str:
    """``accuracy 91.2% on 340 feedback labels; latency p50 0.21 ms p95 0.40 ms (batch 1, 1234 requests); 0 errors``."""
    fb = live.get("feedback") or {}
    lat = live.get("latency") or {}
    acc = (
        f"accuracy {_pct(fb.get('accuracy'))} on its last {fb.get('labelled')} feedback labels"
        if fb.get("labelled")
        else "accuracy unknown (no feedback labels yet)"
    )
    if fb.get("labelled") and fb.get("newest_at"):
        acc += f" (newest {_ago(fb['newest_at'], time.time())})"
    drift = fb.get("drift")
    if drift:  # figures from before the drift episode describe data the model no longer sees
        acc += (
            f"; since the drift began {_ago(drift['since'], time.time())}: "
            + (f"{_pct(drift['accuracy'])} on {drift['labelled']}" if drift.get("labelled") else "no label yet")
            + f", the other {drift['stale']} stale"
        )
    latency = (
        f"latency p50 {_ms(lat.get('p50_ms'))} p95 {_ms(lat.get('p95_ms'))} (batch {lat.get('batch')}, "
        f"{lat.get('n')} requests)"
        if lat.get("n")
        else "no requests yet"
    )
    errors = live.get("errors", 0)
    return f"{acc}; {latency}; {errors} inference errors since it serves"


def _num(value: Any) -> str:
    return "?" if not isinstance(value, int | float) else f"{value:.3g}"


def _profile_line(p: Mapping[str, Any], now: float, serving_threads: int | None = None) -> str:
    """``profile:  taken 3 h ago, fits this device; predicts 0.118 ms for the serving model at
    batch 1, the probe measures 0.150 ms p50 (-21%)``."""
    if not p.get("present"):
        why = f" ({p['error']})" if p.get("error") else ""
        return f"profile:  none at {p.get('path')}{why}; `lifelong profile` measures this device"
    stale = p.get("stale") or []
    fits = "fits this device" if not stale else "TAKEN ELSEWHERE or with other settings (" + "; ".join(stale) + "): run `lifelong profile`"  # fmt: skip
    line = f"profile:  taken {_ago(p.get('created'), now)}, {fits}"
    if p.get("predicted_ms") is not None:
        line += f"; predicts {_ms(p['predicted_ms'])} for the serving model at batch {p.get('batch')}"
        if p.get("live_p50_ms") is not None:
            line += f", the probe measures {_ms(p['live_p50_ms'])} p50 ({100 * p['prediction_error']:+.0f}%)"
            if serving_threads and p.get("threads") and serving_threads != p["threads"]:
                line += f"; the profile timed {p['threads']} threads, the model serves on {serving_threads}"
    return line


def _decision(kind: str, d: Mapping[str, Any]) -> str:
    """``p 1.2e-09 <= 0.0025: DRIFT (window 50 vs 50)`` for one kind's latest decision."""
    stat, thr, p = d.get("statistic"), d.get("threshold"), d.get("p_value")
    verdict = "DRIFT" if d.get("drifted") else "ok"
    if kind == "preference":
        sections = ", ".join((d.get("detail") or {}).get("sections") or [])
        answer = d.get("answer") or {}
        text = f"{_num(stat)} keys changed ({sections or 'name only'})"
        return text + (f": {answer.get('action')}: {answer.get('reason')}" if answer else "")
    if p is not None:
        text = f"p {_num(p)} {'<=' if d.get('drifted') else '>'} {_num(thr)}"
    elif kind == "accuracy":
        text = f"accuracy drop {_num(stat)} {'>=' if d.get('drifted') else '<'} {_num(thr)}"
    elif kind == "environment":
        text = f"p95 {_ms(stat)} vs limit {_ms(thr)}"
    else:
        text = f"statistic {_num(stat)} vs {_num(thr)}"
    window = f"window {d.get('window')}" + (f" vs {d.get('reference')}" if d.get("reference") else "")
    return f"{text}: {verdict} ({window})"


def _drift_lines(drift: Mapping[str, Any] | None, stored: Mapping[str, Any], now: float) -> list[str]:
    """The drift monitor's state, each kind's latest decision and counts, what drift calls for."""
    lines = []
    watching = (drift or {}).get("watching") or {}
    if watching:
        ref = watching.get("reference") or {}
        mon = watching.get("monitor") or {}
        lines.append(
            f"drift:    watching {watching.get('model')} since {_ago(watching.get('since'), now)}: reference "
            f"{ref.get('samples')}/{ref.get('target')} ({ref.get('source')}), a check every {mon.get('check_every')} "
            f"samples, job every {_num((drift or {}).get('check_interval_s'))} s"
        )
    elif drift is not None:
        lines.append("drift:    not watching (no model serves, or no check ran yet)")
    if drift and drift.get("error"):
        lines.append(f"          error: {drift['error']}")
    counts, latest = (drift or {}).get("counts") or {}, (drift or {}).get("latest") or {}
    for kind in ("data", "label", "accuracy", "environment", "preference"):
        c, d = counts.get(kind) or {}, latest.get(kind)
        if not d and not c.get("checks"):
            continue
        tally = f"[{c.get('checks', 0)} checks, {c.get('drifted', 0)} drifted, {c.get('events', 0)} stored]"
        text = _decision(kind, d) + f", {_ago(d.get('at'), now)}" if d else "no decision yet"
        lines.append(f"          {kind:<12}{text} {tally}")
    mix = (drift or {}).get("class_mix") or {}
    if mix.get("in_force"):
        shares = sorted(enumerate(mix.get("priors") or []), key=lambda kv: -kv[1])[:3]
        top = ", ".join(f"class {k} {v:.0%}" for k, v in shares)
        lines.append(
            f"          class mix:  corrected on the logits since {_ago(mix.get('since'), now)} (most frequent: {top})"
        )
        fb = mix.get("feedback") or {}
        if fb.get("labels"):
            n = fb["labels"]
            lines.append(
                f"                      judged by {n} feedback labels: right {fb['served'] / n:.1%} corrected, "
                f"{fb['own'] / n:.1%} without"
            )
    elif mix.get("removed_because"):
        lines.append(f"          class mix:  no correction ({mix['removed_because']})")
    for need in (drift or {}).get("needs") or []:
        lines.append(
            f"          NEEDED:     {need.get('action')} ({need.get('kind')}, {_ago(need.get('at'), now)}): {need.get('reason')}"
        )
    if stored.get("events"):
        last = stored.get("last") or {}
        lines.append(
            f"{'drift:    ' if not lines else '          '}{stored['events']} drift events stored in 24 h, "
            f"{stored.get('detections', 0)} detections (last: {last.get('detector')}, {_ago(last.get('at'), now)})"
        )
    elif not lines:
        lines.append("drift:    no drift checks in the last 24 h")
    return lines


def _adaptation_lines(a: Mapping[str, Any] | None, now: float) -> list[str]:
    """What adaptation is doing (pending, running with its phase) and how the last one ended."""
    if not a:
        return []
    lines = []
    state = a.get("state")
    if state == "running":
        frac = a.get("progress")
        done = "" if frac is None else f" {100 * frac:.0f}%"
        lines.append(f"adapt:    running{done} {a.get('phase') or ''}: {a.get('message') or ''} ({a.get('trigger')})")
    p = a.get("pending") or {}
    if p:
        head = "adapt:    pending" if state == "pending" else "          then pending"
        expires = p.get("expires")
        until = "" if not expires else f"; dropped in {max(0.0, (expires - now) / 60):.0f} min without them"
        lines.append(
            f"{head} since {_ago(p.get('since'), now)} ({p.get('trigger')}): waiting for "
            f"{p.get('waiting_for') or 'labelled samples'}{until}"
        )
    lines += _last_line("adapt:    ", lines, a.get("last"), now)
    if not lines:
        lines.append("adapt:    idle (no adaptation yet)")
    return lines


def _export_lines(e: Mapping[str, Any] | None, now: float) -> list[str]:
    """A front point being exported for the service (wanted, running) and how the last export ended."""
    if not e:
        return []
    lines = []
    if e.get("state") == "running":
        frac = e.get("progress")
        done = "" if frac is None else f" {100 * frac:.0f}%"
        lines.append(f"export:   running{done} {e.get('subnet')}: {e.get('message') or e.get('phase') or ''}")
    elif e.get("state") == "wanted":
        w = e.get("wanted") or {}
        lines.append(f"export:   {w.get('subnet')} wanted since {_ago(w.get('since'), now)} ({w.get('why')})")
    return lines + _last_line("export:   ", lines, e.get("last"), now)


def _last_line(head: str, lines: list[str], last: Mapping[str, Any] | None, now: float) -> list[str]:
    """How the last job of a kind ended, under its running or pending line if there is one."""
    if not last:
        return []
    head = head if not lines else " " * len(head)
    return [f"{head}last {last.get('outcome')} {_ago(last.get('finished'), now)}: {last.get('reason')}"]


def format_status(doc: Mapping[str, Any]) -> str:
    """``/v1/status`` as the lines ``lifelong status`` prints."""
    now = time.time()
    daemon, policy = doc.get("daemon") or {}, doc.get("policy") or {}
    store, runtime = doc.get("store") or {}, doc.get("runtime") or {}
    lines = []
    where = ", ".join(daemon.get("addresses") or [])
    if daemon.get("admin_socket"):
        where += f"; admin unix:{daemon['admin_socket']}"
    up = daemon.get("uptime_s")
    lines.append(
        f"lifelong: {daemon.get('state', '?')}, pid {daemon.get('pid', '?')}"
        + (f", up {_ago(now - up, now).removesuffix(' ago')}" if up is not None else "")
        + (f" ({where})" if where else "")
    )
    model_id = doc.get("model")
    record, dep = store.get("model") or {}, store.get("deployment") or {}
    if model_id is None:
        lines.append("model:    none deployed; run `lifelong deploy FILE`")
    else:
        subnet = record.get("subnet") or (runtime.get("model_metadata") or {}).get("lifelong.subnet") or "?"
        lines.append(f"model:    {model_id}  subnet {subnet}")
        if dep:
            lines.append(
                f"          {dep.get('state')} since {_clock(dep.get('at'))} "
                f"(deployment {dep.get('id')}: {dep.get('reason')})"
            )
        canary = doc.get("canary")
        if canary and canary.get("model") == model_id:
            lines.append(f"          canary:   {_canary(canary)}")
        acc = record.get("accuracy")
        lines.append(
            f"          measured: accuracy {'?' if acc is None else f'{100 * acc:.2f}%'}, latency p50 "
            f"{_ms(record.get('latency_p50_ms'))} p95 {_ms(record.get('latency_p95_ms'))} (batch 1, this device)"
        )
        live = doc.get("live")
        if live and live.get("model") == model_id:
            lines.append(f"          live:     {_live(live)}")
        lines.append(f"          precision {_precision(record.get('precision_map'), doc.get('precision'), subnet)}")
        threads = runtime.get("model_threads")
        if threads:
            chosen = (runtime.get("model_metadata") or {}).get("lifelong.threads")
            how = f"timed fastest at its export: {chosen}" if chosen else "no timed choice in the model"
            per_model = policy.get("threads") == 0
            lines.append(f"          onnxruntime: {threads} intra-op thread(s)" + (f" ({how})" if per_model else ""))
        lines.append(
            f"          served: {runtime.get('predictions', 0)} requests (latency probes included), {runtime.get('samples', 0)} samples, "
            f"p50 {_ms(runtime.get('latency_p50_ms'))} p95 {_ms(runtime.get('latency_p95_ms'))}; "
            f"{runtime.get('swaps', 0)} swaps, {runtime.get('failed_swaps', 0)} refused"
        )
    probe = doc.get("latency_probe")
    if probe:
        lines.append(
            f"probe:    batch {probe.get('batch')}: p50 {_ms(probe.get('p50_ms'))} p95 {_ms(probe.get('p95_ms'))} "
            f"({_ago(probe.get('at'), now)})"
        )
    prof = doc.get("profile")
    if prof:
        lines.append(_profile_line(prof, now, runtime.get("model_threads")))
    lines.append(f"rollback: {store.get('rollback_target') or 'none'}")
    line = f"policy:   {policy.get('name', '?')} ({policy.get('source', '?')})"
    if policy.get("error"):
        line += f"\n          REJECTED edit of {policy.get('file')}, the policy above stays:"
        line += "".join(f"\n            {p.strip()}" for p in str(policy["error"]).splitlines())
    lines.append(line)
    task = doc.get("task_check") or {}
    if task:
        acc = task.get("serving_accuracy")
        measured = "" if acc is None else f"; the serving model {acc:.1%}"
        floor = task.get("floor") or 0
        rule = (
            f"at least {floor:.0%} on {task.get('images')}"
            if floor
            else "no accuracy floor (swap.min_task_accuracy = 0)"
        )
        lines.append(f"task:     every model checked before it serves: {task.get('classes')} classes, {rule}{measured}")
    lines += _drift_lines(doc.get("drift"), store.get("drift_24h") or {}, now)
    lines += _adaptation_lines(doc.get("adaptation"), now)
    lines += _export_lines(doc.get("export"), now)
    samples = store.get("samples") or {}
    by = ", ".join(f"{k} {v.get('total')}" for k, v in (samples.get("by_source") or {}).items())
    lines.append(
        f"samples:  {samples.get('total', 0)} ({samples.get('labelled', 0)} labelled)" + (f": {by}" if by else "")
    )
    workers = doc.get("workers") or []
    if workers:
        for w in workers:
            p = w.get("progress") or {}
            frac = p.get("fraction")
            lines.append(
                f"worker:   {w.get('job_id')} ({w.get('module')}) pid {w.get('pid')} {w.get('state')}"
                + (f" {100 * frac:.0f}% {p.get('phase', '')}" if frac is not None else "")
            )
    else:
        lines.append("workers:  none running")
    jobs = doc.get("jobs") or {}
    if jobs:
        parts = []
        for name, j in jobs.items():
            part = f"{name} {j.get('runs', 0)} runs"
            if j.get("last_error"):
                part += f" (last failed: {j['last_error']})"
            parts.append(part)
        lines.append("jobs:     " + "; ".join(parts))
    events = doc.get("events") or []
    if events:
        lines.append("events (newest first):")
        for e in events[:10]:
            lines.append(f"  {_clock(e.get('at'))}  {e.get('kind', ''):<16} {e.get('message', '')}")
    return "\n".join(lines)


def format_history(doc: Mapping[str, Any]) -> str:
    """``/v1/history`` as the table ``lifelong history`` prints."""
    lines = [
        f"current: {doc.get('current') or 'none'} (serving {doc.get('serving') or 'nothing'}); "
        f"rollback target: {doc.get('rollback_target') or 'none'}"
    ]
    rows = doc.get("deployments") or []
    if not rows:
        lines.append("no deployments yet; run `lifelong deploy FILE`")
        return "\n".join(lines)
    lines.append(f"{'id':>4}  {'when':<19}  {'state':<11}  {'model':<16}  {'subnet':<24}  reason")
    for r in rows:
        m = r.get("model") or {}
        subnet = str(m.get("subnet") or "-")
        if len(subnet) > 24:
            subnet = subnet[:21] + "..."
        line = f"{r.get('id', ''):>4}  {_clock(r.get('at')):<19}  {r.get('state', ''):<11}  {r.get('model_id', ''):<16}"
        line += f"  {subnet:<24}  {r.get('reason', '')}"
        if r.get("detail"):
            line += f"  [{r['detail']}]"
        lines.append(line)
    return "\n".join(lines)
