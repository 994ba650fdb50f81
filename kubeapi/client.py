"""`Kube`: raw-JSON list, watch, get, server-side apply, status apply and delete against one apiserver.

Guarantees: see the package docstring. A `Kube` wraps one kubernetes_asyncio `ApiClient` (one kubeconfig context
or the in-cluster service account) and is closed by its owner.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.helpers import get_env_proxy_for_url
from kubernetes_asyncio.client import ApiClient
from yarl import URL

from kubeapi.resources import Resource

logger = logging.getLogger(__name__)

APPLY_CONTENT_TYPE = "application/apply-patch+yaml"
MERGE_PATCH_CONTENT_TYPE = "application/merge-patch+json"


class KubeError(Exception):
    """An apiserver answer other than success, or a failure to reach it."""

    def __init__(self, message: str, *, status: int = 0, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class TransientKubeError(KubeError):
    """Worth retrying: the apiserver was unreachable, overloaded (429) or failing (5xx)."""


class NotFound(KubeError):
    """404: the object (or its kind) does not exist."""


class ApiGone(KubeError):
    """410: the resourceVersion to watch from is too old; list again."""


@dataclass(frozen=True)
class WatchEvent:
    type: str  # ADDED, MODIFIED, DELETED, BOOKMARK
    object: dict[str, Any]


class Kube:
    def __init__(self, api: ApiClient, *, name: str) -> None:
        self._api = api
        self.name = name
        _settle_environment(api)

    async def close(self) -> None:
        await self._api.close()

    # -------------------------------------------------------------------------------------------- low level

    async def _request(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, Any] | None = None,
        body: dict[str, Any] | None = None,
        content_type: str = "application/json",
        timeout: float | None = 30,
    ) -> aiohttp.ClientResponse:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        try:
            response: aiohttp.ClientResponse = await self._api.call_api(
                path,
                method,
                query_params=[(k, _q(v)) for k, v in (query or {}).items() if v is not None],
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=timeout,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise TransientKubeError(f"{self.name}: cannot reach the apiserver ({exc or type(exc).__name__})") from exc
        if response.status >= 300:
            await _raise_for(self.name, method, path, response)
        return response

    async def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = await self._request(method, path, **kwargs)
        try:
            data: dict[str, Any] = await response.json(content_type=None)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise TransientKubeError(f"{self.name}: connection lost reading {path}") from exc
        finally:
            response.release()
        return data

    # ------------------------------------------------------------------------------------------------- reads

    async def get(self, resource: Resource, name: str, namespace: str | None = None) -> dict[str, Any]:
        return await self._json("GET", resource.path(namespace=namespace, name=name))

    async def list(
        self,
        resource: Resource,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> tuple[list[dict[str, Any]], str]:
        """All objects (following continue tokens) and the list's resourceVersion to watch from."""
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            page = await self._json(
                "GET",
                resource.path(namespace=namespace),
                query={
                    "labelSelector": label_selector,
                    "fieldSelector": field_selector,
                    "limit": 500,
                    "continue": token,
                },
            )
            for item in page.get("items", []):
                item.setdefault("apiVersion", resource.api_version)
                item.setdefault("kind", resource.kind)
                items.append(item)
            token = page.get("metadata", {}).get("continue")
            if not token:
                return items, str(page.get("metadata", {}).get("resourceVersion", ""))

    async def watch(
        self,
        resource: Resource,
        *,
        resource_version: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout_seconds: int = 300,
    ) -> AsyncIterator[WatchEvent]:
        """One watch request from `resource_version`, with bookmarks; ends when the server closes it.

        Raises `ApiGone` when the version is too old (the caller lists again).
        """
        response = await self._request(
            "GET",
            resource.path(namespace=namespace),
            query={
                "watch": "true",
                "resourceVersion": resource_version,
                "allowWatchBookmarks": "true",
                "timeoutSeconds": timeout_seconds,
                "labelSelector": label_selector,
                "fieldSelector": field_selector,
            },
            timeout=timeout_seconds + 30,
        )
        try:
            async for raw in response.content:
                line = raw.strip()
                if not line:
                    continue
                frame = json.loads(line)
                kind = frame.get("type")
                obj = frame.get("object", {})
                if kind == "ERROR":
                    code = int(obj.get("code", 0))
                    message = obj.get("message", "watch error")
                    if code == 410:
                        raise ApiGone(f"{self.name}: {message}", status=410, reason="Expired")
                    raise (TransientKubeError if code >= 500 or code == 429 else KubeError)(
                        f"{self.name}: watch error {code}: {message}", status=code
                    )
                yield WatchEvent(kind, obj)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise TransientKubeError(f"{self.name}: watch connection lost ({exc or type(exc).__name__})") from exc
        finally:
            response.release()

    # ------------------------------------------------------------------------------------------------ writes

    async def apply(
        self, resource: Resource, body: dict[str, Any], *, field_manager: str, subresource: str | None = None
    ) -> dict[str, Any]:
        """Server-side apply `body` with forced ownership of the fields it sets."""
        meta = body["metadata"]
        return await self._json(
            "PATCH",
            resource.path(namespace=meta.get("namespace"), name=meta["name"], subresource=subresource),
            query={"fieldManager": field_manager, "force": "true"},
            body=body,
            content_type=APPLY_CONTENT_TYPE,
        )

    async def merge_patch(
        self,
        resource: Resource,
        name: str,
        patch: dict[str, Any],
        *,
        namespace: str | None = None,
        field_manager: str,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        return await self._json(
            "PATCH",
            resource.path(namespace=namespace, name=name, subresource=subresource),
            query={"fieldManager": field_manager},
            body=patch,
            content_type=MERGE_PATCH_CONTENT_TYPE,
        )

    async def create(self, resource: Resource, body: dict[str, Any]) -> dict[str, Any]:
        namespace = body.get("metadata", {}).get("namespace")
        return await self._json("POST", resource.path(namespace=namespace), body=body)

    async def delete(
        self, resource: Resource, name: str, *, namespace: str | None = None, propagation: str = "Background"
    ) -> bool:
        """Delete; True if something was deleted, False if it was already gone."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation}
        try:
            response = await self._request("DELETE", resource.path(namespace=namespace, name=name), body=body)
        except NotFound:
            return False
        response.release()
        return True

    async def version(self) -> dict[str, Any]:
        return await self._json("GET", "/version", timeout=10)


def _settle_environment(api: ApiClient) -> None:
    """Resolve the environment's proxy settings once, here, instead of on every request.

    kubernetes_asyncio's HTTP session trusts the environment, and aiohttp then looks up HTTP(S)_PROXY/NO_PROXY and
    ~/.netrc on a worker thread for every request: two thread hand-offs per API call, each waiting for the GIL
    behind the event loop. In an agent under load that was a sixth of its CPU and delayed every call of a round
    of concurrent ones. The proxy the environment names for this apiserver (when the kubeconfig names none) is
    resolved as that per-request lookup would have resolved it; netrc credentials are never used for an apiserver
    (it authenticates with certificates or tokens).
    """
    rest = api.rest_client
    if not rest.proxy:
        with contextlib.suppress(LookupError):
            proxy, auth = get_env_proxy_for_url(URL(api.configuration.host or ""))
            rest.proxy = str(proxy)
            if auth is not None:
                rest.proxy_headers = {**(rest.proxy_headers or {}), "Proxy-Authorization": auth.encode()}
    session: aiohttp.ClientSession = rest.pool_manager
    if session.trust_env:
        connector = session.connector
        session.detach()  # the connector (with its TLS context and pool limit) moves to the new session
        rest.pool_manager = aiohttp.ClientSession(connector=connector, trust_env=False, read_bufsize=2**21)


def _q(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


async def _raise_for(name: str, method: str, path: str, response: aiohttp.ClientResponse) -> None:
    try:
        text = await response.text()
    except (aiohttp.ClientError, OSError, TimeoutError):
        text = ""
    finally:
        response.release()
    message = text
    reason = ""
    try:
        status = json.loads(text)
        message = status.get("message", text)
        reason = status.get("reason", "")
    except ValueError:
        pass
    code = response.status
    full = f"{name}: {method} {path}: {code} {message}".strip()
    if code == 404:
        raise NotFound(full, status=code, reason=reason)
    if code == 410:
        raise ApiGone(full, status=code, reason=reason)
    if code == 429 or code >= 500:
        raise TransientKubeError(full, status=code, reason=reason)
    raise KubeError(full, status=code, reason=reason)
