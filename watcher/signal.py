"""The load signal, pure: Prometheus text from one replica → a `PodReading`; two readings of every replica of a
deployment in one cluster → the figures of one `LoadObserved`.

Guarantees:
- Metric names follow the serving runtime (`names_for`): vLLM (current and pre-0.12 KV-cache names), SGLang, TGI,
  or the LLMModel's custom mapping. Series are summed over their labels (vLLM's `engine` under data
  parallelism, `finished_reason`, ...).
- Hostile input costs only its replica: text that does not parse, non-finite or negative values, or none of the
  runtime's metrics make that replica a *problem* (it does not report), never an exception.
- Counters and histograms are differenced between two readings of the same replica; a count that went down (a
  restart) counts from zero, as PromQL's rate() does. A replica read once has gauges but no rates yet.
- Quantiles are computed from summed bucket deltas (api.histogram), never averaged.
No I/O and no clock: readings carry the time they were taken.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from api import histogram
from api.models import ServingMetrics

MAX_TEXT = 4 * 2**20
"""Bytes of metrics text read from one replica; a vLLM server exposes well under 200 KiB."""
TTFT_QUANTILE = 0.9


@dataclass(frozen=True)
class MetricNames:
    """Where one runtime reports each figure. `kv_cache_usage` lists names to try, newest first. `requests`
    is a counter's sample name (with _total) or a histogram's _count series."""

    time_to_first_token: str | None
    requests_waiting: str | None
    requests_running: str | None
    kv_cache_usage: tuple[str, ...]
    requests: str | None


RUNTIMES: dict[str, MetricNames] = {
    # vLLM V1 (docs/design/metrics.md): gpu_cache_usage_perc was removed in 0.12; kv_cache_usage_perc since 0.9.2.
    "vllm": MetricNames(
        "vllm:time_to_first_token_seconds",
        "vllm:num_requests_waiting",
        "vllm:num_requests_running",
        ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
        "vllm:request_success_total",
    ),
    "sglang": MetricNames(
        "sglang:time_to_first_token_seconds",
        "sglang:num_queue_reqs",
        "sglang:num_running_reqs",
        ("sglang:token_usage",),
        "sglang:e2e_request_latency_seconds_count",
    ),
    # TGI has no time-to-first-token histogram: queue and request-rate targets only.
    "tgi": MetricNames(None, "tgi_queue_size", "tgi_batch_current_size", (), "tgi_request_duration_count"),
    "custom": MetricNames(None, None, None, (), None),
}


def names_for(runtime: str, custom: ServingMetrics | None = None) -> MetricNames:
    """The runtime's names, each replaced by the custom mapping's where it names one."""
    base = RUNTIMES.get(runtime, RUNTIMES["vllm"])
    if custom is None:
        return base
    return MetricNames(
        custom.time_to_first_token_seconds or base.time_to_first_token,
        custom.requests_waiting or base.requests_waiting,
        custom.requests_running or base.requests_running,
        (custom.kv_cache_usage,) if custom.kv_cache_usage else base.kv_cache_usage,
        custom.requests_total or base.requests,
    )


@dataclass(frozen=True)
class PodReading:
    """One replica's metrics at one moment (cumulative histograms and counters, current gauges)."""

    at: float
    """Seconds on the reader's monotonic clock."""
    waiting: float | None = None
    running: float | None = None
    kv_cache_usage: float | None = None
    requests: float | None = None
    ttft: tuple[tuple[float, float], ...] = ()


class BadMetrics(ValueError):
    """The replica's metrics text is not usable; the message says why (it ends up in a condition)."""


