"""The dashboard's web application: server-rendered pages over the store's reads, and one small JSON endpoint.

Guarantees:
- Read-only: it is given a `store.browse.Browse` (whose transactions are READ ONLY) and answers GET/HEAD only;
  it never talks to NATS or to a Kubernetes API.
- Every tenant string is escaped: templates are rendered by a Jinja2 environment with autoescape on for every
  file, and nothing passes strings through `|safe` or `Markup`. The Content-Security-Policy allows scripts from
  the dashboard's own /static only (no inline script), a second wall should a string ever slip through.
- Access: with an access token, a request passes only with `Authorization: Bearer <token>`, or the cookie the
  dashboard sets after one visit with `?token=<token>`; with a trusted header (set by an authenticating reverse
  proxy), a request carrying that header passes. With neither, every request passes (the CLI only allows that on
  a loopback address). Tokens are compared in constant time; static files need no access.
- Live: `/api/head` answers the log's head position; the page's script polls it (about every second) and, when
  it moves, fetches the page again and swaps its content in place, so changes show within ~2 s without a reload.
"""

from __future__ import annotations

import csv
import hmac
import io
import json
import typing
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from api.events import Event
from dashboard import views
from store.browse import Browse
from store.memory import MemoryTables, collection_paused
from store.reports import VIEWS

HERE = Path(__file__).parent
COOKIE = "llmop_dashboard"
EVENT_TYPES: tuple[str, ...] = tuple(
    sorted(typing.get_args(t.model_fields["type"].annotation)[0] for t in typing.get_args(typing.get_args(Event)[0]))
)
"""Every event type of the vocabulary, for the audit page's type filter."""
PAGE_SIZE = 200
LOG_PAGE = 100
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}

CapacityAsOf = Callable[[MemoryTables], list[dict[str, Any]]]
AS_OF_TABLES = ("clusters", "nodes", "pods", "placements")
"""The projections the "as of" view reads: clusters, the capacity rule's inputs (`capacity_as_of`) and placements.
(Not the deployments' specs: decoding them from a snapshot took longer than the rest of the view together.)"""
"""The GPU capacity rows (as `report_gpu_capacity` gives them) of projections folded in memory; the composition
root passes the planner's rule (`llm_operator.audit`), the one `history --as-of` uses."""


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every template, whatever its extension
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["ago"] = _ago
    env.filters["ts"] = _ts
    env.filters["json"] = lambda v: json.dumps(v, sort_keys=True, default=str)
    return env


