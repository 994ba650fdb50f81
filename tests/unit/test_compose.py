"""The hub's docker-compose.yml and the operator's Dockerfile, checked as data (there is no Docker daemon here).

docker-compose.yml: NATS with JetStream on a volume, Postgres on a volume, a one-shot migration, the planner, and
agents that read mounted kubeconfigs; start order through healthchecks and depends_on conditions; every operator
command exists in the CLI. Dockerfile: multi-stage, wheel built in the first stage, non-root, console script entry.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.main import get_command

from llm_operator.cli import app

ROOT = Path(__file__).resolve().parents[2]
OPERATOR_SERVICES = ("bus-init", "migrate", "planner", "dashboard-grant", "dashboard", "agent-a", "agent-b")
AGENTS = ("agent-a", "agent-b")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def env(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment", {})
    if isinstance(environment, list):
        return dict(item.split("=", 1) for item in environment)
    return {k: str(v) for k, v in environment.items()}


def test_services_and_volumes(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"nats", "postgres", *OPERATOR_SERVICES}
    assert set(compose["volumes"]) == {"bus", "nats-data", "postgres-data"}


def test_nats_runs_jetstream_on_its_volume(compose: dict[str, Any]) -> None:
    nats = compose["services"]["nats"]
    assert re.fullmatch(r"nats:2\.\d+(\.\d+)?(-alpine)?", nats["image"])
    command = nats["command"]
    assert "-js" in command or "--jetstream" in command
    store = command[command.index("-sd") + 1]
    assert f"nats-data:{store}" in nats["volumes"]
    assert "4222:4222" in nats["ports"]  # member clusters' agents dial in (authenticated, below)
    assert "js-enabled-only=true" in " ".join(nats["healthcheck"]["test"])


def test_postgres_keeps_its_data_on_a_volume_and_needs_a_password(compose: dict[str, Any]) -> None:
    postgres = compose["services"]["postgres"]
    assert postgres["image"] == "postgres:16"
    assert "postgres-data:/var/lib/postgresql/data" in postgres["volumes"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert env(postgres)["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")  # no default password
    assert all(p.startswith("127.0.0.1:") for p in postgres.get("ports", []))  # never exposed beyond the host


def test_operator_services_share_the_hardened_image(compose: dict[str, Any]) -> None:
    services = compose["services"]
    images = {services[name]["image"] for name in OPERATOR_SERVICES}
    assert len(images) == 1
    for name in OPERATOR_SERVICES:
        service = services[name]
        assert service["build"]["context"] == "."
        assert service["read_only"] is True
        assert service["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in service["security_opt"]


def test_start_order(compose: dict[str, Any]) -> None:
    services = compose["services"]

    def conditions(name: str) -> dict[str, str]:
        return {dep: spec["condition"] for dep, spec in services[name]["depends_on"].items()}

    assert conditions("migrate") == {"postgres": "service_healthy"}
    assert conditions("nats") == {"bus-init": "service_completed_successfully"}  # identities exist first
    assert services["bus-init"]["restart"] == "no"
    assert services["migrate"]["restart"] == "no"  # one-shot
    assert conditions("planner") == {
        "nats": "service_healthy",
        "postgres": "service_healthy",
        "migrate": "service_completed_successfully",
    }
    for agent in AGENTS:
        assert conditions(agent) == {"nats": "service_healthy", "planner": "service_started"}
    for name in ("nats", "postgres"):
        assert "healthcheck" in services[name]  # what service_healthy waits for


def test_commands_are_cli_commands(compose: dict[str, Any]) -> None:
    services = compose["services"]
    commands = set(get_command(app).commands)  # type: ignore[attr-defined]
    for name in OPERATOR_SERVICES:
        assert services[name]["command"][0] in commands, name
    assert services["migrate"]["command"] == ["migrate"]
    assert services["bus-init"]["command"][:2] == ["bus", "init"]
    assert "init" in get_command(app).commands["bus"].commands  # type: ignore[attr-defined]
    assert services["planner"]["command"] == ["planner"]
    agent_options = {p.opts[0] for p in get_command(app).commands["agent"].params}  # type: ignore[attr-defined]
    for agent in AGENTS:
        command = services[agent]["command"]
        assert command[0] == "agent"
        assert {arg for arg in command if arg.startswith("--")} == {"--cluster", "--context", "--labels"}
        assert {"--cluster", "--context", "--labels"} <= agent_options


def test_environment_hub_and_agents(compose: dict[str, Any]) -> None:
    services = compose["services"]
    db_url = "postgresql://llmop:${POSTGRES_PASSWORD}@postgres:5432/llmop"
    assert env(services["migrate"])["LLMOP_DATABASE_URL"] == db_url
    planner = env(services["planner"])
    assert planner["LLMOP_DATABASE_URL"] == db_url
    assert planner["LLMOP_NATS_URL"] == "nats://nats:4222"
    assert [identity_mount(services["planner"])] == services["planner"]["volumes"]  # no cluster's credentials
    assert identity_mount(services["planner"])["volume"]["subpath"] == "bus/${LLMOP_SUBJECT_PREFIX:-fleet}/hub"
    assert planner["LLMOP_NATS_NKEY_SEED"] == "/identity/nats.nk"
    # The planner signs plans with a key mounted as a secret; the agents pin its public key.
    assert planner["LLMOP_PLAN_SIGNING_KEY"] == "/run/secrets/plan-signing"
    assert services["planner"]["secrets"] == ["plan-signing"]
    assert compose["secrets"]["plan-signing"]["file"].endswith("plan-signing.pem}")
    for agent in AGENTS:
        service = services[agent]
        agent_env = env(service)
        assert agent_env["LLMOP_NATS_URL"] == "nats://nats:4222"
        assert agent_env["LLMOP_SUBJECT_PREFIX"] == planner["LLMOP_SUBJECT_PREFIX"]
        assert agent_env["LLMOP_KUBECONFIG"].startswith("/kubeconfigs/")
        assert "LLMOP_DATABASE_URL" not in agent_env  # agents never see the event store
        assert agent_env["LLMOP_PLAN_PUBLIC_KEYS"] == "${LLMOP_PLAN_PUBLIC_KEYS:-[]}"
        assert "secrets" not in service  # the private key stays with the planner
        assert service["volumes"][0] == "./kubeconfigs:/kubeconfigs:ro"
        # Its own seed only: the subpath names this agent's cluster (the same variable as --cluster).
        cluster = service["command"][service["command"].index("--cluster") + 1]
        assert identity_mount(service)["volume"]["subpath"] == "bus/${LLMOP_SUBJECT_PREFIX:-fleet}/" + cluster
        assert agent_env["LLMOP_NATS_NKEY_SEED"] == "/identity/nats.nk"
        assert service["profiles"] == ["agents"]  # opt-in: a plain `docker compose up` starts the hub only
    clusters = [services[a]["command"][services[a]["command"].index("--cluster") + 1] for a in AGENTS]
    assert len(set(clusters)) == len(clusters)


def identity_mount(service: dict[str, Any]) -> dict[str, Any]:
    [mount] = [v for v in service["volumes"] if isinstance(v, dict) and v["target"] == "/identity"]
    assert mount["source"] == "bus" and mount["read_only"] is True
    return mount


def test_nats_requires_the_identities_bus_init_makes(compose: dict[str, Any]) -> None:
    services = compose["services"]
    nats = services["nats"]
    command = nats["command"]
    assert command[command.index("-c") + 1] == "/auth/auth.conf"
    [auth] = [v for v in nats["volumes"] if isinstance(v, dict)]
    assert (auth["source"], auth["target"], auth["read_only"]) == ("bus", "/auth", True)
    assert auth["volume"]["subpath"] == "bus/_server"  # public keys only, no seeds
    init = services["bus-init"]["command"]
    assert init[init.index("--dir") + 1] == "/home/llmop/bus"
    assert "bus:/home/llmop" in services["bus-init"]["volumes"]
    clusters = {init[i + 1] for i, arg in enumerate(init) if arg == "--cluster"}
    assert clusters == {services[a]["command"][services[a]["command"].index("--cluster") + 1] for a in AGENTS}


# --------------------------------------------------------------------------------------------- Dockerfile


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) with comments dropped and continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (parts[0].upper(), parts[1] if len(parts) > 1 else "")
        for parts in (line.split(None, 1) for line in lines if line and not line.startswith("#"))
    ]


def test_dockerfile_is_multi_stage_with_the_wheel_built_first() -> None:
    instructions = dockerfile()
    stages = [args for op, args in instructions if op == "FROM"]
    assert len(stages) == 2
    assert stages[0].endswith("AS build")
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for op, a in instructions if op == "ARG" and "=" in a}
    assert args["PYTHON_IMAGE"] == "python:3.11-slim"
    first_stage = instructions[: [op for op, _ in instructions].index("FROM", 2)]
    assert any(op == "RUN" and "pip wheel" in a for op, a in first_stage)
    runtime = instructions[len(first_stage) :]
    install = next(a for op, a in runtime if op == "RUN" and "pip install" in a)
    assert "--mount=type=bind,from=build" in install  # the wheels never become a layer
    assert "--no-index" in install


def test_dockerfile_runs_the_console_script_as_non_root() -> None:
    instructions = dockerfile()
    users = [args for op, args in instructions if op == "USER"]
    assert users, "no USER: the image would run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0  # numeric, so Kubernetes can check runAsNonRoot
    values = yaml.safe_load((ROOT / "charts" / "llm-operator" / "values.yaml").read_text())
    assert values["podSecurityContext"]["runAsUser"] == int(uid)
    entrypoints = [args for op, args in instructions if op == "ENTRYPOINT"]
    assert entrypoints == ['["llm-operator"]']
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "llm-operator" in project["scripts"]


def test_dockerfile_copies_every_package_and_dockerignore_admits_them() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = {a.split()[0].rstrip("/") for op, a in dockerfile() if op == "COPY" and "--from" not in a}
    assert packages <= copied, f"not copied into the build stage: {packages - copied}"
    ignore = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    assert ignore[0] == "*"  # deny by default: .venv, .git, kubeconfigs (credentials) stay out of the context
    admitted = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert packages | {"pyproject.toml"} <= admitted


def test_the_dashboard_reads_as_its_read_only_role_and_is_published_on_loopback_only(
    compose: dict[str, Any],
) -> None:
    dashboard = compose["services"]["dashboard"]
    assert dashboard["ports"] == ["127.0.0.1:8080:8080"]
    assert env(dashboard)["LLMOP_DASHBOARD_DATABASE_URL"].startswith("postgresql://llmop_dashboard:")
    assert env(dashboard)["LLMOP_DASHBOARD_TOKEN"].startswith("${LLMOP_DASHBOARD_TOKEN:?")  # no default token
    assert "LLMOP_NATS_URL" not in env(dashboard)  # Postgres only
    grant = compose["services"]["dashboard-grant"]
    assert grant["command"] == ["dashboard", "--grant", "llmop_dashboard"]
    assert dashboard["depends_on"]["dashboard-grant"]["condition"] == "service_completed_successfully"
