"""The web dashboard in a real browser (the machine's Chromium, driven by Playwright) against the real fleet and
operator: the Fleet page's numbers are the SQL views', a deployment applied with kubectl appears with its
placement and decision reasons without a reload, a failover shows on its timeline, and hostile strings from the
store render as text (no script runs).

The dashboard is the real command (`llm-operator dashboard`), started on the test's database and logged in as the
read-only role `--grant` makes. Screenshots of each page go to $LLMOP_DASHBOARD_SCREENSHOTS (or the test's tmp
dir).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
from playwright.async_api import Browser, Page, async_playwright
from playwright.async_api import expect as pw_expect

from api.events import (
    ClusterJoined,
    ClusterVerdict,
    PlacementDecided,
    deterministic_id,
)
from store import recorder
from store.browse import role_url
from store.engine import open_engine
from store.projections import fold
from store.reports import open_reports
from tests import builders
from tests.e2e.test_placement import deployment, model
from tests.fixtures.operator import Kubectl, RunningOperator, eventually
from tests.fixtures.services import Hub

pytestmark = [pytest.mark.anyio]

CHROMIUM = Path("/usr/bin/chromium")
TIMEOUT_MS = 20_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llm_operator", *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    where = Path(os.environ.get("LLMOP_DASHBOARD_SCREENSHOTS") or tmp_path / "screenshots")
    where.mkdir(parents=True, exist_ok=True)
    return where


@asynccontextmanager
async def dashboard(hub: Hub, *, token: str | None = None) -> AsyncIterator[str]:
    """`llm-operator dashboard` on the hub's database, as a read-only role made by `--grant`; yields its URL."""
    role = f"dash_{hub.database}"
    # Off the event loop: the operator of the test runs on it (its heartbeats must not stall).
    granted = await anyio.to_thread.run_sync(
        lambda: _cli("dashboard", "--database-url", hub.database_url, "--grant", role)
    )
    assert granted.returncode == 0, granted.stderr
    url = granted.stdout.strip().splitlines()[-1]
    assert url == role_url(hub.database_url, role, password=None)
    port = _free_port()
    env = {**os.environ, "LLMOP_DASHBOARD_DATABASE_URL": url}
    env.pop("LLMOP_DATABASE_URL", None)
    if token:
        env["LLMOP_DASHBOARD_TOKEN"] = token
    log = Path(tempfile.mkdtemp(prefix="llmop-dashboard-")) / "dashboard.log"
    with log.open("w") as output:
        process = subprocess.Popen(  # noqa: ASYNC220 - started once, never waited on here
            [sys.executable, "-m", "llm_operator", "dashboard", "--port", str(port)],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=2) as r:
                return bool(r.status == 200)
        except urllib.error.HTTPError as exc:
            return exc.code == 401  # up, and asking for the token
        except OSError:
            return False

    try:
        deadline = time.monotonic() + 60
        while not await anyio.to_thread.run_sync(answers):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"the dashboard did not start: {log.read_text()}")
            await anyio.sleep(0.2)
        try:
            yield base
        except BaseException:
            sys.stderr.write(f"--- the dashboard's output\n{log.read_text()}\n")
            raise
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():  # noqa: ASYNC240 - a stat, once
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does it)")
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=str(CHROMIUM))
        yield b
        await b.close()


async def guarded_page(browser: Browser) -> tuple[Page, list[str]]:
    """A page that records any dialog (alert/confirm/prompt) a script would open."""
    page = await browser.new_page(viewport={"width": 1400, "height": 900})
    dialogs: list[str] = []

    async def on_dialog(dialog: Any) -> None:
        dialogs.append(dialog.message)
        await dialog.dismiss()

    page.on("dialog", on_dialog)
    page.set_default_timeout(TIMEOUT_MS)
    return page, dialogs


async def cell_numbers(page: Page, selector: str) -> dict[tuple[str, str], tuple[int, int, int, int]]:
    rows = await page.locator(f"{selector} tbody tr[data-gpu]").all()
    out = {}
    for row in rows:
        cluster = await row.get_attribute("data-cluster") or ""
        gpu = await row.get_attribute("data-gpu") or ""
        values = [int(await row.locator(f"td.{c}").inner_text()) for c in ("total", "allocated", "reserved", "free")]
        out[(cluster, gpu)] = (values[0], values[1], values[2], values[3])
    return out


