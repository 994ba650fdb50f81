"""The load signal: quantiles from buckets, Prometheus text → readings, two readings → one observation."""

from __future__ import annotations

import json
import math

import pytest

from api import histogram
from api.models import ServingMetrics
from tests.metrics_text import SGLANG_SAMPLE, TGI_SAMPLE, vllm_text
from watcher import signal

VLLM = signal.names_for("vllm")
INF = math.inf


# ------------------------------------------------------------------------------------------------- quantiles


@pytest.mark.parametrize(
    ("buckets", "expected"),
    [
        # Prometheus promql/quantile.go semantics: linear inside the bucket the rank falls in.
        ([(0.1, 0), (0.5, 10), (1.0, 20), (INF, 20)], 0.5 + 0.5 * 8 / 10),
        ([(0.5, 90), (1.0, 100), (INF, 100)], 0.5),
        ([(0.5, 0), (INF, 10)], 0.5),  # above the highest finite bound: that bound
        ([(1.0, 10), (INF, 10)], 0.9),  # first bucket interpolates from 0
        ([(1.0, 0), (INF, 0)], None),  # no observation: missing, never 0
        ([(1.0, 5)], None),  # no +Inf bucket
        ([(0.5, 10), (1.0, 8), (INF, 10)], 0.5 * 0.9 / 1.0),  # non-monotonic counts are forced monotonic
    ],
)
def test_bucket_quantile(buckets: list[tuple[float, float]], expected: float | None) -> None:
    got = histogram.bucket_quantile(0.9, buckets)
    assert got == pytest.approx(expected) if expected is not None else got is None


def test_merge_sums_on_shared_bounds_only() -> None:
    a = [(0.1, 1.0), (0.5, 3.0), (1.0, 4.0), (INF, 5.0)]
    b = [(0.5, 2.0), (1.0, 2.0), (INF, 2.0)]
    assert histogram.merge([a, b, []]) == [(0.5, 5.0), (1.0, 6.0), (INF, 7.0)]
    assert histogram.merge([]) == []


def test_delta_and_reset() -> None:
    before = [(1.0, 2.0), (INF, 3.0)]
    assert histogram.delta([(1.0, 5.0), (INF, 9.0)], before) == [(1.0, 3.0), (INF, 6.0)]
    assert histogram.delta([(1.0, 1.0), (INF, 1.0)], before) is None  # a restart
    assert histogram.delta([(2.0, 5.0), (INF, 9.0)], before) is None  # another layout


# --------------------------------------------------------------------------------------------------- parsing


def test_parse_vllm_sums_engines_and_averages_kv() -> None:
    text = vllm_text(waiting=3, running=5, kv=0.5, success=10, ttft=[0.05] * 8 + [1.2] * 2, engines=2)
    reading = signal.parse(text, VLLM, at=1.0)
    assert (reading.waiting, reading.running, reading.kv_cache_usage, reading.requests) == (3, 5, 0.5, 10)
    assert dict(reading.ttft)[0.06] == 8 and dict(reading.ttft)[INF] == 10


def test_parse_vllm_before_0_12_reads_gpu_cache_usage() -> None:
    text = vllm_text(kv=0.25, kv_name="vllm:gpu_cache_usage_perc")
    assert signal.parse(text, VLLM, at=0).kv_cache_usage == 0.25


def test_parse_sglang_and_tgi() -> None:
    sglang = signal.parse(SGLANG_SAMPLE, signal.names_for("sglang"), at=0)
    assert (sglang.waiting, sglang.running, sglang.kv_cache_usage) == (7, 12, 0.42)
    assert histogram.bucket_quantile(0.9, sglang.ttft) == pytest.approx(0.5 + 0.5 * 6 / 10)
    tgi = signal.parse(TGI_SAMPLE, signal.names_for("tgi"), at=0)
    assert (tgi.waiting, tgi.running, tgi.requests, tgi.ttft) == (5, 3, 11, ())