def parse(text: str, names: MetricNames, *, at: float) -> PodReading:
    """Read the figures `names` point at from Prometheus text exposition. Raises `BadMetrics`."""
    if len(text) > MAX_TEXT:
        raise BadMetrics(f"metrics text larger than {MAX_TEXT} bytes")
    gauges: dict[str, float] = {}
    series: dict[str, int] = {}
    buckets: dict[float, float] = {}
    ttft_bucket = f"{names.time_to_first_token}_bucket" if names.time_to_first_token else None
    wanted = {names.requests_waiting, names.requests_running, names.requests, *names.kv_cache_usage} - {None}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == ttft_bucket:
                    bound = _bound(sample.labels.get("le"))
                    buckets[bound] = buckets.get(bound, 0.0) + _value(sample.name, sample.value)
                elif sample.name in wanted:
                    gauges[sample.name] = gauges.get(sample.name, 0.0) + _value(sample.name, sample.value)
                    series[sample.name] = series.get(sample.name, 0) + 1
    except BadMetrics:
        raise
    except Exception as exc:  # the parser raises ValueError, IndexError, ... on malformed text
        raise BadMetrics(f"unparsable metrics text: {type(exc).__name__}: {str(exc)[:120]}") from None
    kv_name = next((n for n in names.kv_cache_usage if n in gauges), None)
    # A fill fraction is averaged over its series (one per engine), where counts are summed.
    kv = gauges[kv_name] / series[kv_name] if kv_name else None
    if kv is not None and kv > 1.0 + 1e-9:
        raise BadMetrics(f"{kv_name} is {kv}, not a fraction from 0 to 1")
    ttft = tuple(sorted(buckets.items()))
    if ttft and not math.isinf(ttft[-1][0]):
        raise BadMetrics(f"{names.time_to_first_token} has no +Inf bucket")
    reading = PodReading(
        at=at,
        waiting=gauges.get(names.requests_waiting) if names.requests_waiting else None,
        running=gauges.get(names.requests_running) if names.requests_running else None,
        kv_cache_usage=kv,
        requests=gauges.get(names.requests) if names.requests else None,
        ttft=ttft,
    )
    if reading.waiting is None and reading.running is None and not reading.ttft and reading.requests is None:
        raise BadMetrics("none of the runtime's metrics are present (is serving.runtime right?)")
    return reading


def _bound(le: str | None) -> float:
    if le is None:
        raise BadMetrics("a histogram bucket has no le label")
    try:
        bound = float(le)
    except ValueError:
        raise BadMetrics(f"bucket bound {le[:40]!r} is not a number") from None
    if math.isnan(bound):
        raise BadMetrics("bucket bound NaN")
    return bound


def _value(name: str, value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise BadMetrics(f"{name} is {value}")
    return float(value)


@dataclass(frozen=True)
class Figures:
    """One deployment in one cluster over one window: what a `LoadObserved` carries."""

    replicas: int
    reporting: int
    window_seconds: float
    waiting: float | None = None
    running: float | None = None
    requests_per_second: float | None = None
    kv_cache_usage: float | None = None
    ttft_buckets: list[tuple[float, float]] = field(default_factory=list)
    ttft_p90_seconds: float | None = None
    problems: list[str] = field(default_factory=list)


def figures(
    previous: Mapping[str, PodReading],
    current: Mapping[str, PodReading | str],
    *,
    replicas: int,
    window_seconds: float,
) -> Figures:
    """Combine this scrape (`current`: per replica a reading, or the problem that prevented one) with the last
    readings of the same replicas. Gauges come from every reporting replica; rates and the histogram only from
    replicas read twice (request rates are scaled up to all reporting replicas)."""
    readings = {pod: r for pod, r in current.items() if isinstance(r, PodReading)}
    problems = sorted(f"{pod}: {r}" for pod, r in current.items() if isinstance(r, str))
    deltas: list[list[tuple[float, float]]] = []
    rates: list[float] = []
    for pod, now in readings.items():
        before = previous.get(pod)
        if before is None or now.at <= before.at:
            continue
        if now.ttft:
            diff = histogram.delta(now.ttft, before.ttft)
            deltas.append(diff if diff is not None else list(now.ttft))
        if now.requests is not None and before.requests is not None:
            count = now.requests - before.requests if now.requests >= before.requests else now.requests
            rates.append(count / (now.at - before.at))
    merged = histogram.merge(deltas)
    rate = sum(rates) * len(readings) / len(rates) if rates else None
    return Figures(
        replicas=replicas,
        reporting=len(readings),
        window_seconds=window_seconds,
        waiting=_sum(r.waiting for r in readings.values()),
        running=_sum(r.running for r in readings.values()),
        requests_per_second=rate,
        kv_cache_usage=_mean(r.kv_cache_usage for r in readings.values()),
        ttft_buckets=merged,
        ttft_p90_seconds=histogram.bucket_quantile(TTFT_QUANTILE, merged) if merged else None,
        problems=problems[:8],
    )


def _sum(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) if present else None


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None
