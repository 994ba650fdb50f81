"""Quantiles from Prometheus histogram buckets, as PromQL's ``histogram_quantile`` computes them.

Guarantees: pure arithmetic on (upper bound, cumulative count) pairs, the last bound +Inf; counts are forced
monotonic first (like Prometheus' ``ensureMonotonic``); a quantile of an empty histogram is None, never 0;
histograms with different bucket layouts are summed on the bounds they share (+Inf always), which keeps every
count exact. Used by the watcher (one cluster's p90) and the planner (the fleet's p90 from summed buckets —
quantiles are never averaged).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

Buckets = Sequence[tuple[float, float]]
"""(upper bound `le`, cumulative count of observations <= le), sorted by bound, the last one +Inf."""


def bucket_quantile(q: float, buckets: Buckets) -> float | None:
    """The `q` quantile (0 < q < 1) by linear interpolation inside the bucket it falls in; None when there is
    no observation or no +Inf bucket. Above the highest finite bound: that bound (the best the buckets know)."""
    if not buckets or not math.isinf(buckets[-1][0]):
        return None
    bounds = [b for b, _ in buckets]
    counts: list[float] = []
    for _, count in buckets:
        counts.append(max(count, counts[-1]) if counts else count)
    total = counts[-1]
    if total <= 0:
        return None
    rank = q * total
    index = next(i for i, c in enumerate(counts) if c >= rank)
    if index == len(bounds) - 1:
        return bounds[-2] if len(bounds) > 1 else None
    low = 0.0 if index == 0 else bounds[index - 1]
    below = 0.0 if index == 0 else counts[index - 1]
    if index == 0 and bounds[0] <= 0:
        return bounds[0]
    span = counts[index] - below
    if span <= 0:
        return bounds[index]
    return low + (bounds[index] - low) * (rank - below) / span


def total(buckets: Buckets) -> float:
    """Observations in the histogram (the +Inf bucket)."""
    return buckets[-1][1] if buckets else 0.0


def merge(histograms: Iterable[Buckets]) -> list[tuple[float, float]]:
    """The sum of histograms, on the bounds all of them have (empty histograms are left out)."""
    present = [h for h in histograms if h]
    if not present:
        return []
    shared = set.intersection(*({b for b, _ in h} for h in present))
    sums: dict[float, float] = dict.fromkeys(shared, 0.0)
    for histogram in present:
        for bound, count in histogram:
            if bound in sums:
                sums[bound] += count
    return sorted(sums.items())


def delta(now: Buckets, before: Buckets) -> list[tuple[float, float]] | None:
    """Observations between two readings of one cumulative histogram. None if the layout changed or a count went
    down (the server restarted): PromQL's rate() then counts from zero, which the caller does with `now`."""
    if [b for b, _ in now] != [b for b, _ in before]:
        return None
    out: list[tuple[float, float]] = []
    for (bound, a), (_, b) in zip(now, before, strict=True):
        if a < b:
            return None
        out.append((bound, a - b))
    return out