@pytest.mark.fleet
@pytest.mark.services
async def test_the_dashboard_shows_the_fleet_a_placement_and_a_failover_live(
    operator: RunningOperator, kubectl: Kubectl, browser: Browser, screenshots: Path
) -> None:
    ns = operator.namespace
    async with dashboard(operator.hub) as base:
        page, dialogs = await guarded_page(browser)

        # Fleet: every cluster with its health; the GPU numbers are report_gpu_capacity's, for the same moment
        # (nothing of ours runs yet, so the view holds still between the two reads).
        await page.goto(f"{base}/fleet")
        for c in operator.members.values():
            await pw_expect(page.locator(f'#clusters tr[data-cluster="{c.name}"] .pill')).to_have_text(
                "Healthy", timeout=TIMEOUT_MS
            )

        async def same_numbers() -> bool:
            await page.reload()
            async with open_reports(operator.hub.database_url) as reports:
                view = await reports.gpu_capacity()
            shown = await cell_numbers(page, "#capacity")
            expected = {(r.cluster, r.gpu_product): (r.total, r.allocated, r.reserved, r.free) for r in view}
            assert expected, "report_gpu_capacity is empty: the fleet's GPU nodes were not observed"
            assert shown == expected
            return True

        await eventually(same_numbers, timeout=30, what="the Fleet page's numbers equal report_gpu_capacity")
        totals = {
            gpu: sum(v[3] for (_, g), v in (await cell_numbers(page, "#capacity")).items() if g == gpu)
            for gpu in {g for _, g in await cell_numbers(page, "#capacity")}
        }
        for gpu, free in totals.items():
            assert int(await page.locator(f'#gpu-types tr[data-gpu="{gpu}"] td.free').inner_text()) == free
        # The node grid's free slots add up to the view's free GPUs, cluster by cluster.
        async with open_reports(operator.hub.database_url) as reports:
            view = await reports.gpu_capacity()
        for cluster in {r.cluster for r in view}:
            slots = await page.locator(
                f'.cluster-grid[data-cluster="{cluster}"] .node:not(.unusable) .slot.free'
            ).count()
            assert slots == sum(r.free for r in view if r.cluster == cluster)
        await page.screenshot(path=str(screenshots / "dashboard-fleet.png"), full_page=True)

        # Deployments: applied with kubectl in the cpu cluster while the page is open; it appears without a reload.
        await page.goto(f"{base}/deployments")
        await page.evaluate("window.__notReloaded = true")
        types = ["NVIDIA-A100-SXM4-80GB", "NVIDIA-H100-80GB-HBM3"]
        await kubectl("cpu", "apply", "-n", ns, "-f", "-", input=model("ha", gpus=2, types=types))
        await kubectl("cpu", "apply", "-n", ns, "-f", "-", input=deployment("ha-chat", "ha", 1))
        a100 = operator.cluster("a100")
        row = page.locator(f'#deployments tr[data-name="ha-chat"][data-namespace="{ns}"]')
        await pw_expect(row.locator("td.clusters")).to_have_text(a100, timeout=60_000)
        assert await page.evaluate("window.__notReloaded") is True
        await page.screenshot(path=str(screenshots / "dashboard-deployments.png"), full_page=True)

        # Its page: the placement, and the decision with a verdict for every cluster and why.
        await row.locator("td.name a").click()
        await pw_expect(page.locator(f'#placements tr[data-cluster="{a100}"] td.replicas')).to_have_text("1")
        verdicts = page.locator("#timeline li.decision").first.locator("table.verdicts")
        await pw_expect(verdicts.locator(f'tr.chosen[data-cluster="{a100}"]')).to_have_count(1)
        passed = verdicts.locator(f'tr.passed[data-cluster="{operator.cluster("cpu")}"] code')
        await pw_expect(passed).not_to_be_empty()
        await page.evaluate("window.__notReloaded = true")

        # Failover: the a100 cluster goes silent; the timeline shows the new decision without a reload.
        await operator.stop("a100")
        mixed = operator.cluster("mixed")
        await pw_expect(page.locator(f'#placements tr[data-cluster="{mixed}"] td.replicas')).to_have_text(
            "1", timeout=60_000
        )
        unhealthy = page.locator(f'#timeline table.verdicts tr[data-cluster="{a100}"] code', has_text="unhealthy")
        await pw_expect(unhealthy.first).to_be_visible(timeout=30_000)
        assert await page.evaluate("window.__notReloaded") is True
        await page.screenshot(path=str(screenshots / "dashboard-deployment.png"), full_page=True)

        # Audit: the log searchable by deployment and type, the reports with their CSV, the fleet as of a moment.
        await page.goto(f"{base}/audit?deployment={ns}/ha-chat&type=PlacementDecided")
        assert await page.locator("#events tbody tr").count() >= 2
        csv_text = await page.evaluate("fetch('/audit/report/placements.csv').then(r => r.text())")
        assert csv_text.splitlines()[0].startswith("origin_cluster") or "," in csv_text.splitlines()[0]
        await page.screenshot(path=str(screenshots / "dashboard-audit.png"), full_page=True)
        # As of now, typed as a person would (a "+00:00" offset in the address included): the fold's capacity is
        # the view's.
        await page.goto(f"{base}/audit?as_of={datetime.now(UTC).isoformat()}")
        await pw_expect(page.locator("#as-of-capacity tbody tr").first).to_be_visible()
        await page.screenshot(path=str(screenshots / "dashboard-audit-as-of.png"), full_page=True)
        assert dialogs == []
        await operator.start_agent("a100")


