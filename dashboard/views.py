"""What the pages show, shaped from the store's rows: pure functions, no I/O (unit-tested on their own).

Guarantees:
- Numbers are never recomputed here from raw facts: fleet totals are sums of `report_gpu_capacity` rows, the node
  grid is `report_node_gpus` as is; so what a page shows equals the SQL views for the same moment.
- Strings are passed through untouched: escaping is the templates' job (Jinja2 autoescape), so nothing here
  builds markup.
- The load plot is numbers only (coordinates of an SVG drawn by the template): no tenant string reaches it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from api.events import ApplyReported, LoadObserved, PlacementDecided, PlanIssued, ScaleDecided
from store.browse import NodeGpus
from store.reader import StoredEvent
from store.reports import GpuCapacityRow


@dataclass(frozen=True)
class GpuTypeTotal:
    gpu_product: str
    clusters: int
    nodes: int
    total: int
    allocated: int
    reserved: int
    free: int
    unusable_gpus: int


def totals_by_type(rows: Iterable[GpuCapacityRow]) -> list[GpuTypeTotal]:
    """The fleet's GPUs per product: the capacity view's rows summed over clusters."""
    acc: dict[str, list[int]] = {}
    for r in rows:
        t = acc.setdefault(r.gpu_product, [0] * 7)
        for i, v in enumerate((1, r.nodes, r.total, r.allocated, r.reserved, r.free, r.unusable_gpus)):
            t[i] += v
    return [GpuTypeTotal(product, *values) for product, values in sorted(acc.items())]


@dataclass(frozen=True)
class NodeCell:
    """One node of the grid: its GPUs as slots (allocated, reserved, free) and the largest request it can take."""

    node: str
    gpu_product: str
    usable: bool
    allocated: int
    reserved: int
    free: int

    @property
    def slots(self) -> list[str]:
        return ["allocated"] * self.allocated + ["reserved"] * self.reserved + ["free"] * self.free


@dataclass(frozen=True)
class ClusterGrid:
    cluster: str
    nodes: tuple[NodeCell, ...]
    free: int
    """Free GPUs of the usable nodes, summed."""
    largest_free: int
    """The most free GPUs on one usable node: the largest replica this cluster can take now."""


def node_grid(rows: Iterable[NodeGpus]) -> list[ClusterGrid]:
    """The per-node grid, cluster by cluster: fragmentation shows as `free` far above `largest_free`."""
    by_cluster: dict[str, list[NodeCell]] = {}
    for r in rows:
        # A node's slots are its allocatable GPUs; allocated + reserved may exceed them (overcommitted
        # reservations): clamp so the drawing stays the node's size.
        allocated = min(r.allocated, r.allocatable)
        reserved = min(r.reserved, r.allocatable - allocated)
        by_cluster.setdefault(r.cluster, []).append(
            NodeCell(r.node, r.gpu_product, r.usable, allocated, reserved, r.free if r.usable else 0)
        )
    out = []
    for cluster, cells in sorted(by_cluster.items()):
        usable = [c for c in cells if c.usable]
        out.append(
            ClusterGrid(
                cluster=cluster,
                nodes=tuple(cells),
                free=sum(c.free for c in usable),
                largest_free=max((c.free for c in usable), default=0),
            )
        )
    return out


# ------------------------------------------------------------------------------------------- a deployment


@dataclass(frozen=True)
class TimelineItem:
    """One entry of a deployment's decision timeline."""

    at: datetime
    kind: str
    """decision | scale | plan | apply"""
    title: str
    cluster: str
    event: Any
    """The decoded event (PlacementDecided, ScaleDecided, PlanIssued, ApplyReported) for the template."""
    failed: bool = False


