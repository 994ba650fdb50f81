"""The fleet autoscaler, pure: load observed in every cluster + `spec.autoscaling` → the fleet's desired replicas,
with the semantics platform engineers know from the HorizontalPodAutoscaler.

Guarantees (each has a table test in tests/unit/test_autoscale.py):
- Per metric, ratio = observed / target and proposal = ceil(replicas × ratio); nothing changes while
  |ratio − 1| <= `TOLERANCE` (10 %). Several targets: the largest proposal wins.
- Missing metrics never scale down: a target metric nobody reported (or reported from too few requests), a
  replica whose metrics could not be read (nonsense, non-200, a scrape timing out: its `problems`) or a cluster
  gone quiet blocks any scale-down the others propose. Replicas that did not report without a problem (still
  starting) count as 0 % of the target for a scale-up and as 100 % for a scale-down, as the HPA does with pods
  missing metrics. Nothing reported at all: no change. Whenever anything is missing the decision says so
  (`metrics_available` False: the ScalingActive condition turns False, naming what is missing).
- The fleet's p90 time to first token is computed from the sum of every cluster's bucket deltas, never from
  averaged quantiles.
- Stabilisation: the result is held between the lowest recommendation of the scale-up window and the highest of
  the scale-down window (HPA's `stabilizeRecommendationWithBehaviors`). After a planner restart the history is
  seeded with the current count, so a new leader never scales down before one full scale-down window.
- Rate limits (the HPA's default policies): at most max(2 ×, +4) replicas per 15 s up; down, 100 % per 15 s.
  Then minReplicas..maxReplicas.
- `hold_scale_down` (a failover in progress: replicas are being replaced elsewhere) keeps the count from falling,
  so a scale-down never removes what is Available while the lost cluster's copies are being replaced.
- After a change, the next decision waits until the origin's spec.replicas shows it (or `SETTLE` passed), so a
  slow /scale round trip is not taken for a reason to scale again.
No I/O, no clock: `now` is passed in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from api import histogram
from api.events import LoadObserved
from api.models import Autoscaling

TOLERANCE = 0.1
MIN_TTFT_SAMPLES = 5
"""Fewer first tokens than this in the window make the p90 *missing*, not a number to scale down on."""
RATE_PERIOD = timedelta(seconds=15)
SCALE_UP_PERCENT = 100
SCALE_UP_PODS = 4
SCALE_DOWN_PERCENT = 100
STALE_AFTER = timedelta(seconds=45)
"""An observation older than this no longer counts (its cluster's agent stopped reporting)."""
SETTLE = timedelta(seconds=60)


@dataclass(frozen=True)
class History:
    """What the autoscaler remembers of one deployment between decisions (kept in the planner's memory)."""

    recommendations: tuple[tuple[datetime, int], ...] = ()
    scale_events: tuple[tuple[datetime, int], ...] = ()
    """(when, replicas added (>0) or removed (<0)), for the rate limits."""
    pending: tuple[datetime, int] | None = None
    """A count written through /scale that spec.replicas does not show yet."""


@dataclass(frozen=True)
class Decision:
    current: int
    desired: int
    recommendation: int
    """The raw proposal, before stabilisation, rate limits and min/max."""
    metrics_available: bool
    reason: str
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    limits: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    """Why figures were missing (targets nobody reported, replicas' problems), for the condition."""
    history: History = field(default_factory=History)
    waiting: bool = False
    """Nothing evaluated: a previous change is still on its way through /scale."""

    @property
    def changed(self) -> bool:
        return self.desired != self.current


@dataclass(frozen=True)
class _Proposal:
    name: str
    proposal: int
    value: float | None
    target: float
    ratio: float | None
    text: str


def decide(
    autoscaling: Autoscaling,
    current: int,
    loads: Sequence[LoadObserved],
    history: History | None,
    now: datetime,
    *,
    stale_after: timedelta = STALE_AFTER,
    hold_scale_down: str | None = None,
) -> Decision:
    """The fleet's desired replicas; see the module docstring for the rules."""
    if history is None:
        # First sight (or a new leader): the scale-down window starts now, so nothing is given back early.
        history = History(recommendations=((now, current),))
    if history.pending is not None:
        since, target = history.pending
        if current != target and now - since < SETTLE:
            return Decision(
                current, current, current, True, f"waiting for /scale to show {target}", history=history, waiting=True
            )
        history = replace(history, pending=None)
    fresh = [o for o in loads if now - o.observed_at <= stale_after]
    missing: list[str] = [p for o in fresh for p in o.problems]
    stale = sorted({o.cluster for o in loads} - {o.cluster for o in fresh})
    if stale:
        missing.append(f"no recent load from {', '.join(stale)}")
    proposals, unavailable = _proposals(autoscaling, current, fresh)
    missing.extend(unavailable)
    metrics = {
        p.name: {"value": p.value, "target": p.target, "ratio": p.ratio, "proposal": p.proposal} for p in proposals
    }
    if current == 0 or not proposals:
        recommendation = current
    else:
        recommendation = max(p.proposal for p in proposals)
        if unavailable and recommendation < current:
            recommendation = current  # a metric is missing: never scale down on the others alone
    held: list[str] = []
    if hold_scale_down and recommendation < current:
        held.append(f"scale-down held: {hold_scale_down}")
        recommendation = current
    elif missing and recommendation < current:
        # A replica answering nonsense or timing out, or a cluster gone quiet, may be the busiest one: the
        # figures of the others are no reason to give GPUs back (stricter than the HPA, which counts such pods
        # at 100 % of target and may still scale down).
        held.append("scale-down held: metrics missing")
        recommendation = current
    stabilized, limits, recommendations = _stabilize(autoscaling, current, recommendation, history, now)
    desired, rate_limits, scale_events = _limit(autoscaling, current, stabilized, history, now)
    limits = held + limits + rate_limits
    if desired != current:
        scale_events = (*scale_events, (now, desired - current))
    new_history = History(
        recommendations=recommendations,
        scale_events=scale_events,
        pending=(now, desired) if desired != current else None,
    )
    driver = max(proposals, key=lambda p: (p.proposal, p.ratio or 0.0), default=None)
    clusters = ", ".join(sorted({o.cluster for o in fresh})) or "no cluster"
    window = max((o.window_seconds for o in fresh), default=0.0)
    if desired != current and driver is not None:
        reason = f"{current} → {desired}: {driver.text} on {clusters} over {window:.0f} s"
    elif not proposals:
        reason = "no metric available: " + ("; ".join(missing) or "no load observed")
    else:
        reason = f"{current} → {desired}: " + "; ".join(p.text for p in proposals)
    if limits and desired != recommendation:
        reason += f" ({'; '.join(limits)})"
    return Decision(
        current=current,
        desired=desired,
        recommendation=recommendation,
        metrics_available=bool(proposals) and not missing,
        reason=reason,
        metrics=metrics,
        limits=limits,
        missing=missing,
        history=new_history,
    )


def _proposals(
    autoscaling: Autoscaling, current: int, loads: Sequence[LoadObserved]
) -> tuple[list[_Proposal], list[str]]:
    target = autoscaling.target
    reporting = sum(o.reporting for o in loads)
    not_reporting = max(0, current - reporting)
    proposals: list[_Proposal] = []
    unavailable: list[str] = []
    waiting = _total(o.waiting for o in loads)
    running = _total(o.running for o in loads)
    if target.queue_depth is not None:
        if waiting is None:
            unavailable.append("queue depth: no replica reported its waiting requests")
        else:
            proposals.append(
                _average("queueDepth", waiting, target.queue_depth, current, not_reporting, "queue", "per replica")
            )
    if target.requests_per_second is not None:
        rate = _total(o.requests_per_second for o in loads)
        if rate is None:
            unavailable.append("requests per second: no replica reported its finished requests")
        else:
            proposals.append(
                _average("requestsPerSecond", rate, target.requests_per_second, current, not_reporting, "rate", "rps")
            )
    if target.time_to_first_token_p90_ms is not None:
        found = _ttft(target.time_to_first_token_p90_ms, current, reporting, not_reporting, loads, waiting, running)
        if isinstance(found, str):
            unavailable.append(found)
        else:
            proposals.append(found)
    return proposals, unavailable


def _average(
    name: str, total: float, target: float, current: int, not_reporting: int, label: str, unit: str
) -> _Proposal:
    """An average-per-replica target, with the HPA's treatment of replicas that did not report."""
    if current <= 0:
        return _Proposal(name, current, None, target, None, f"{label}: no replicas")
    up = total / (current * target)  # the silent replicas carry nothing: the most cautious scale-up
    down = (total + not_reporting * target) / (current * target)  # they are at target: the most cautious scale-down
    per_replica = total / max(current - not_reporting, 1)
    if up > 1 + TOLERANCE:
        proposal, ratio, sign = math.ceil(current * up - 1e-9), up, ">"
    elif down < 1 - TOLERANCE:
        proposal, ratio, sign = math.ceil(current * down - 1e-9), down, "<"
    else:
        proposal, ratio, sign = current, up, "≈"
    return _Proposal(name, proposal, per_replica, target, ratio, f"{label} {per_replica:.3g} {sign} {target:g} {unit}")


def _ttft(
    target_ms: int,
    current: int,
    reporting: int,
    not_reporting: int,
    loads: Sequence[LoadObserved],
    waiting: float | None,
    running: float | None,
) -> _Proposal | str:
    buckets = histogram.merge(o.ttft_buckets for o in loads)
    count = histogram.total(buckets)
    if count <= 0 and loads and reporting and not waiting and not running and any(o.ttft_buckets for o in loads):
        # Idle: replicas reported, nothing was asked of them. Not missing: an idle fleet may give GPUs back.
        proposal = current if not_reporting else 0  # silent replicas might be busy: never on their account
        return _Proposal("timeToFirstTokenP90Ms", proposal, 0.0, target_ms, 0.0, "idle (no requests)")
    if count < MIN_TTFT_SAMPLES:
        if not any(o.ttft_buckets for o in loads):
            return "time to first token: no replica reported a time-to-first-token histogram"
        # No count in the text: it ends up in the ScalingActive condition, rewritten whenever its message changes.
        return f"time to first token: fewer than {MIN_TTFT_SAMPLES} first tokens in the window"
    p90 = histogram.bucket_quantile(0.9, buckets)
    if p90 is None:
        return "time to first token: no quantile"
    value_ms = p90 * 1000
    ratio = value_ms / target_ms
    text = f"TTFT p90 {_duration(value_ms)} {{}} {_duration(target_ms)}"
    if ratio > 1 + TOLERANCE:
        # Latency is per request, not per replica: the replicas already added but not yet reporting will help.
        proposal = max(current, math.ceil(max(reporting, 1) * ratio - 1e-9))
        return _Proposal("timeToFirstTokenP90Ms", proposal, value_ms, target_ms, ratio, text.format(">"))
    if ratio < 1 - TOLERANCE:
        proposal = current if not_reporting else math.ceil(current * ratio - 1e-9)
        return _Proposal("timeToFirstTokenP90Ms", proposal, value_ms, target_ms, ratio, text.format("<"))
    return _Proposal("timeToFirstTokenP90Ms", current, value_ms, target_ms, ratio, text.format("≈"))


def _stabilize(
    autoscaling: Autoscaling, current: int, recommendation: int, history: History, now: datetime
) -> tuple[int, list[str], tuple[tuple[datetime, int], ...]]:
    up_cutoff = now - timedelta(seconds=autoscaling.scale_up_stabilization_seconds)
    down_cutoff = now - timedelta(seconds=autoscaling.scale_down_stabilization_seconds)
    up = down = recommendation
    for at, value in history.recommendations:
        if at > up_cutoff:
            up = min(up, value)
        if at > down_cutoff:
            down = max(down, value)
    result = min(max(current, up), down)
    limits: list[str] = []
    if recommendation > current and result < recommendation:
        limits.append(f"scale-up window {autoscaling.scale_up_stabilization_seconds} s holds {result}")
    if recommendation < current and result > recommendation:
        limits.append(f"scale-down window {autoscaling.scale_down_stabilization_seconds} s holds {result}")
    keep = min(up_cutoff, down_cutoff)
    kept = tuple((at, v) for at, v in history.recommendations if at > keep)
    return result, limits, (*kept, (now, recommendation))


def _limit(
    autoscaling: Autoscaling, current: int, desired: int, history: History, now: datetime
) -> tuple[int, list[str], tuple[tuple[datetime, int], ...]]:
    events = tuple((at, n) for at, n in history.scale_events if now - at < RATE_PERIOD)
    added = sum(n for _, n in events if n > 0)
    removed = -sum(n for _, n in events if n < 0)
    limits: list[str] = []
    if desired > current:
        start = current - added
        ceiling = max(math.ceil(start * (1 + SCALE_UP_PERCENT / 100)), start + SCALE_UP_PODS)
        if desired > ceiling:
            desired = max(current, ceiling)
            limits.append(f"rate limit: at most {ceiling} within 15 s")
    elif desired < current:
        start = current + removed
        floor = math.floor(start * (1 - SCALE_DOWN_PERCENT / 100))
        if desired < floor:
            desired = min(current, floor)
            limits.append(f"rate limit: at least {floor} within 15 s")
    low, high = autoscaling.min_replicas, autoscaling.max_replicas
    if desired > high:
        desired = high
        limits.append(f"maxReplicas {high}")
    if desired < low:
        desired = low
        limits.append(f"minReplicas {low}")
    return desired, limits, events


def _total(values: Any) -> float | None:
    present = [v for v in values if v is not None]
    return float(sum(present)) if present else None


def _duration(ms: float) -> str:
    return f"{ms / 1000:.3g} s" if ms >= 1000 else f"{ms:.0f} ms"
