"""The fleet autoscaler's rules, one table per rule (planner/autoscale.py)."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from api.events import LoadObserved
from api.models import Autoscaling, AutoscalingTarget
from planner.autoscale import History, decide
from tests.metrics_text import VLLM_TTFT_BUCKETS

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def spec(
    *,
    ttft: int | None = None,
    queue: int | None = None,
    rps: int | None = None,
    low: int = 1,
    high: int = 20,
    up: int = 0,
    down: int = 300,
) -> Autoscaling:
    return Autoscaling(
        min_replicas=low,
        max_replicas=high,
        target=AutoscalingTarget(time_to_first_token_p90_ms=ttft, queue_depth=queue, requests_per_second=rps),
        scale_up_stabilization_seconds=up,
        scale_down_stabilization_seconds=down,
    )


def buckets(values: Sequence[float]) -> list[tuple[float, float]]:
    bounds = [*VLLM_TTFT_BUCKETS, math.inf]
    return [(b, float(sum(v <= b for v in values))) for b in bounds]


def load(
    cluster: str = "a100",
    *,
    at: datetime = T0,
    replicas: int = 2,
    reporting: int | None = None,
    waiting: float | None = None,
    running: float | None = 0,
    rps: float | None = None,
    ttft: Sequence[float] | None = None,
    problems: Sequence[str] = (),
) -> LoadObserved:
    return LoadObserved(
        event_id=f"{cluster}-{at.isoformat()}",
        cluster=cluster,
        origin_cluster="cpu",
        namespace="default",
        name="chat",
        window_seconds=10,
        replicas=replicas,
        reporting=replicas if reporting is None else reporting,
        waiting=waiting,
        running=running,
        requests_per_second=rps,
        ttft_buckets=buckets(ttft) if ttft is not None else [],
        problems=list(problems),
        observed_at=at,
    )


def settled(current: int, at: datetime = T0 - timedelta(hours=1)) -> History:
    """A history with no recent recommendation (as if the autoscaler had been watching quietly for long)."""
    return History(recommendations=((at, current),))


# ------------------------------------------------------------------------------------------ ratio and tolerance


@pytest.mark.parametrize(
    ("waiting", "current", "expected"),
    [
        (16, 2, 2),  # 8 per replica = target
        (17.5, 2, 2),  # ratio 1.09: within the 10 % tolerance
        (18, 2, 3),  # ratio 1.125 → ceil(2 × 1.125) = 3
        (40, 2, 5),  # ratio 2.5 → 5
        (14.5, 2, 2),  # ratio 0.906: within tolerance
        (4, 4, 1),  # ratio 0.125 → ceil(0.5) = 1
    ],
)
def test_queue_target_ratio_and_tolerance(waiting: float, current: int, expected: int) -> None:
    got = decide(spec(queue=8), current, [load(replicas=current, waiting=waiting)], settled(current), T0)
    assert got.desired == expected, got.reason


@pytest.mark.parametrize(
    ("values", "current", "expected"),
    [
        ([0.7] * 10, 2, 2),  # p90 = 0.5 + 0.25 × 9/10 = 725 ms: ratio 0.91, within tolerance
        ([0.05] * 8 + [1.4] * 2, 2, 5),  # p90 = 1.0 + 1.5 × (9 − 8)/2 = 1.75 s: ratio 2.19 → ceil(4.38) = 5
        ([2.0] * 10, 2, 6),  # p90 = 1.0 + 1.5 × 0.9 = 2.35 s: ratio 2.94 → 6 (within max(2×2, 2+4))
        ([0.01] * 10, 4, 1),  # p90 = 9.5 ms: ratio 0.012 → 1
    ],
)
def test_ttft_target(values: list[float], current: int, expected: int) -> None:
    got = decide(spec(ttft=800), current, [load(replicas=current, ttft=values)], settled(current), T0)
    assert got.desired == expected, got.reason


def test_the_largest_proposal_wins() -> None:
    got = decide(spec(ttft=800, queue=8), 2, [load(waiting=40, ttft=[0.05] * 20)], settled(2), T0)
    assert got.desired == 5
    assert got.metrics["queueDepth"]["proposal"] == 5 and got.metrics["timeToFirstTokenP90Ms"]["proposal"] < 2


def test_the_fleet_p90_comes_from_summed_buckets_not_averaged_quantiles() -> None:
    # a100: 10 slow first tokens; mixed: 90 fast. Averaging per-cluster p90s would say ≈ 1.2 s; the fleet's
    # p90 lies at the boundary of the fast ones.
    loads = [load("a100", replicas=1, ttft=[2.0] * 10), load("mixed", replicas=1, ttft=[0.05] * 90)]
    got = decide(spec(ttft=800), 2, loads, settled(2), T0)
    assert got.metrics["timeToFirstTokenP90Ms"]["value"] == pytest.approx(60.0)


# ------------------------------------------------------------------------------------------ missing metrics


def test_nothing_reported_changes_nothing_and_says_so() -> None:
    got = decide(spec(queue=8), 4, [], settled(4), T0)
    assert (got.desired, got.metrics_available) == (4, False)
    assert "no metric available" in got.reason


def test_a_missing_metric_blocks_scale_down_of_the_others() -> None:
    # Queue says 1 replica is plenty; TTFT is missing (only 2 first tokens): no scale-down.
    got = decide(spec(ttft=800, queue=8), 4, [load(replicas=4, waiting=0, running=3, ttft=[0.1] * 2)], settled(4), T0)
    assert got.desired == 4 and not got.metrics_available
    assert any("fewer than" in m for m in got.missing)


def test_a_missing_metric_does_not_block_scale_up() -> None:
    got = decide(spec(ttft=800, queue=8), 2, [load(waiting=40, running=3, ttft=[])], settled(2), T0)
    assert got.desired == 5


def test_replicas_not_reporting_count_as_at_target_for_scale_down() -> None:
    # 4 replicas, 2 report an empty queue, 2 are still starting: HPA counts the silent ones at 100 % of target.
    got = decide(spec(queue=8), 4, [load(replicas=4, reporting=2, waiting=0)], settled(4), T0)
    assert got.desired == 2  # (0 + 2 × 8) / (4 × 8) = 0.5 → 2, never 1


@pytest.mark.parametrize(
    "problems",
    [
        ["pod-c: TimeoutError reading http://10.244.0.7:8080/metrics"],
        ["pod-d: unparsable metrics text: ValueError: ..."],
        ["pod-c: TimeoutError", "pod-d: HTTP 500"],
    ],
)
def test_a_replica_whose_metrics_cannot_be_read_blocks_any_scale_down(problems: list[str]) -> None:
    # The others are idle, but the one that times out or answers nonsense may be the busiest: hold, and say so.
    loads = [load(replicas=4, reporting=4 - len(problems), waiting=0, problems=problems)]
    got = decide(spec(queue=8), 4, loads, settled(4), T0)
    assert got.desired == 4 and not got.metrics_available
    assert set(problems) <= set(got.missing)
    assert "scale-down held: metrics missing" in got.limits


def test_a_replica_whose_metrics_cannot_be_read_does_not_block_scale_up() -> None:
    loads = [load(replicas=2, reporting=1, waiting=40, problems=["pod-b: HTTP 503"])]
    assert decide(spec(queue=8), 2, loads, settled(2), T0).desired == 5


def test_replicas_not_reporting_count_as_zero_for_scale_up() -> None:
    loads = [load(replicas=4, reporting=2, waiting=40)]
    got = decide(spec(queue=8), 4, loads, settled(4), T0)
    assert got.desired == 5  # 40 / (4 × 8) = 1.25 → 5 (not 40 / (2 × 8) → 10)


def test_slow_ttft_with_unready_replicas_does_not_block_scale_down_only() -> None:
    got = decide(spec(ttft=800), 4, [load(replicas=4, reporting=2, ttft=[0.01] * 20)], settled(4), T0)
    assert got.desired == 4  # a fast p90 from half the replicas is not enough to give GPUs back


def test_idle_fleet_may_scale_down() -> None:
    got = decide(spec(ttft=800, low=1), 3, [load(replicas=3, waiting=0, running=0, ttft=[])], settled(3), T0)
    assert got.desired == 1 and got.metrics_available
    # ... but not on the account of replicas that did not report.
    silent = [load(replicas=3, reporting=2, waiting=0, running=0, ttft=[], problems=["c: TimeoutError"])]
    assert decide(spec(ttft=800, low=1), 3, silent, settled(3), T0).desired == 3


def test_stale_observations_do_not_count() -> None:
    old = load(at=T0 - timedelta(minutes=5), waiting=100)
    got = decide(spec(queue=8), 2, [old], settled(2), T0)
    assert got.desired == 2 and "no recent load from a100" in got.missing


# ------------------------------------------------------------------------------------------ stabilisation


def test_scale_down_waits_for_the_whole_window() -> None:
    # Load was high until t=0 (the autoscaler recommended 6 then), and is low from then on.
    history = History(recommendations=((T0, 6),))
    decisions = []
    for second in range(15, 330, 15):
        now = T0 + timedelta(seconds=second)
        got = decide(spec(queue=8, down=300), 6, [load(at=now, replicas=6, waiting=8)], history, now)
        history = History(got.history.recommendations)
        decisions.append((second, got.desired))
    assert all(d == 6 for s, d in decisions if s < 300), decisions
    assert all(d == 1 for s, d in decisions if s >= 300), decisions


def test_scale_up_window_takes_the_lowest_recent_recommendation() -> None:
    history = History(recommendations=((T0 - timedelta(seconds=30), 3),))
    got = decide(spec(queue=8, up=60), 2, [load(waiting=80)], history, T0)
    assert got.desired == 3 and any("scale-up window" in limit for limit in got.limits)


def test_a_new_leader_does_not_scale_down_before_one_window() -> None:
    got = decide(spec(queue=8, down=300), 6, [load(replicas=6, waiting=0)], None, T0)
    assert got.desired == 6
    later = decide(spec(queue=8, down=300), 6, [load(replicas=6, waiting=0, at=T0 + timedelta(seconds=301))],
                   History(recommendations=got.history.recommendations), T0 + timedelta(seconds=301))  # fmt: skip
    assert later.desired == 1


def test_no_flapping_under_noise() -> None:
    rng = random.Random(7)
    current, history, changes = 4, settled(4), 0
    for step in range(400):  # 100 minutes of ±8 % noise around the target
        now = T0 + timedelta(seconds=15 * step)
        waiting = 4 * 8 * (1 + rng.uniform(-0.08, 0.08))
        got = decide(spec(queue=8), current, [load(at=now, replicas=current, waiting=waiting)], history, now)
        history = got.history if not got.waiting else history
        if got.changed:
            changes += 1
            current = got.desired
            history = History(got.history.recommendations, got.history.scale_events)  # /scale landed
    assert changes == 0


def test_no_flapping_with_noise_beyond_tolerance() -> None:
    # ±25 % noise: it may scale up on a spike, but it never goes back and forth every few minutes.
    rng = random.Random(11)
    current, history, changes = 4, settled(4), []
    for step in range(400):
        now = T0 + timedelta(seconds=15 * step)
        waiting = 4 * 8 * (1 + rng.uniform(-0.25, 0.25))
        got = decide(spec(queue=8), current, [load(at=now, replicas=current, waiting=waiting)], history, now)
        history = got.history
        if got.changed:
            changes.append((step, current, got.desired))
            current = got.desired
            history = History(got.history.recommendations, got.history.scale_events)
    downs = [c for c in changes if c[2] < c[1]]
    assert len(changes) <= 3, changes
    assert all(b[0] - a[0] >= 20 for a, b in itertools.pairwise(downs)), changes


# ------------------------------------------------------------------------------------------ limits


def test_scale_up_rate_limit_max_of_double_and_plus_four() -> None:
    got = decide(spec(queue=1, high=100), 2, [load(waiting=100)], settled(2), T0)
    assert got.desired == 6 and any("rate limit" in limit for limit in got.limits)  # max(2×2, 2+4)
    got = decide(spec(queue=1, high=100), 10, [load(replicas=10, waiting=1000)], settled(10), T0)
    assert got.desired == 20  # max(2×10, 10+4)


def test_scale_up_rate_limit_counts_recent_changes() -> None:
    history = History(recommendations=((T0 - timedelta(hours=1), 6),), scale_events=((T0 - timedelta(seconds=5), 4),))
    got = decide(spec(queue=1, high=100), 6, [load(replicas=6, waiting=100)], history, T0)
    assert got.desired == 6  # the period started at 2 replicas: at most 6 within 15 s


@pytest.mark.parametrize(("waiting", "expected"), [(1000, 8), (0, 2)])
def test_min_and_max(waiting: float, expected: int) -> None:
    got = decide(spec(queue=8, low=2, high=8), 4, [load(replicas=4, waiting=waiting)], settled(4), T0)
    assert got.desired == expected


def test_waits_for_scale_to_land() -> None:
    first = decide(spec(queue=8), 2, [load(waiting=40)], settled(2), T0)
    assert first.desired == 5
    # spec.replicas still says 2 ten seconds later: no second decision on the same load.
    again = decide(spec(queue=8), 2, [load(waiting=40, at=T0 + timedelta(seconds=10))], first.history,
                   T0 + timedelta(seconds=10))  # fmt: skip
    assert again.waiting and not again.changed
    landed = decide(spec(queue=8), 5, [load(replicas=5, waiting=40, at=T0 + timedelta(seconds=20))], first.history,
                    T0 + timedelta(seconds=20))  # fmt: skip
    assert not landed.waiting


def test_reason_reads_like_a_postmortem() -> None:
    got = decide(spec(ttft=800), 2, [load(ttft=[0.05] * 8 + [1.4] * 2)], settled(2), T0)
    assert got.reason == "2 → 5: TTFT p90 1.75 s > 800 ms on a100 over 10 s"


def test_no_scale_down_during_a_failover() -> None:
    got = decide(spec(queue=8), 4, [load(replicas=4, waiting=0)], settled(4), T0, hold_scale_down="failing over")
    assert got.desired == 4 and "scale-down held: failing over" in got.limits
    up = decide(spec(queue=8), 4, [load(replicas=4, waiting=80)], settled(4), T0, hold_scale_down="failing over")
    assert up.desired == 8  # scaling up is never held


def test_the_planner_forgets_deployments_nobody_reports() -> None:
    from planner.scaling import AutoscalerMemory

    memory = AutoscalerMemory()
    key = memory.note(load(at=T0))
    memory.history[key] = settled(2)
    memory.prune(T0 + timedelta(minutes=30))
    assert key in memory.loads and key in memory.history
    memory.prune(T0 + timedelta(hours=2))
    assert key not in memory.loads and key not in memory.history