def timeline(events: Iterable[StoredEvent]) -> list[TimelineItem]:
    """Decisions, scaling decisions, plans and apply results, newest first."""
    items: list[TimelineItem] = []
    for stored in events:
        e = stored.event
        match e:
            case PlacementDecided():
                placed = (
                    ", ".join(
                        f"{s.cluster}×{s.replicas}" + (f" ({s.role})" if s.role != "active" else "")
                        for s in e.shares
                        if s.replicas
                    )
                    or "nowhere"
                )
                items.append(
                    TimelineItem(
                        e.decided_at,
                        "decision",
                        f"{e.outcome}: {e.desired_replicas} replica(s) → {placed}",
                        e.cluster,
                        e,
                        failed=e.outcome not in ("Placed", "Suspended", "Deleting"),
                    )
                )
            case ScaleDecided():
                items.append(
                    TimelineItem(
                        e.decided_at, "scale", f"scale {e.from_replicas} → {e.to_replicas}: {e.reason}", e.cluster, e
                    )
                )
            case PlanIssued():
                items.append(TimelineItem(e.at, "plan", f"{e.plan.kind} plan for {e.plan.cluster}", e.plan.cluster, e))
            case ApplyReported():
                items.append(
                    TimelineItem(
                        e.finished_at,
                        "apply",
                        f"{e.outcome} in {e.cluster}",
                        e.cluster,
                        e,
                        failed=e.outcome == "Failed",
                    )
                )
            case _:
                pass
    items.sort(key=lambda i: i.at, reverse=True)
    return items


@dataclass(frozen=True)
class Series:
    name: str
    css: str
    points: str
    """SVG polyline points ("x,y x,y ...")."""
    last: float | None
    peak: float


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    series: tuple[Series, ...]
    start: datetime | None
    end: datetime | None
    samples: int
    scale_marks: tuple[float, ...] = field(default_factory=tuple)
    """x positions of scaling decisions (vertical marks)."""


def load_chart(
    loads: Sequence[LoadObserved],
    scales: Sequence[ScaleDecided],
    *,
    width: int = 720,
    height: int = 160,
) -> Chart:
    """Requests/s, p90 TTFT and ready replicas over time (each on its own scale: the plot shows shape, the legend
    the numbers), summed over clusters per observation time."""
    samples: dict[datetime, list[float | None]] = {}
    for load in loads:
        s = samples.setdefault(load.observed_at, [None, None, 0.0])
        if load.requests_per_second is not None:
            s[0] = (s[0] or 0.0) + load.requests_per_second
        if load.ttft_p90_seconds is not None:
            s[1] = max(s[1] or 0.0, load.ttft_p90_seconds)
        s[2] = (s[2] or 0.0) + load.replicas
    times = sorted(samples)
    if not times:
        return Chart(width, height, (), None, None, 0)
    t0, t1 = times[0], times[-1]
    span = max((t1 - t0).total_seconds(), 1e-9)

    def x(t: datetime) -> float:
        return round((t - t0).total_seconds() / span * width, 1) if len(times) > 1 else width / 2

    series = []
    for index, (name, css) in enumerate((("requests/s", "rps"), ("TTFT p90 s", "ttft"), ("replicas", "replicas"))):
        values = [(t, samples[t][index]) for t in times]
        present = [(t, v) for t, v in values if v is not None and math.isfinite(v)]
        peak = max((v for _, v in present), default=0.0)
        top = peak if peak > 0 else 1.0
        points = " ".join(f"{x(t)},{round(height - 4 - (v / top) * (height - 8), 1)}" for t, v in present)
        series.append(Series(name, css, points, present[-1][1] if present else None, peak))
    marks = tuple(x(s.decided_at) for s in scales if t0 <= s.decided_at <= t1)
    return Chart(width, height, tuple(series), t0, t1, len(times), marks)


def loads_and_scales(events: Iterable[StoredEvent]) -> tuple[list[LoadObserved], list[ScaleDecided]]:
    loads, scales = [], []
    for stored in events:
        if isinstance(stored.event, LoadObserved):
            loads.append(stored.event)
        elif isinstance(stored.event, ScaleDecided):
            scales.append(stored.event)
    return loads, scales


def conditions(observed_status: dict[str, Any]) -> list[dict[str, Any]]:
    """The deployment's status conditions as last observed on the resource (malformed entries left out)."""
    found = observed_status.get("conditions")
    return [c for c in found if isinstance(c, dict)] if isinstance(found, list) else []
