"""Secrets stay out of sight: after runs with password-bearing URLs, no password appears in any log line, error,
metrics or health answer, nor on the command line of the processes the operator starts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from api.signing import generate_private_key, load_signer
from llm_operator.embedded import _free_port
from tests.fixtures.operator import eventually
from tests.fixtures.services import Hub

pytestmark = [pytest.mark.anyio, pytest.mark.services]

NATS_PASSWORD = "natsPW-0c4f1e"
NATS_TOKEN = "natsTOKEN-77ab2d"
DB_PASSWORD = "dbPW-9d2e5a"
SECRETS = (NATS_PASSWORD, NATS_TOKEN, DB_PASSWORD)


def run(*args: str, env: dict[str, str]) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "llm_operator", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "LLMOP_LOG_LEVEL": "DEBUG", **env},
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr  # each of these fails, and says why
    return result.stdout + result.stderr


def assert_clean(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret} leaked:\n{text}"


def test_failures_never_print_the_password() -> None:
    dead = _free_port()
    outputs = [
        # NATS unreachable, with a user:password and with a token in the URL.
        run(
            "planner",
            env={
                "LLMOP_NATS_URL": f"nats://op:{NATS_PASSWORD}@127.0.0.1:{dead}",
                "LLMOP_DATABASE_URL": f"postgresql://op:{DB_PASSWORD}@127.0.0.1:{dead}/x",
                "LLMOP_CONNECT_WAIT_SECONDS": "2",
            },
        ),
        run(
            "agent",
            "--cluster",
            "east",
            env={
                "LLMOP_NATS_URL": f"nats://{NATS_TOKEN}@127.0.0.1:{dead}",
                "LLMOP_CONNECT_WAIT_SECONDS": "1",
                # An agent refuses to start without a pinned plan key before it dials NATS: give it one.
                "LLMOP_PLAN_PUBLIC_KEYS": json.dumps([load_signer(generate_private_key()).public_key]),
            },
        ),
        # Postgres unreachable, and not a Postgres URL at all.
        run("migrate", env={"LLMOP_DATABASE_URL": f"postgresql://op:{DB_PASSWORD}@127.0.0.1:{dead}/x"}),
        run("migrate", env={"LLMOP_DATABASE_URL": f"mysql://root:{DB_PASSWORD}@db/x"}),
    ]
    assert "cannot reach NATS at nats://op:***@127.0.0.1" in outputs[0]
    assert "cannot reach NATS at nats://***@127.0.0.1" in outputs[1]
    assert "database unreachable" in outputs[2] or "op:***@" in outputs[2]
    assert "not a Postgres URL" in outputs[3]
    for output in outputs:
        assert_clean(output)


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")


async def test_a_running_planner_logs_and_exports_no_password(hub: Hub, tmp_path: Path) -> None:
    """A planner whose database URL carries a password (the session's Postgres trusts the socket, so it is not
    checked, but it is used verbatim) runs, leads, answers /metrics and /readyz; nothing it says shows it."""
    hub.grant()
    port = _free_port()
    database_url = hub.database_url.replace("postgres@", f"postgres:{DB_PASSWORD}@")
    log = tmp_path / "planner.log"
    env = {
        **os.environ,
        "LLMOP_NATS_URL": hub.nats_url,
        "LLMOP_NATS_NKEY_SEED": str(hub.seed("hub")),
        "LLMOP_DATABASE_URL": database_url,
        "LLMOP_SUBJECT_PREFIX": hub.subjects.prefix,
        "LLMOP_METRICS_PORT": str(port),
        "LLMOP_LOG_LEVEL": "DEBUG",
    }
    with log.open("wb") as out:
        process = subprocess.Popen(  # noqa: ASYNC220 - started once; the test then only polls it
            [sys.executable, "-m", "llm_operator", "planner"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        async with aiohttp.ClientSession() as session:

            async def get(path: str) -> str | None:
                assert process.poll() is None, log.read_text()
                try:
                    async with session.get(f"http://127.0.0.1:{port}{path}") as response:
                        return await response.text()
                except aiohttp.ClientConnectionError:
                    return None

            async def leading() -> str | None:
                body = await get("/metrics")
                return body if body and "llmop_planner_leader 1.0" in body else None

            metrics = await eventually(leading, timeout=60, what="the planner to lead")
            ready = await get("/readyz")
        cmdline = _cmdline(process.pid)
        nats_cmdline = _cmdline(hub.nats.process.pid) if hub.nats.process else ""
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    text = log.read_text()
    assert "hub: NATS" in text or "planner" in text
    for where in (text, metrics, ready or "", cmdline, nats_cmdline):
        assert_clean(where)
