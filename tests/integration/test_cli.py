"""Bad input at the command line: one line that names the problem and the fix, exit status 1, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from api.events import ApplyReported, ClusterJoined
from api.network import ClusterNetwork
from llm_operator.embedded import _free_port
from store import projections, recorder
from tests import builders
from tests.fixtures.services import Hub

pytestmark = [pytest.mark.services]
KEY = "ed25519:lsYuTZ3ABv3SnfCb6pw+6HMYVNNaA7Xkqhiy9YwS8Hg="


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llm_operator", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "LLMOP_PLAN_PUBLIC_KEYS": json.dumps([KEY]), **(env or {}), "COLUMNS": "80"},
        check=False,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_unreachable_nats_is_retried_for_a_while_then_named() -> None:
    port = _free_port()
    started = time.monotonic()
    result = run(
        "planner",
        "--nats-url",
        f"nats://127.0.0.1:{port}",
        "--database-url",
        f"postgresql://postgres@127.0.0.1:{_free_port()}/x",
        env={"LLMOP_CONNECT_WAIT_SECONDS": "2"},
    )
    line = one_line_error(result)
    assert f"cannot reach NATS at nats://127.0.0.1:{port}" in line
    assert time.monotonic() - started >= 2
    assert "not reachable" in result.stderr  # it said it was waiting, and for what
    assert "LLMOP_NATS_URL" in line


def test_unreachable_postgres() -> None:
    line = one_line_error(run("migrate", "--database-url", f"postgresql://postgres@127.0.0.1:{_free_port()}/x"))
    assert "database unreachable" in line


def test_not_a_postgres_url() -> None:
    line = one_line_error(run("migrate", "--database-url", "mysql://root@db/x"))
    assert "not a Postgres URL" in line


def test_a_missing_kubeconfig_context_lists_the_ones_there(hub: Hub, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "users: [{name: u, user: {token: t}}]\ncontexts: [{name: real, context: {cluster: c, user: u}}]\n"
        "current-context: real\n"
    )
    hub.grant("east", planner=False)
    line = one_line_error(
        run(
            "agent",
            "--cluster",
            "east",
            "--context",
            "typo",
            "--nats-url",
            hub.nats_url,
            "--kubeconfig",
            str(kubeconfig),
            env={"LLMOP_NATS_NKEY_SEED": str(hub.seed("east"))},
        )
    )
    assert "has no context 'typo' (it has: real)" in line


def test_a_missing_kubeconfig_file(hub: Hub, tmp_path: Path) -> None:
    hub.grant("east", planner=False)
    line = one_line_error(
        run(
            "agent",
            "--cluster",
            "east",
            "--context",
            "x",
            "--nats-url",
            hub.nats_url,
            "--kubeconfig",
            str(tmp_path / "absent"),
            env={"LLMOP_NATS_NKEY_SEED": str(hub.seed("east"))},
        )
    )
    assert "does not exist" in line


def test_an_unreachable_cluster(hub: Hub, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        f"apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: 'http://127.0.0.1:{_free_port()}'}}}}]\n"
        "users: [{name: u, user: {token: t}}]\ncontexts: [{name: east, context: {cluster: c, user: u}}]\n"
        "current-context: east\n"
    )
    hub.grant("east", planner=False)
    line = one_line_error(
        run(
            "agent",
            "--cluster",
            "east",
            "--context",
            "east",
            "--nats-url",
            hub.nats_url,
            "--kubeconfig",
            str(kubeconfig),
            env={"LLMOP_NATS_NKEY_SEED": str(hub.seed("east"))},
        )
    )
    assert "cluster east: apiserver unreachable" in line


def test_an_invalid_cluster_name() -> None:
    line = one_line_error(run("agent", "--cluster", "East_1", "--nats-url", "nats://127.0.0.1:4222"))
    assert "invalid cluster name 'East_1'" in line


def test_an_invalid_setting_names_the_variable() -> None:
    line = one_line_error(run("migrate", env={"LLMOP_HEARTBEAT_SECONDS": "-1", "LLMOP_DATABASE_URL": "x"}))
    assert "heartbeat_seconds" in line


# ------------------------------------------------------------------------ tenant text is text, patterns literal


async def _record(hub: Hub, *events: Any) -> None:
    engine = create_async_engine(hub.database_url)
    try:
        async with engine.begin() as conn:
            await recorder.lock_writers(conn)
            await recorder.append(conn, [(e, {}) for e in events])
    finally:
        await engine.dispose()


@pytest.mark.anyio
async def test_tenant_strings_are_printed_as_text_not_rich_markup(hub: Hub) -> None:
    spec = {"modelRef": "m", "replicas": 1}
    deployment = builders.llm_deployment("chat", "team-a", spec)
    report = ApplyReported(
        event_id="r1",
        cluster="east",
        plan_id="p1",
        origin_cluster="east",
        namespace="team-a",
        name="chat",
        outcome="Failed",
        message="[/x] [bold red]SPOOFED[/bold red]",
        epoch=1,
        sequence=1,
        finished_at=builders.T0,
    )
    await _record(hub, builders.observed("east", "LLMDeployment", deployment), report)
    result = await anyio.to_thread.run_sync(
        lambda: run("history", "llmdeployment/team-a/chat", "--database-url", hub.database_url)
    )
    assert result.returncode == 0, result.stderr
    cells = "".join(ch for ch in result.stdout if not ch.isspace() and ch not in "│┃")  # the table wraps at 80
    assert "[/x][boldred]SPOOFED[/boldred]" in cells

    # An argument with markup in an error message: printed as it was given, not a MarkupError traceback.
    line = one_line_error(
        await anyio.to_thread.run_sync(
            lambda: run("history", "llmdeployment/[/x]/[bold]n", "--database-url", hub.database_url)
        )
    )
    assert "[/x]/[bold]n" in line


@pytest.mark.anyio
async def test_like_wildcards_in_arguments_match_only_themselves(hub: Hub) -> None:
    deployment = builders.llm_deployment("a-c", "team_a", {"modelRef": "m", "replicas": 1})
    await _record(hub, builders.observed("east", "LLMDeployment", deployment))
    found = await anyio.to_thread.run_sync(
        lambda: run("history", "llmdeployment/team_a/a-c", "--database-url", hub.database_url)
    )
    assert found.returncode == 0, found.stderr
    for pattern in ("team%/a-c", "team_a/a_c", "team_a/%"):
        line = one_line_error(
            await anyio.to_thread.run_sync(
                lambda p=pattern: run("history", f"llmdeployment/{p}", "--database-url", hub.database_url)  # type: ignore[misc]
            )
        )
        assert "no history" in line


def test_the_first_screen_is_clean(tmp_path: Path) -> None:
    """No warning of ours or of a library reaches the terminal: not from --help, and not from a command that starts
    the embedded Postgres without XDG_RUNTIME_DIR (as in containers and CI), where platformdirs warns on import
    of pgserver."""
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    env.pop("LLMOP_DATABASE_URL", None)
    for args in (["--help"], ["status", "--help"]):
        result = subprocess.run(
            [sys.executable, "-m", "llm_operator", *args],
            check=False,
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert result.stderr == "", result.stderr
    result = subprocess.run(
        [sys.executable, "-m", "llm_operator", "status"],
        check=False,
        capture_output=True,
        text=True,
        env={**env, "LLMOP_DATA_DIR": str(tmp_path / "data")},
        timeout=180,
    )
    assert "Warning" not in result.stderr and "XDG_RUNTIME_DIR" not in result.stderr, result.stderr
    line = one_line_error(result)  # a fresh database: one line saying what to do
    assert "llm-operator migrate" in line


def test_an_agent_without_a_pinned_plan_key_refuses_to_start() -> None:
    line = one_line_error(
        run("agent", "--cluster", "east", "--nats-url", "nats://127.0.0.1:4222", env={"LLMOP_PLAN_PUBLIC_KEYS": "[]"})
    )
    assert "no trusted plan-signing key: set LLMOP_PLAN_PUBLIC_KEYS" in line


def test_a_bad_pinned_plan_key_is_named() -> None:
    line = one_line_error(
        run(
            "agent",
            "--cluster",
            "east",
            "--nats-url",
            "nats://127.0.0.1:4222",
            env={"LLMOP_PLAN_PUBLIC_KEYS": '["ed25519:AAAA"]'},
        )
    )
    assert "LLMOP_PLAN_PUBLIC_KEYS: a public key must be 32 bytes" in line


def test_keys_generate_and_public(tmp_path: Path) -> None:
    key = tmp_path / "hub.pem"
    made = run("keys", "generate", "-o", str(key))
    assert made.returncode == 0, made.stderr
    assert key.stat().st_mode & 0o777 == 0o600
    public = made.stdout.strip()
    assert public.startswith("ed25519:")
    assert run("keys", "public", str(key)).stdout.strip() == public
    assert "never overwritten" in one_line_error(run("keys", "generate", "-o", str(key)))


# ------------------------------------------------------------------------------------ the clusters' networks


async def _join(hub: Hub, cluster: str, *, at: datetime, network: dict[str, Any] | None) -> None:
    """A ClusterJoined as the planner records it from a heartbeat that declared `network` (or none)."""
    joined = ClusterJoined(
        event_id=f"joined-{cluster}-{at.timestamp()}",
        cluster=cluster,
        labels={"gpu": "a100"},
        at=at,
        network=ClusterNetwork.model_validate(network) if network is not None else None,
    )
    engine = create_async_engine(hub.database_url)
    try:
        async with engine.begin() as conn:
            await recorder.lock_writers(conn)
            await recorder.append(conn, [(joined, {})])
            await recorder.apply_ops(conn, projections.fold(joined))
    finally:
        await engine.dispose()


@pytest.mark.anyio
async def test_status_shows_each_clusters_declared_network(hub: Hub) -> None:
    """`status` lists how each cluster is reached (mode, pod ranges) as last declared; a cluster that declared
    nothing, or whose stored declaration is not valid (written by hand, an older shape), is "undeclared"."""
    t0 = builders.T0
    await _join(hub, "east", at=t0, network={"mode": "flat", "pod_cidrs": ["10.1.0.0/16"]})
    await _join(hub, "east", at=t0 + timedelta(seconds=5), network={"mode": "mcs", "pod_cidrs": ["10.2.0.0/16"]})
    await _join(hub, "west", at=t0, network=None)
    await _join(hub, "north", at=t0, network={"mode": "flat", "pod_cidrs": []})
    engine = create_async_engine(hub.database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text("UPDATE clusters SET network = '{\"mode\": \"[bold]mesh[/bold]\"}' WHERE name = 'north'")
            )
    finally:
        await engine.dispose()
    result = await anyio.to_thread.run_sync(lambda: run("status", "--json", "--database-url", hub.database_url))
    assert result.returncode == 0, result.stderr
    clusters = {c["name"]: c["network"] for c in json.loads(result.stdout)["clusters"]}
    assert clusters == {"east": {"mode": "mcs", "pod_cidrs": ["10.2.0.0/16"]}, "north": None, "west": None}

    table = await anyio.to_thread.run_sync(lambda: run("status", "--database-url", hub.database_url))
    assert table.returncode == 0, table.stderr
    rows = {line.split("│")[1].strip(): line for line in table.stdout.splitlines() if line.count("│") > 3}
    assert "mcs" in rows["east"] and "10.2.0.0/16" in rows["east"]
    assert "undeclared" in rows["west"] and "undeclared" in rows["north"]
    assert "mesh" not in table.stdout
