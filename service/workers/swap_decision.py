"""Whether an adaptation's candidate replaces the serving model: pure functions of the job's
result and the policy, run on the daemon's loop when the worker ends.

- :func:`decide_swap`, a labelled adaptation: swap only when the candidate meets the budgets,
  beats the serving model on held-out local samples by ``swap.min_improvement`` and does not
  forget the original data by more than ``swap.max_forgetting`` (held-out replay samples),
  measured against the model that served before the drift where a label-free answer has
  replaced it since. When that interim answer itself lost more than the budget on the original
  data, a candidate within the budget, or one that gives back at least ``swap.min_improvement``
  of what the interim answer lost there, replaces it unless it is worse on the new data by more
  than ``swap.min_improvement``: the labelled answer is the durable one. A
  candidate slower than the serving model but within the latency budget is accepted: the
  policy's objective already traded its latency against its accuracy when the worker chose it.
- :func:`decide_label_free`, the label-free answer (``"bn"`` mode, no label to measure
  accuracy with): judged by what the two models' answers on the local images look like.

No torch, numpy or I/O: this runs in the serving process.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lifelong.drift.priors import total_variation
from policies import Policy

__all__ = [
    "COLLAPSE_SHARE",
    "LABEL_FREE_MARGIN",
    "LABEL_FREE_SLOWER",
    "SwapDecision",
    "decide_label_free",
    "decide_swap",
]


@dataclass(frozen=True)
class SwapDecision:
    swap: bool
    reason: str


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _over_budget(cand: Mapping[str, Any], policy: Policy) -> SwapDecision | None:
    b, batch = policy.budgets, policy.target.batch
    latency = (cand.get("latency_ms") or {}).get(str(batch))
    if b.latency_ms_p95 is not None and latency is not None and latency > b.latency_ms_p95:
        return SwapDecision(False, f"the candidate takes {latency:.2f} ms at batch {batch}, over the budget of {b.latency_ms_p95} ms")  # fmt: skip
    if b.model_bytes is not None and cand.get("bytes", 0) > b.model_bytes:
        return SwapDecision(False, f"the candidate has {cand['bytes']} bytes, over the budget of {b.model_bytes}")
    return None


def _short_of(what: str, gain: float, need: float) -> SwapDecision | None:
    """A refusal when the candidate's ``gain`` on the local samples is under ``need`` (negative:
    it may be that much below the serving model), else None."""
    if gain >= need:
        return None
    if need < 0:
        return SwapDecision(False, f"{what}: more than {-need * 100:.2f} pt below the label-free answer serving")
    return SwapDecision(False, f"{what}: below the minimum improvement of {need * 100:.2f} pt")


LABEL_FREE_MARGIN = 0.05
"""How much closer (total variation) to the reference class mix a label-free candidate's
answers must be than the serving model's."""
LABEL_FREE_SLOWER = 1.25
"""A label-free candidate (the serving subnet with other BN statistics) slower than this factor
times the serving model, both timed in the same job, is refused; within it, the latency budget
is not checked again (the serving model passed it; timings on a busy device are not)."""
COLLAPSE_SHARE = 0.5
"""A label-free candidate that puts more than this share of local images in one class has collapsed."""