HOSTILE = '<script>window.__xss=1;alert("xss")</script>'
HOSTILE_IMG = '<img src=x onerror="window.__xss=2;alert(2)">'


def _hostile_events() -> list[Any]:
    now = datetime.now(UTC)
    cluster = "evil<b>x</b>"
    obj = builders.llm_deployment(HOSTILE, "ns<i>", {"modelRef": HOSTILE_IMG, "replicas": 1})
    observed = builders.observed(cluster, "LLMDeployment", obj, at=now)
    decision = PlacementDecided(
        event_id=deterministic_id("hostile-decision"),
        cluster="hub",
        origin_cluster=cluster,
        namespace="ns<i>",
        name=HOSTILE,
        generation=1,
        desired_replicas=1,
        outcome="InsufficientGPU",
        reasons=[HOSTILE_IMG],
        message=HOSTILE,
        epoch=1,
        decided_at=now,
        verdicts=(ClusterVerdict(cluster=cluster, eligible=False, reason="unhealthy", detail=HOSTILE_IMG),),
    )
    joined = ClusterJoined(
        event_id=deterministic_id("hostile-join"), cluster=cluster, labels={"team": HOSTILE_IMG}, at=now
    )
    return [joined, observed, decision]


@pytest.mark.services
async def test_hostile_strings_render_as_text_and_the_token_is_required(
    hub: Hub, browser: Browser, screenshots: Path
) -> None:
    engine = open_engine(hub.database_url)
    try:
        async with engine.begin() as conn:
            await recorder.lock_writers(conn)
            recorded = await recorder.append(conn, [(e, {}) for e in _hostile_events()])
            for r in recorded:
                await recorder.apply_ops(conn, fold(r.event))
            await recorder.dead_letter(
                conn, consumer="planner", subject="x.events", stream_sequence=7, reason=HOSTILE, raw=HOSTILE.encode()
            )
    finally:
        await engine.dispose()

    async with dashboard(hub, token="s3cret-token") as base:
        page, dialogs = await guarded_page(browser)
        response = await page.goto(f"{base}/fleet")
        assert response is not None and response.status == 401
        await page.goto(f"{base}/fleet?token=s3cret-token")  # trades the token for a cookie
        assert "token" not in page.url
        await pw_expect(page.locator("#clusters")).to_contain_text("evil<b>x</b>")
        await pw_expect(page.locator("#clusters")).to_contain_text(HOSTILE_IMG)
        await page.goto(f"{base}/deployments")
        await pw_expect(page.locator("#deployments")).to_contain_text(HOSTILE)
        await pw_expect(page.locator("#deployments")).to_contain_text(HOSTILE_IMG)
        await page.locator("#deployments td.name a").first.click()
        await pw_expect(page.locator("#deployment-name")).to_have_text(f"ns<i>/{HOSTILE}")
        await pw_expect(page.locator("#timeline")).to_contain_text(HOSTILE)
        await pw_expect(page.locator("#timeline")).to_contain_text(HOSTILE_IMG)
        await page.screenshot(path=str(screenshots / "hostile-deployment.png"), full_page=True)
        await page.goto(f"{base}/audit")
        await pw_expect(page.locator("#dead-letters")).to_contain_text(HOSTILE)
        await pw_expect(page.locator("#events")).to_contain_text("evil<b>x</b>")
        # Nothing ran: no dialog opened, no flag set, and the markup holds no element made of tenant text.
        assert dialogs == []
        assert await page.evaluate("window.__xss") is None
        assert await page.locator("#content script, #content img, #content b, #content i").count() == 0
        # The dashboard is read-only all the way down: its role cannot write, whatever it is asked.
        denied = await page.evaluate("fetch('/fleet', {method: 'POST'}).then(r => r.status)")
        assert denied == 405


def test_refuses_a_public_address_without_access_control() -> None:
    result = _cli("dashboard", "--host", "0.0.0.0", "--database-url", "postgresql://nobody@127.0.0.1:1/x")
    assert result.returncode != 0
    assert "refusing to serve on 0.0.0.0" in result.stdout + result.stderr
