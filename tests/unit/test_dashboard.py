"""The dashboard's pure shaping (dashboard/views.py) and its web layer (dashboard/app.py) over a stub store:
access control, read-only, escaping, security headers. The real store and browser: tests/e2e/test_dashboard.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import anyio
import httpx
import pytest

from api.events import ClusterShare, LoadObserved, PlacementDecided, ScaleDecided
from api.network import ClusterNetwork
from dashboard import views
from dashboard.app import SECURITY_HEADERS, create_app
from store.browse import DeploymentListRow, DeploymentPage, NodeGpus
from store.reader import StoredEvent
from store.reports import ClusterRow, GpuCapacityRow, ReportTable

T0 = datetime(2026, 12, 2, 4, 0, tzinfo=UTC)
HOSTILE = '<script>alert("x")</script>'


def cap(cluster: str, product: str, total: int, allocated: int, reserved: int, free: int) -> GpuCapacityRow:
    return GpuCapacityRow(cluster, product, Decimal("80.0"), 2, total, allocated, reserved, free, 0, 0)


def node(cluster: str, name: str, allocatable: int, allocated: int, reserved: int, *, usable: bool = True) -> NodeGpus:
    free = max(allocatable - allocated - reserved, 0)
    return NodeGpus(cluster, name, "A100", Decimal("80.0"), allocatable, allocated, reserved, free, usable)


def test_totals_by_type_are_the_capacity_rows_summed_over_clusters() -> None:
    totals = views.totals_by_type(
        [cap("a", "A100", 16, 4, 2, 10), cap("b", "A100", 8, 0, 0, 8), cap("b", "H100", 8, 8, 0, 0)]
    )
    assert [(t.gpu_product, t.clusters, t.total, t.allocated, t.reserved, t.free) for t in totals] == [
        ("A100", 2, 24, 4, 2, 18),
        ("H100", 1, 8, 8, 0, 0),
    ]


def test_the_node_grid_shows_fragmentation_and_leaves_unusable_nodes_out_of_free() -> None:
    # 8 free in sum, but no node with more than 2: "8 free, largest 2".
    rows = [node("a", f"n{i}", 8, 6, 0) for i in range(4)] + [node("a", "down", 8, 0, 0, usable=False)]
    (grid,) = views.node_grid(rows)
    assert (grid.free, grid.largest_free) == (8, 2)
    assert grid.nodes[0].slots == ["allocated"] * 6 + ["free"] * 2
    assert grid.nodes[-1].slots == []  # an unusable node offers nothing


def test_overcommitted_reservations_are_clamped_to_the_nodes_size() -> None:
    (grid,) = views.node_grid([node("a", "n", 4, 3, 5)])
    assert len(grid.nodes[0].slots) == 4


def stored(event: Any, position: int) -> StoredEvent:
    return StoredEvent(position, "s", position, T0, {}, event)


def decision(at: datetime, outcome: str = "Placed") -> PlacementDecided:
    return PlacementDecided(
        event_id=f"d{at.timestamp()}",
        cluster="hub",
        origin_cluster="cpu",
        namespace="ns",
        name="x",
        generation=1,
        desired_replicas=1,
        outcome=outcome,  # type: ignore[arg-type]
        shares=[ClusterShare(cluster="a100", replicas=1, role="retiring"), ClusterShare(cluster="m", replicas=1)],
        epoch=1,
        decided_at=at,
    )


def test_the_timeline_is_newest_first_and_marks_failures_and_roles() -> None:
    items = views.timeline([stored(decision(T0), 1), stored(decision(T0 + timedelta(seconds=5), "InsufficientGPU"), 2)])
    assert [i.at for i in items] == [T0 + timedelta(seconds=5), T0]
    assert items[0].failed and not items[1].failed
    assert "a100×1 (retiring)" in items[1].title


def load(at: datetime, rps: float, replicas: int, cluster: str = "a") -> LoadObserved:
    return LoadObserved(
        event_id=f"l{at.timestamp()}{cluster}",
        cluster=cluster,
        origin_cluster="cpu",
        namespace="ns",
        name="x",
        window_seconds=10,
        replicas=replicas,
        reporting=replicas,
        requests_per_second=rps,
        ttft_p90_seconds=0.5,
        observed_at=at,
    )


def test_the_load_chart_sums_clusters_per_sample_and_marks_scaling_decisions() -> None:
    assert views.load_chart([], []).samples == 0
    loads = [load(T0, 1.0, 1), load(T0, 2.0, 1, "b"), load(T0 + timedelta(seconds=10), 6.0, 3)]
    scale = ScaleDecided(
        event_id="s",
        cluster="hub",
        origin_cluster="cpu",
        namespace="ns",
        name="x",
        generation=1,
        from_replicas=2,
        to_replicas=3,
        reason="load",
        epoch=1,
        decided_at=T0 + timedelta(seconds=5),
    )
    chart = views.load_chart(loads, [scale], width=100, height=50)
    rps = next(s for s in chart.series if s.css == "rps")
    assert chart.samples == 2 and rps.peak == 6.0 and rps.last == 6.0
    assert rps.points.split()[0] == "0.0,25.0"  # 3 of a peak of 6: half way up the 4..46 band
    assert chart.scale_marks == (50.0,)


# ------------------------------------------------------------------------------------------- the web layer


class StubBrowse:
    """What the app asks of `store.browse.Browse`, with hostile strings in every tenant field."""

    async def head(self) -> int:
        return 42

    async def clusters(self) -> list[ClusterRow]:
        return [ClusterRow(HOSTILE, {"team": HOSTILE}, False, HOSTILE, T0, T0, T0)]

    async def cluster_networks(self) -> dict[str, ClusterNetwork]:
        return {HOSTILE: ClusterNetwork(mode="exposed", pod_cidrs=["10.244.0.0/16"])}

    async def gpu_capacity(self) -> list[GpuCapacityRow]:
        return [cap(HOSTILE, "A100", 8, 0, 0, 8)]

    async def node_gpus(self) -> list[NodeGpus]:
        return [node(HOSTILE, HOSTILE, 8, 0, 0)]

    async def deployment_page(self, **_: Any) -> DeploymentPage:
        row = DeploymentListRow("cpu", "ns", HOSTILE, 1, 0, None, (HOSTILE,), ("A100",), HOSTILE)
        return DeploymentPage((row,), 1)

    async def deployment_origins_and_statuses(self) -> tuple[list[str], list[str]]:
        return [HOSTILE], [HOSTILE]

    async def deployment(self, *_: Any) -> None:
        return None

    async def history(self, *_: Any, **__: Any) -> list[StoredEvent]:
        return []

    async def log(self, **_: Any) -> list[Any]:
        return []

    async def dead_letters(self, *, limit: int) -> list[Any]:
        return []

    async def report(self, view: str, *, limit: int | None = None) -> ReportTable:
        return ReportTable(("a", "b"), ((HOSTILE, 1),))


class Client:
    """Requests to the app in process (httpx's ASGI transport), one event loop per request, cookies kept."""

    def __init__(self, **options: Any) -> None:
        self.app = create_app(browse=StubBrowse(), capacity_as_of=lambda state: [], **options)  # type: ignore[arg-type]
        self.cookies = httpx.Cookies()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", cookies=self.cookies) as c:
                response = await c.request(method, path, **kwargs)
                self.cookies.update(c.cookies)
                return response

        return anyio.run(go)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)