def _ts(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if value else "—"


def _ago(value: datetime | None) -> str:
    if value is None:
        return "never"
    seconds = (datetime.now(UTC) - value).total_seconds()
    if seconds < 120:
        return f"{max(seconds, 0):.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def _time(value: str | None) -> datetime | None:
    """An ISO 8601 time from a form (`datetime-local` gives no zone: UTC), or None when empty or malformed."""
    if not value:
        return None
    value = value.strip().replace("Z", "+00:00")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        # A "+hh:mm" offset typed into an address arrives as " hh:mm" (a "+" in a query is a space).
        head, _, offset = value.rpartition(" ")
        try:
            parsed = datetime.fromisoformat(f"{head}+{offset}")
        except ValueError:
            return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _int(value: str | None, default: int) -> int:
    try:
        return max(int(value or default), 0)
    except ValueError:
        return default


class _Access(BaseHTTPMiddleware):
    def __init__(self, app: Any, *, token: str | None, trusted_header: str | None) -> None:
        super().__init__(app)
        self.token = token
        self.trusted_header = trusted_header.lower() if trusted_header else None

    def _allowed(self, request: Request) -> bool:
        if self.token is None and self.trusted_header is None:
            return True
        if self.trusted_header is not None and request.headers.get(self.trusted_header):
            return True
        if self.token is not None:
            offered = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            offered = offered or request.cookies.get(COOKIE, "")
            return bool(offered) and hmac.compare_digest(offered.encode(), self.token.encode())
        return False

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        if request.method not in ("GET", "HEAD"):
            return PlainTextResponse("the dashboard is read-only", status_code=405, headers=SECURITY_HEADERS)
        if request.url.path.startswith("/static/"):
            return await call_next(request)
        offered = request.query_params.get("token")
        if self.token is not None and offered is not None:
            if not hmac.compare_digest(offered.encode(), self.token.encode()):
                return PlainTextResponse("wrong token", status_code=401, headers=SECURITY_HEADERS)
            # Trade the token in the address for a cookie, and drop it from the address (history, referrers).
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            target = request.url.path + ("?" + urlencode(rest) if rest else "")
            response: Response = RedirectResponse(target, 303)
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict", path="/")
            return response
        if not self._allowed(request):
            return PlainTextResponse(
                "unauthorized: open the dashboard with ?token=<token> once, or send Authorization: Bearer <token>",
                status_code=401,
                headers=SECURITY_HEADERS,
            )
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response


def create_app(
    *,
    browse: Browse,
    capacity_as_of: CapacityAsOf,
    token: str | None = None,
    trusted_header: str | None = None,
    poll_ms: int = 1000,
) -> Starlette:
    """The dashboard over `browse` (its lifetime is the caller's)."""
    env = _environment()

    def page(request: Request, template: str, *, live: bool = True, **context: Any) -> Response:
        html = env.get_template(template).render(
            request_path=request.url.path,
            user=request.headers.get(trusted_header) if trusted_header else None,
            live=live,
            poll_ms=poll_ms,
            now=datetime.now(UTC),
            **context,
        )
        return Response(html, media_type="text/html; charset=utf-8")

    async def home(request: Request) -> Response:
        return RedirectResponse("/fleet", 303)

    async def fleet(request: Request) -> Response:
        head = await browse.head()
        clusters = await browse.clusters()
        networks = await browse.cluster_networks()
        capacity = await browse.gpu_capacity()
        nodes = await browse.node_gpus()
        return page(
            request,
            "fleet.html",
            head=head,
            clusters=clusters,
            networks=networks,
            capacity=capacity,
            totals=views.totals_by_type(capacity),
            grid=views.node_grid(nodes),
        )

    async def deployments(request: Request) -> Response:
        q = request.query_params
        head = await browse.head()
        filters = {k: q.get(k, "").strip() for k in ("search", "origin", "status", "gpu")}
        offset = _int(q.get("offset"), 0)
        found = await browse.deployment_page(**filters, limit=PAGE_SIZE, offset=offset)
        origins, statuses = await browse.deployment_origins_and_statuses()
        gpu_types = sorted({r.gpu_product for r in await browse.gpu_capacity()})
        return page(
            request,
            "deployments.html",
            head=head,
            found=found,
            filters=filters,
            offset=offset,
            page_size=PAGE_SIZE,
            origins=origins,
            statuses=statuses,
            gpu_types=gpu_types,
        )

    async def deployment(request: Request) -> Response:
        # Query parameters, not path segments: a stored name may hold any character ("/" included).
        p = request.query_params
        origin, namespace, name = p.get("origin", ""), p.get("namespace", ""), p.get("name", "")
        head = await browse.head()
        detail = await browse.deployment(origin, namespace, name)
        events = await browse.history(
            origin,
            namespace,
            name,
            types=["PlacementDecided", "ScaleDecided", "PlanIssued", "ApplyReported", "LoadObserved"],
        )
        loads, scales = views.loads_and_scales(events)
        status = 200 if detail is not None or events else 404
        response = page(
            request,
            "deployment.html",
            head=head,
            origin=origin,
            namespace=namespace,
            name=name,
            d=detail,
            conditions=views.conditions(detail.observed_status) if detail else [],
            timeline=views.timeline(events),
            chart=views.load_chart(loads, scales),
        )
        response.status_code = status
        return response

    async def audit(request: Request) -> Response:
        q = request.query_params
        head = await browse.head()
        search = {
            "since": q.get("since", ""),
            "until": q.get("until", ""),
            "cluster": q.get("cluster", "").strip(),
            "deployment": q.get("deployment", "").strip(),
            "type": q.get("type", ""),
        }
        report_name = q.get("report", "gpu-capacity")
        if report_name not in VIEWS:
            report_name = "gpu-capacity"
        as_of_text = q.get("as_of", "")
        when = _time(as_of_text)
        as_of: dict[str, Any] | None = None
        entries: list[Any] = []
        letters: list[Any] = []
        table: Any = None
        if when is not None:
            # The fleet at a past moment, alone: the log, dead letters and reports are of now (and reading them
            # cost a sixth of the view). Only the tables the view shows: the fold starts from a projection
            # snapshot's few tables.
            with collection_paused():
                state = await browse.as_of(when, names=AS_OF_TABLES)
                placements = state.rows("placements")
                as_of = {
                    "when": when,
                    "clusters": state.rows("clusters"),
                    "capacity": capacity_as_of(state),
                    "placements": placements[:PAGE_SIZE],
                    "placements_total": len(placements),
                    "deployments_placed": len({(p["origin_cluster"], p["namespace"], p["name"]) for p in placements}),
                }
                del state, placements  # freed by reference counting before the collector runs again
        else:
            entries = await browse.log(
                since=_time(search["since"]),
                until=_time(search["until"]),
                cluster=search["cluster"],
                deployment=search["deployment"],
                types=[search["type"]] if search["type"] else None,
                before=_int(q.get("before"), 0) or None,
                limit=LOG_PAGE,
            )
            letters = await browse.dead_letters(limit=50)
            table = await browse.report(report_name, limit=PAGE_SIZE)
        return page(
            request,
            "audit.html",
            # A past moment does not change: no live refresh while looking at one.
            live=as_of is None,
            head=head,
            search=search,
            event_types=EVENT_TYPES,
            entries=entries,
            next_before=entries[-1].position if len(entries) == LOG_PAGE else None,
            letters=letters,
            reports=list(VIEWS),
            report_name=report_name,
            table=table,
            as_of_text=as_of_text,
            as_of_bad=bool(as_of_text) and when is None,
            as_of=as_of,
        )

    async def report_csv(request: Request) -> Response:
        view = request.path_params["view"]
        if view not in VIEWS:
            return PlainTextResponse("unknown report", status_code=404)
        table = await browse.report(view)
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(table.columns)
        writer.writerows(table.rows)
        return Response(
            buffer.getvalue(),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{view}.csv"'},
        )

    async def api_head(request: Request) -> Response:
        return JSONResponse({"head": await browse.head()}, headers={"Cache-Control": "no-store"})

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    routes: list[Route | Mount] = [
        Route("/", home),
        Route("/fleet", fleet),
        Route("/deployments", deployments),
        Route("/deployment", deployment),
        Route("/audit", audit),
        Route("/audit/report/{view}.csv", report_csv),
        Route("/api/head", api_head),
        Route("/healthz", healthz),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(_Access, token=token, trusted_header=trusted_header)],
    )
