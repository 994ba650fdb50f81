"""Bad input at the command line: one line that names the problem and the fix, exit status 1, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llm_operator.embedded import _free_port
from tests.fixtures.services import Hub

pytestmark = [pytest.mark.services]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llm_operator", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {}), "COLUMNS": "80"},
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