def test_custom_names_replace_the_runtime_s() -> None:
    names = signal.names_for("custom", ServingMetrics(requests_waiting="my_queue", requests_running="my_busy"))
    reading = signal.parse("# TYPE my_queue gauge\nmy_queue 4\n# TYPE my_busy gauge\nmy_busy 2\n", names, at=0)
    assert (reading.waiting, reading.running) == (4, 2)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("<html>502 Bad Gateway</html>", "unparsable"),
        ("vllm:num_requests_waiting{engine=0 3\n", "unparsable"),
        ("# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting -1\n", "is -1"),
        ("# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting NaN\n", "is nan"),
        ("# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc 7\n", "not a fraction"),
        ("# TYPE go_goroutines gauge\ngo_goroutines 12\n", "none of the runtime's metrics"),
        ('vllm:time_to_first_token_seconds_bucket{le="1.0"} 3\n', r"no \+Inf bucket"),
    ],
)
def test_garbage_is_a_problem_not_a_crash(text: str, why: str) -> None:
    with pytest.raises(signal.BadMetrics, match=why):
        signal.parse(text, VLLM, at=0)


# ------------------------------------------------------------------------------------------ two readings → one


def _read(at: float, **kw: object) -> signal.PodReading:
    return signal.parse(vllm_text(**kw), VLLM, at=at)  # type: ignore[arg-type]


def test_figures_from_two_scrapes() -> None:
    before = {"a": _read(0, success=100, ttft=[0.05] * 100), "b": _read(0, success=50, ttft=[0.05] * 50)}
    now = {
        # a: 10 more requests, 9 fast and 1 at 1.2 s; b: 10 more, all at 0.9 s.
        "a": _read(10, waiting=4, running=6, kv=0.6, success=110, ttft=[0.05] * 109 + [1.2]),
        "b": _read(10, waiting=2, running=2, kv=0.2, success=60, ttft=[0.05] * 50 + [0.9] * 10),
    }
    got = signal.figures(before, now, replicas=2, window_seconds=10)
    assert (got.reporting, got.waiting, got.running) == (2, 6, 8)
    assert got.kv_cache_usage == pytest.approx(0.4)
    assert got.requests_per_second == pytest.approx(2.0)
    assert histogram.total(got.ttft_buckets) == 20
    # 20 first tokens: 9 ≤ 0.06 s, 10 in (0.75, 1.0], 1 in (1.0, 2.5]; rank 18 lies in (0.75, 1.0].
    assert got.ttft_p90_seconds == pytest.approx(0.75 + 0.25 * (18 - 9) / 10)


def test_restart_counts_from_zero_and_problems_do_not_report() -> None:
    before = {"a": _read(0, success=500, ttft=[0.05] * 500)}
    now: dict[str, signal.PodReading | str] = {
        "a": _read(10, success=5, ttft=[2.0] * 5),  # restarted: counters went down
        "b": "TimeoutError reading http://10.244.0.7:8000/metrics",
    }
    got = signal.figures(before, now, replicas=2, window_seconds=10)
    assert got.reporting == 1
    assert got.requests_per_second == pytest.approx(0.5)
    assert histogram.total(got.ttft_buckets) == 5
    assert got.problems == ["b: TimeoutError reading http://10.244.0.7:8000/metrics"]


def test_first_scrape_gives_gauges_only() -> None:
    got = signal.figures({}, {"a": _read(0, waiting=3, success=7, ttft=[0.1])}, replicas=1, window_seconds=10)
    assert (got.waiting, got.requests_per_second, got.ttft_buckets) == (3, None, [])


def test_a_load_observation_with_its_histogram_survives_the_wire_and_the_store() -> None:
    from datetime import UTC, datetime

    from api.events import LoadObserved, decode_event, encode_event

    at = datetime(2030, 1, 1, tzinfo=UTC)
    event = LoadObserved(
        event_id="x",
        cluster="a100",
        origin_cluster="cpu",
        namespace="team",
        name="big",
        window_seconds=10,
        replicas=1,
        reporting=1,
        ttft_buckets=[(0.5, 3.0), (INF, 4.0)],
        observed_at=at,
    )
    assert decode_event(encode_event(event)) == event
    # The store keeps payloads (store.recorder.payload_json) as JSONB, which has no Infinity either.
    assert json.loads(event.model_dump_json())["ttft_buckets"][-1] == ["Infinity", 4.0]
