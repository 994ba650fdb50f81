"""kubeapi.Kube resolves the environment's proxy for its apiserver once, and its HTTP session then stops looking
the environment up (on a worker thread) for every request."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from kubernetes_asyncio.client import ApiClient, Configuration

from kubeapi import Kube

pytestmark = pytest.mark.anyio

APISERVER = "https://10.20.30.40:6443"


@pytest.fixture
async def api() -> AsyncIterator[ApiClient]:
    configuration = Configuration(host=APISERVER)
    client = ApiClient(configuration)
    yield client
    await client.close()


@pytest.fixture(autouse=True)
def no_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


async def test_without_a_proxy_in_the_environment_requests_go_direct(api: ApiClient) -> None:
    assert api.rest_client.pool_manager.trust_env  # what kubernetes_asyncio does, and what Kube changes
    Kube(api, name="m")
    assert not api.rest_client.pool_manager.trust_env
    assert not api.rest_client.proxy


async def test_the_environment_proxy_for_the_apiserver_is_kept(api: ApiClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://user:secret@proxy.example:3128")
    Kube(api, name="m")
    rest = api.rest_client
    assert not rest.pool_manager.trust_env
    assert rest.proxy == "http://proxy.example:3128"
    assert rest.proxy_headers == {"Proxy-Authorization": "Basic dXNlcjpzZWNyZXQ="}  # user:secret


async def test_no_proxy_still_exempts_the_apiserver(api: ApiClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "10.20.30.40")
    Kube(api, name="m")
    assert not api.rest_client.proxy


async def test_a_proxy_named_by_the_kubeconfig_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    configuration = Configuration(host=APISERVER)
    configuration.proxy = "http://kubeconfig-proxy.example:8080"
    client = ApiClient(configuration)
    try:
        Kube(client, name="m")
        assert client.rest_client.proxy == "http://kubeconfig-proxy.example:8080"
    finally:
        await client.close()