def client(**options: Any) -> Client:
    return Client(**options)


@pytest.mark.parametrize("path", ["/fleet", "/deployments", "/audit", "/deployment?origin=a&namespace=b&name=c"])
def test_every_page_escapes_tenant_strings_and_sends_the_security_headers(path: str) -> None:
    response = client().get(path)
    assert response.status_code in (200, 404)
    assert "<script>alert" not in response.text
    assert HOSTILE not in response.text
    if path in ("/fleet", "/deployments"):
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in response.text
    assert response.headers["content-security-policy"] == SECURITY_HEADERS["Content-Security-Policy"]
    assert "script-src 'self'" in response.headers["content-security-policy"]


def test_the_fleet_page_says_how_each_cluster_is_reached() -> None:
    text = client().get("/fleet").text
    assert '<td class="network">exposed (10.244.0.0/16)</td>' in text


def test_csv_is_every_row_of_the_view() -> None:
    response = client().get("/audit/report/placements.csv")
    assert response.text.splitlines() == ["a,b", f'"{HOSTILE.replace(chr(34), chr(34) * 2)}",1']
    assert client().get("/audit/report/nope.csv").status_code == 404


def test_writes_are_refused() -> None:
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        assert client().request(method, "/fleet").status_code == 405


def test_a_token_is_required_and_traded_for_a_cookie_once() -> None:
    c = client(token="t0k3n")
    assert c.get("/fleet").status_code == 401
    assert c.get("/api/head").status_code == 401
    assert c.get("/fleet", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert c.get("/fleet", headers={"Authorization": "Bearer t0k3n"}).status_code == 200
    assert c.get("/fleet?token=wrong").status_code == 401
    first = c.get("/deployments?token=t0k3n&search=a")
    assert first.status_code == 303
    assert first.headers["location"] == "/deployments?search=a"  # the token leaves the address
    cookie = first.headers["set-cookie"]
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
    assert c.get("/api/head").json() == {"head": 42}  # the cookie now


def test_a_trusted_proxy_header_passes_and_names_the_user() -> None:
    c = client(trusted_header="X-Forwarded-User")
    assert c.get("/fleet").status_code == 401
    response = c.get("/fleet", headers={"X-Forwarded-User": HOSTILE})
    assert response.status_code == 200
    assert HOSTILE not in response.text  # the user's name is escaped too


def test_static_assets_ship_in_the_package_and_need_no_token() -> None:
    c = client(token="t0k3n")
    script = c.get("/static/dashboard.js")
    assert script.status_code == 200 and "/api/head" in script.text
    assert c.get("/static/dashboard.css").status_code == 200