def decide_label_free(result: Mapping[str, Any], policy: Policy) -> SwapDecision:
    """Whether a label-free candidate (``"bn"`` mode) should replace the serving model.

    No label says how accurate either model is on the new data, so the judge is what their
    answers look like on it: a shift collapses the serving model onto a few classes; the
    candidate must not have collapsed (largest class share at most :data:`COLLAPSE_SHARE`,
    unless the reference's own largest share is higher) and must answer with a class mix
    closer to the one the serving model predicted on its deployment data (the drift
    reference) by :data:`LABEL_FREE_MARGIN`. Entropy is not used: the unadapted model is
    confidently wrong under contrast (see :mod:`lifelong.jobs.bn_adapt`). Where labels of the new
    data had already arrived (``samples["labelled"]``, both models measured on them), they judge
    instead: the candidate must beat the serving model by ``swap.min_improvement``.
    """
    cand, serving = result.get("candidate"), result.get("serving") or {}
    if not cand:
        return SwapDecision(False, "the label-free adaptation produced no candidate")
    batch, b = str(policy.target.batch), policy.budgets
    if b.model_bytes is not None and cand.get("bytes", 0) > b.model_bytes:
        return SwapDecision(False, f"the candidate has {cand['bytes']} bytes, over the budget of {b.model_bytes}")
    ours, theirs = (cand.get("latency_ms") or {}).get(batch), (serving.get("latency_ms") or {}).get(batch)
    if ours is not None and theirs is not None:
        # the serving subnet with other statistics, timed beside it: judged against it, not against
        # the budget (a busy device makes both slow; the serving model's budget is the drift monitor's)
        if ours > LABEL_FREE_SLOWER * theirs:
            return SwapDecision(False, f"label-free candidate takes {ours:.3f} ms at batch {batch}, over {LABEL_FREE_SLOWER:g}x the serving model's {theirs:.3f} ms measured beside it")  # fmt: skip
    else:
        over = _over_budget(cand, policy)
        if over is not None:
            return over
    n = (result.get("samples") or {}).get("unlabelled")
    labelled = (result.get("samples") or {}).get("labelled") or 0
    if labelled and cand.get("local_accuracy") is not None and serving.get("local_accuracy") is not None:
        gain = cand["local_accuracy"] - serving["local_accuracy"]
        what = (
            f"label-free: BN statistics re-estimated on {n} local images; {_pct(cand['local_accuracy'])} vs "
            f"{_pct(serving['local_accuracy'])} serving on {labelled} labelled local samples ({gain * 100:+.2f} pt)"
        )
        return _short_of(what, gain, policy.swap.min_improvement) or SwapDecision(True, what)
    ref = result.get("reference_mix")
    cap = max(COLLAPSE_SHARE, max(ref) if ref else 0.0)
    if cand["largest_share"] > cap:
        return SwapDecision(False, f"label-free candidate puts {cand['largest_share']:.0%} of {n} local images in one class (collapsed; at most {cap:.0%})")  # fmt: skip
    if not ref or not serving.get("mix"):
        return SwapDecision(False, "no reference class mix to judge the label-free candidate against")
    d_cand, d_serving = total_variation(cand["mix"], ref), total_variation(serving["mix"], ref)
    what = (
        f"label-free: BN statistics re-estimated on {n} local images; class mix {d_cand:.2f} from the "
        f"reference vs {d_serving:.2f} serving, largest class {cand['largest_share']:.0%} vs {serving.get('largest_share', 0):.0%}"
    )
    if d_cand > d_serving - LABEL_FREE_MARGIN:
        return SwapDecision(False, f"{what}: not closer by {LABEL_FREE_MARGIN}")
    return SwapDecision(True, what)


def decide_swap(result: Mapping[str, Any], policy: Policy) -> SwapDecision:
    """Whether the candidate of an adaptation ``result`` should replace the serving model."""
    if result.get("mode") == "bn":
        return decide_label_free(result, policy)
    cand = result.get("candidate")
    if not cand:
        return SwapDecision(False, "the adaptation produced no candidate")
    over = _over_budget(cand, policy)
    if over is not None:
        return over
    serving = result.get("serving")
    desc = f"candidate {cand['subnet']} {_pct(cand['local_accuracy'])} on held-out local samples"
    if not serving or serving.get("local_accuracy") is None:
        return SwapDecision(True, f"{desc}; the serving model could not be measured")
    gain = cand["local_accuracy"] - serving["local_accuracy"]
    vs = f"{desc} vs {_pct(serving['local_accuracy'])} serving ({gain * 100:+.2f} pt)"
    # forgetting is measured against the model before the drift (a label-free answer serving
    # now may itself have given up the original data), else against the serving model
    original = result.get("original") or {}
    ref, ref_name = (
        (original, "before the drift") if original.get("replay_accuracy") is not None else (serving, "serving")
    )
    cap, need = policy.swap.max_forgetting, policy.swap.min_improvement
    forget = None
    if cand.get("replay_accuracy") is not None and ref.get("replay_accuracy") is not None:
        forget = ref["replay_accuracy"] - cand["replay_accuracy"]
    interim_forgot = (
        ref is original and serving.get("replay_accuracy") is not None
        and ref["replay_accuracy"] - serving["replay_accuracy"] > cap
    )  # fmt: skip
    # a candidate that gives back to the original data part of what the interim answer lost
    restores = (
        interim_forgot and cand.get("replay_accuracy") is not None
        and cand["replay_accuracy"] >= serving["replay_accuracy"] + policy.swap.min_improvement
    )  # fmt: skip
    # the interim answer gave up the original data; a candidate that keeps (or restores) more
    # of it need not beat it on the new data, only not lose more than the minimum improvement there
    relaxed = interim_forgot and forget is not None and (forget <= cap or restores)
    if relaxed:
        need = -policy.swap.min_improvement
    short = _short_of(vs, gain, need)
    if short is not None:
        return short
    if forget is not None and forget > cap and not restores:
        return SwapDecision(
            False,
            f"{vs}, but it loses {forget * 100:.2f} pt on the original data (replay "
            f"{_pct(cand['replay_accuracy'])} vs {_pct(ref['replay_accuracy'])} {ref_name}; at most "
            f"{cap * 100:.2f} pt allowed by swap.max_forgetting)",
        )
    kept = "" if forget is None else f"; original data {forget * -100:+.2f} pt against the model {ref_name}"
    if relaxed:
        lost = 100 * (ref["replay_accuracy"] - serving["replay_accuracy"])
        kept += (
            f" (the label-free answer serving lost {lost:.2f} pt there, this one "
            f"{100 * max(forget or 0.0, 0.0):.2f}: within {policy.swap.min_improvement * 100:.2f} pt of it on the new data is enough)"
        )
    return SwapDecision(True, f"{vs}{kept}")
