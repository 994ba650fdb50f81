"""The Helm chart (charts/llm-operator) with the real helm v4 against the real kwok fleet.

- lint, template, package; bad values fail at install time with the schema's message;
- install into every fleet cluster exactly as docs/deploy.md tells a platform engineer (namespace with the
  "restricted" Pod Security Standard enforced, CRDs from the chart's crds/, `helm install`), pods admitted;
- the operator works through the chart: kwok runs no containers, so the agent runs here as a process, with the
  args and environment of the installed Deployment and authenticated as its ServiceAccount (a token from
  `kubectl create token`), i.e. with exactly the chart's RBAC; with a planner on the test's hub, the seed
  examples become a Deployment and a Service, report Ready, and are cleaned up;
- least privilege (`kubectl auth can-i` as each ServiceAccount: split by default, confined to watchNamespaces,
  combined), upgrade, and uninstall (CRDs and users' custom resources are kept).

Every test installs the release itself (after removing any leftover), so each runs alone.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import sys
import tarfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import anyio
import pytest
import yaml
from anyio.abc import Process

from api.policy import TenantPolicy
from llm_operator.embedded import _free_port
from tests.fixtures.operator import Kubectl, eventually, signing_key
from tests.fixtures.services import Hub, repo_root

if TYPE_CHECKING:
    from tests.fixtures.fleet import Fleet

pytestmark = [pytest.mark.anyio, pytest.mark.fleet]

CHART = repo_root() / "charts" / "llm-operator"
SEED = repo_root() / "examples" / "seed"
RELEASE = "llm-operator"
NAMESPACE = "llm-system"
OPERATOR = Path(sys.executable).with_name("llm-operator")
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
PUBLIC_KEY = "ed25519:lsYuTZ3ABv3SnfCb6pw+6HMYVNNaA7Xkqhiy9YwS8Hg="


# --------------------------------------------------------------------------------------------------- helpers


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


async def run(cmd: Sequence[str | Path], *, env: dict[str, str], input: str | None = None) -> Result:
    done = await anyio.run_process([str(c) for c in cmd], input=input.encode() if input else None, check=False, env=env)
    return Result(done.returncode, done.stdout.decode(), done.stderr.decode())


async def helm(fleet: Fleet, role: str | None, *args: str | Path, check: bool = True) -> Result:
    """The built helm; with a role, against that cluster's context of the test kubeconfig."""
    target = ["--kube-context", fleet.clusters[role].context] if role else []
    result = await run([fleet.toolchain.helm, *target, *args], env=fleet.env())
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(map(str, args))} failed:\n{result.output}")
    return result


def member_args(fleet: Fleet, role: str, hub: Hub | None = None) -> list[str]:
    """`helm install` flags of one member cluster, as docs/deploy.md writes them."""
    cluster = fleet.clusters[role]
    args = ["--set", f"cluster.name={cluster.name}"]
    for key, value in sorted(cluster.labels.items()):
        args += ["--set", f"cluster.labels.{key}={value}"]
    args += ["--set", f"nats.url={hub.nats_url if hub else 'nats://nats.hub.example.com:4222'}"]
    # The hub's public key (the tests' planner signs with signing_key()).
    args += ["--set", f"planSigning.publicKeys[0]={signing_key()[1].public_key if hub else PUBLIC_KEY}"]
    if all(node.gpus for node in fleet.specs[role].nodes):
        # Only GPU nodes, all tainted: the agent (no GPU) must tolerate the taint to be scheduled at all.
        args += ["--set-json", f"agent.tolerations=[{json.dumps(GPU_TOLERATION)}]"]
    if hub:
        # Its own identity on the bus, as `llm-operator bus add-cluster` made it on the hub.
        hub.grant(cluster.name)
        args += ["--set", f"nats.subjectPrefix={hub.subjects.prefix}"]
        args += ["--set-file", f"nats.nkeySeed={hub.seed(cluster.name)}"]
    else:
        args += ["--set", "nats.nkeySeed=SUAEXAMPLE"]
    return args


async def install(kubectl: Kubectl, role: str, *extra: str) -> Result:
    """The README's three commands (namespace, CRDs, helm install), after removing a leftover release."""
    fleet = kubectl.fleet
    await helm(fleet, role, "uninstall", RELEASE, "--namespace", NAMESPACE, "--ignore-not-found", "--wait")
    if await kubectl.get(role, "namespace", NAMESPACE) is None:
        await kubectl(role, "create", "namespace", NAMESPACE)
    # Every pod of the chart must be admitted under the "restricted" Pod Security Standard.
    await kubectl(role, "label", "--overwrite", "namespace", NAMESPACE, "pod-security.kubernetes.io/enforce=restricted")
    await kubectl(role, "apply", "--server-side", "--force-conflicts", "-f", f"{CHART / 'crds'}/")
    return await helm(
        fleet, role, "install", RELEASE, CHART, "--namespace", NAMESPACE, *extra, "--wait", "--timeout", "2m"
    )


async def uninstall(fleet: Fleet, role: str) -> None:
    await helm(fleet, role, "uninstall", RELEASE, "--namespace", NAMESPACE, "--ignore-not-found", "--wait")


async def restore_crd_ownership(kubectl: Kubectl, role: str) -> None:
    """Leave the CRDs' fields owned by the operator's field manager alone, as the crds_installed fixture expects.

    The install above made `kubectl` and `helm` (Helm 4 server-side applies crds/ on install) co-owners; once the
    CRDs change, the fixture's non-forced apply would conflict with them in this shared fleet.
    """
    for crd in ("llmmodels.llm.example.com", "llmdeployments.llm.example.com"):
        current = await kubectl.json(role, "get", "crd", crd, "--show-managed-fields")
        entries = current["metadata"].get("managedFields", [])
        kept = [e for e in entries if e.get("manager") not in ("helm", "kubectl", "kubectl-client-side-apply")]
        if kept and len(kept) < len(entries):
            patch = [{"op": "replace", "path": "/metadata/managedFields", "value": kept}]
            await kubectl(role, "patch", "crd", crd, "--type=json", "-p", json.dumps(patch))


def sa(name: str) -> str:
    return f"system:serviceaccount:{NAMESPACE}:{name}"


async def can_i(kubectl: Kubectl, role: str, account: str, verb: str, resource: str, *where: str) -> bool:
    """`kubectl auth can-i` as that ServiceAccount; "kind/sub" is the subresource sub of kind."""
    resource, _, subresource = resource.partition("/")
    sub = [f"--subresource={subresource}"] if subresource else []
    out = await kubectl(role, "auth", "can-i", verb, resource, *sub, *where, f"--as={sa(account)}", check=False)
    return out.strip().splitlines()[0] == "yes"


async def assert_permissions(
    kubectl: Kubectl, role: str, account: str, allowed: Sequence[str], denied: Sequence[str]
) -> None:
    """Each entry is "verb resource [namespace]"; without a namespace, the check is cluster-wide."""
    wrong = []
    for expected, entries in ((True, allowed), (False, denied)):
        for entry in entries:
            verb, resource, *ns = entry.split()
            where = ["-n", ns[0]] if ns else ["--all-namespaces"]
            if await can_i(kubectl, role, account, verb, resource, *where) != expected:
                wrong.append(f"{'cannot' if expected else 'can'} {entry}")
    assert not wrong, f"ServiceAccount {account}: {', '.join(wrong)}"


def docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def by_kind_name(manifests: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(m["kind"], m["metadata"]["name"]): m for m in manifests}


# ------------------------------------------------------------------------------------- lint, template, package


async def test_lint_template_and_package(fleet: Fleet, tmp_path: Path) -> None:
    for values in ("member-values.yaml", "hub-values.yaml"):
        result = await helm(fleet, None, "lint", CHART, "--strict", "-f", CHART / "ci" / values)
        assert "0 chart(s) failed" in result.output, result.output

    # Without the two required values, lint says which ones.
    bare = await helm(fleet, None, "lint", CHART, check=False)
    assert bare.returncode != 0
    assert "at '/cluster': missing property 'name'" in bare.output, bare.output
    assert "at '/nats': missing property 'url'" in bare.output, bare.output

    rendered = await helm(
        fleet, None, "template", RELEASE, CHART, "--namespace", NAMESPACE, "--include-crds",
        "-f", CHART / "ci" / "member-values.yaml",
    )  # fmt: skip
    objects = by_kind_name(docs(rendered.stdout))
    assert set(objects) == {
        ("CustomResourceDefinition", "llmmodels.llm.example.com"),
        ("CustomResourceDefinition", "llmdeployments.llm.example.com"),
        ("ServiceAccount", "llm-operator-watcher"),
        ("ServiceAccount", "llm-operator-applier"),
        ("Secret", "llm-operator-nats"),
        ("ConfigMap", "llm-operator-policy"),
        ("ClusterRole", "llm-operator-watcher"),
        ("ClusterRole", "llm-operator-applier"),
        ("ClusterRoleBinding", "llm-operator-watcher"),
        ("ClusterRoleBinding", "llm-operator-applier"),
        ("Deployment", "llm-operator-watcher"),
        ("Deployment", "llm-operator-applier"),
    }
    # The chart ships the generated CRDs unchanged.
    for path in sorted((repo_root() / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        assert objects[("CustomResourceDefinition", crd["metadata"]["name"])] == crd
    # Each component runs under its own ServiceAccount, bound to its own role only.
    for component in ("watcher", "applier"):
        binding = objects[("ClusterRoleBinding", f"llm-operator-{component}")]
        assert [s["name"] for s in binding["subjects"]] == [f"llm-operator-{component}"]
        pod = objects[("Deployment", f"llm-operator-{component}")]["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == f"llm-operator-{component}"
    container = pod["containers"][0]
    assert container["image"] == "llm-operator:0.1.0"
    assert container["args"] == [
        "agent", "--cluster", "gpu-east-1", "--labels", "region=us-east,tier=gold", "--only", "applier"
    ]  # fmt: skip
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["LLMOP_NATS_URL"] == "nats://nats.hub.example.com:4222"
    assert env["LLMOP_NATS_CREDENTIALS"] == "/etc/llm-operator/nats/nats.creds"
    assert json.loads(env["LLMOP_PLAN_PUBLIC_KEYS"]) == [PUBLIC_KEY]
    assert env["LLMOP_TENANT_POLICY"] == "/etc/llm-operator/policy/policy.json"
    assert env["LLMOP_OPERATOR_NAMESPACE"] == NAMESPACE
    # The cluster's declared network (ci/member-values.yaml), as the settings the agent reports with heartbeats.
    assert env["LLMOP_NETWORK_MODE"] == "flat"
    assert json.loads(env["LLMOP_NETWORK_POD_CIDRS"]) == ["10.244.0.0/16"]
    policy = json.loads(objects[("ConfigMap", "llm-operator-policy")]["data"]["policy.json"])
    assert TenantPolicy.model_validate(policy) == TenantPolicy()
    # The default policy creates no namespace: the applier may only read them.
    applier_rules = objects[("ClusterRole", "llm-operator-applier")]["rules"]
    assert applier_rules[0] == {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"]}
    # What endpoints plans write: the origin's EndpointSlices, a serving cluster's ServiceExport (least privilege).
    for group, resource in (("discovery.k8s.io", "endpointslices"), ("multicluster.x-k8s.io", "serviceexports")):
        assert [r["verbs"] for r in applier_rules if r["apiGroups"] == [group]] == [
            ["list", "create", "patch", "delete"]
        ]
        assert [r["resources"] for r in applier_rules if r["apiGroups"] == [group]] == [[resource]]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}

    hub_rendered = await helm(
        fleet, None, "template", "hub", CHART, "--namespace", "llm-hub", "-f", CHART / "ci" / "hub-values.yaml"
    )
    hub_objects = by_kind_name(docs(hub_rendered.stdout))
    assert set(hub_objects) == {
        ("ServiceAccount", "hub-llm-operator-planner"),
        ("Deployment", "hub-llm-operator-planner"),
        ("ConfigMap", "hub-llm-operator-policy"),
    }
    planner = hub_objects[("Deployment", "hub-llm-operator-planner")]["spec"]["template"]["spec"]
    assert planner["automountServiceAccountToken"] is False
    # The planner's signing key comes from the named Secret, mounted read-only for the planner alone.
    signing = next(v for v in planner["volumes"] if v["name"] == "plan-signing")
    assert signing["secret"]["secretName"] == "llm-operator-plan-signing"
    planner_env = {e["name"]: e.get("value") for e in planner["containers"][0]["env"]}
    assert planner_env["LLMOP_PLAN_SIGNING_KEY"] == "/etc/llm-operator/signing/key.pem"
    assert [c["args"] for c in planner["initContainers"]] == [["migrate"]]
    assert planner["containers"][0]["args"] == ["planner"]

    # watchNamespaces: Roles in exactly those namespaces; cluster-wide, only Nodes/Pods (read) and `get` on
    # those namespaces. A policy that creates namespaces adds `create` only without watchNamespaces.
    for extra, scoped in (
        (["--set-json", 'agent.watchNamespaces=["team-a","team-b"]'], True),
        (["--set", "tenantPolicy.rules[0].createNamespaces=true"], False),
    ):
        narrowed = await helm(
            fleet, None, "template", RELEASE, CHART, "--namespace", NAMESPACE,
            "-f", CHART / "ci" / "member-values.yaml", *extra,
        )  # fmt: skip
        found = by_kind_name(docs(narrowed.stdout))
        roles = [m for m in docs(narrowed.stdout) if m["kind"] in ("Role", "RoleBinding")]
        watcher_rules = found[("ClusterRole", "llm-operator-watcher")]["rules"]
        applier_rules = found[("ClusterRole", "llm-operator-applier")]["rules"]
        if scoped:
            assert sorted((m["kind"], m["metadata"]["namespace"], m["metadata"]["name"]) for m in roles) == sorted(
                (kind, ns, f"llm-operator-{c}")
                for kind in ("Role", "RoleBinding")
                for ns in ("team-a", "team-b")
                for c in ("watcher", "applier")
            )
            assert [r["resources"] for r in watcher_rules] == [["nodes", "pods"]]
            assert applier_rules == [
                {
                    "apiGroups": [""],
                    "resources": ["namespaces"],
                    "verbs": ["get"],
                    "resourceNames": ["team-a", "team-b"],
                }
            ]
        else:
            assert roles == []
            assert applier_rules[0] == {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "create"]}

    await helm(fleet, None, "package", CHART, "--destination", tmp_path)
    version = yaml.safe_load((CHART / "Chart.yaml").read_text())["version"]
    with tarfile.open(tmp_path / f"llm-operator-{version}.tgz") as tar:
        names = set(tar.getnames())
    assert {"llm-operator/crds/llm.example.com_llmmodels.yaml", "llm-operator/values.schema.json"} <= names
    assert not any("/ci/" in n for n in names)


MEMBER = [
    "--set",
    "cluster.name=a",
    "--set",
    "nats.url=nats://hub:4222",
    "--set",
    "nats.nkeySeed=SUAEXAMPLE",
    "--set",
    f"planSigning.publicKeys[0]={PUBLIC_KEY}",
]
BAD_VALUES = {
    "no cluster name": (["--set", "nats.url=nats://hub:4222"], "at '/cluster': missing property 'name'"),
    "no NATS URL": (["--set", "cluster.name=a"], "at '/nats': missing property 'url'"),
    "cluster name not a DNS label": (
        ["--set", "cluster.name=GPU_East", "--set", "nats.url=nats://hub:4222"],
        "at '/cluster/name': 'GPU_East' does not match pattern",
    ),
    "cluster named hub": ([*MEMBER, "--set", "cluster.name=hub"], '"hub" is reserved'),
    "NATS URL not nats://": (
        ["--set", "cluster.name=a", "--set", "nats.url=http://hub:4222"],
        "at '/nats/url': 'http://hub:4222' does not match pattern",
    ),
    "misspelt key": ([*MEMBER, "--set", "cluster.nmae=b"], "at '/cluster': additional properties 'nmae' not allowed"),
    "unknown log format": ([*MEMBER, "--set", "log.format=yaml"], "at '/log/format': value must be one of"),
    "bad subject prefix": ([*MEMBER, "--set", "nats.subjectPrefix=Fleet"], "at '/nats/subjectPrefix': 'Fleet'"),
    "label value with a space": ([*MEMBER, "--set", "cluster.labels.tier=gold class"], "at '/cluster/labels/tier'"),
    "no plan-signing public key": (
        ["--set", "cluster.name=a", "--set", "nats.url=nats://hub:4222"],
        "at '/planSigning/publicKeys': minItems",
    ),
    "planner without its signing key": (
        ["--set", "agent.enabled=false", "--set", "planner.enabled=true", "--set", "nats.url=nats://hub:4222",
         "--set", "planner.database.existingSecret=db"],
        "at '/planSigning/existingSecret': minLength",
    ),
    "network mode not one of the three": (
        [*MEMBER, "--set", "network.mode=mesh"], "at '/network/mode': value must be one of"
    ),
    "pod range not an IPv4 CIDR": (
        [*MEMBER, "--set-json", 'network.podCIDRs=["10.244.0.0"]'], "at '/network/podCIDRs/0'"
    ),
    "tenant policy with a misspelt key": (
        [*MEMBER, "--set-json", 'tenantPolicy.rules=[{"namespace":["a"]}]'],
        "additional properties 'namespace' not allowed",
    ),
    "no identity on the bus": (
        [
            "--set",
            "cluster.name=a",
            "--set",
            "nats.url=nats://hub:4222",
            "--set",
            f"planSigning.publicKeys[0]={PUBLIC_KEY}",
        ],
        "nats: authentication is on: give this release its NATS identity",
    ),
    "planner without Postgres": (
        ["--set", "agent.enabled=false", "--set", "planner.enabled=true", "--set", "nats.url=nats://hub:4222"],
        "at '/planner/database/url': minLength",
    ),
    "planner replicas 0": (
        ["--set", "agent.enabled=false", "--set", "planner.enabled=true", "--set", "nats.url=nats://hub:4222",
         "--set", "planner.database.existingSecret=db", "--set", "planner.replicas=0",
         "--set", "planSigning.existingSecret=k"],
        "at '/planner/replicas': minimum",
    ),
}  # fmt: skip


@pytest.mark.parametrize(("args", "message"), BAD_VALUES.values(), ids=BAD_VALUES.keys())
async def test_bad_values_fail_with_a_clear_message(fleet: Fleet, args: list[str], message: str) -> None:
    result = await helm(fleet, None, "template", RELEASE, CHART, *args, check=False)
    assert result.returncode != 0
    assert message in result.output, result.output


async def test_hub_release_is_valid_for_the_apiserver(kubectl: Kubectl) -> None:
    """The planner-only release (not installable here: no image runs in kwok) passes server-side validation."""
    if await kubectl.get("cpu", "namespace", NAMESPACE) is None:
        await kubectl("cpu", "create", "namespace", NAMESPACE)
    await kubectl(
        "cpu", "label", "--overwrite", "namespace", NAMESPACE, "pod-security.kubernetes.io/enforce=restricted"
    )
    rendered = await helm(
        kubectl.fleet, None, "template", "hub", CHART, "--namespace", NAMESPACE,
        "-f", CHART / "ci" / "hub-values.yaml", "--set", "planner.database.existingSecret=",
        "--set", "planner.database.url=postgresql://llmop:secret@postgres:5432/llmop",
    )  # fmt: skip
    out = await kubectl("cpu", "apply", "--dry-run=server", "-f", "-", input=rendered.stdout, check=False)
    assert "deployment.apps/hub-llm-operator-planner created (server dry run)" in out, out
    assert "secret/hub-llm-operator-database created (server dry run)" in out, out
    assert "warning" not in out.lower(), out  # e.g. "would violate PodSecurity"


# ------------------------------------------------------------------------ install, and the operator through it


@contextlib.asynccontextmanager
async def process(cmd: Sequence[str | Path], *, env: dict[str, str], log: Path) -> AsyncIterator[Process]:
    """A subprocess writing to `log`, stopped with SIGTERM (as Kubernetes stops a pod) at the end."""
    with log.open("wb") as out:
        proc = await anyio.open_process([str(c) for c in cmd], env=env, stdout=out, stderr=out)
        try:
            yield proc
        finally:
            with anyio.CancelScope(shield=True):
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
                    with anyio.move_on_after(15):
                        await proc.wait()
                    if proc.returncode is None:
                        proc.kill()
                        await proc.wait()


def service_account_kubeconfig(fleet: Fleet, role: str, token: str, path: Path) -> Path:
    """A kubeconfig for that cluster's server and CA, authenticated only by the ServiceAccount's token."""
    config = yaml.safe_load(fleet.kubeconfig.read_text())
    context = next(c for c in config["contexts"] if c["name"] == fleet.clusters[role].context)["context"]
    cluster = next(c for c in config["clusters"] if c["name"] == context["cluster"])
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [cluster],
                "users": [{"name": "chart-sa", "user": {"token": token}}],
                "contexts": [{"name": "chart-sa", "context": {"cluster": cluster["name"], "user": "chart-sa"}}],
                "current-context": "chart-sa",
            }
        )
    )
    path.chmod(0o600)
    return path


def tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


async def test_install_in_every_cluster_and_the_operator_works_through_it(
    hub: Hub, kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    fleet, role = kubectl.fleet, "cpu"
    try:
        for each in fleet.clusters:
            result = await install(kubectl, each, *member_args(fleet, each, hub))
            assert "STATUS: deployed" in result.output
            assert f'This cluster joins the fleet as "{fleet.clusters[each].name}"' in result.output
            for component in ("watcher", "applier"):
                agent = await kubectl.json(each, "get", "deployment", f"llm-operator-{component}", "-n", NAMESPACE)
                # Admitted under "restricted" (a violation would leave the ReplicaSet without pods).
                assert agent["status"].get("readyReplicas") == 1, agent["status"]
            releases = json.loads((await helm(fleet, each, "list", "-n", NAMESPACE, "-o", "json")).stdout)
            assert [(r["name"], r["status"]) for r in releases] == [(RELEASE, "deployed")]

        # The watcher and the applier of one cluster, exactly as the chart runs them: each Deployment's args and
        # env, authenticated as its own ServiceAccount; the tenant policy from the chart's ConfigMap.
        policy = await kubectl.json(role, "get", "configmap", "llm-operator-policy", "-n", NAMESPACE)
        policy_file = tmp_path / "policy.json"
        policy_file.write_text(policy["data"]["policy.json"])
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("LLMOP_") and k != "KUBECONFIG"}
        commands: dict[str, tuple[list[str | Path], dict[str, str]]] = {}
        ports: dict[str, int] = {}
        for component in ("watcher", "applier"):
            deployment = await kubectl.json(role, "get", "deployment", f"llm-operator-{component}", "-n", NAMESPACE)
            pod = deployment["spec"]["template"]["spec"]
            container = pod["containers"][0]
            assert pod["serviceAccountName"] == f"llm-operator-{component}"
            token = (await kubectl(role, "create", "token", pod["serviceAccountName"], "-n", NAMESPACE)).strip()
            kubeconfig = service_account_kubeconfig(fleet, role, token, tmp_path / f"{component}.kubeconfig")
            env = {**base_env, **{e["name"]: e["value"] for e in container["env"] if "value" in e}}
            assert env["LLMOP_NATS_URL"] == hub.nats_url
            assert env["LLMOP_SUBJECT_PREFIX"] == hub.subjects.prefix
            # The chart mounts the seed from its Secret there; here the same seed is read from the hub's copy.
            assert env["LLMOP_NATS_NKEY_SEED"] == "/etc/llm-operator/nats-nkey/nats.nk"
            secret = await kubectl.json(role, "get", "secret", "llm-operator-nats-nkey", "-n", NAMESPACE)
            seed_file = hub.seed(fleet.clusters[role].name)
            assert base64.b64decode(secret["data"]["nats.nk"]).decode() == seed_file.read_text().strip()
            env["LLMOP_NATS_NKEY_SEED"] = str(seed_file)
            env["LLMOP_TENANT_POLICY"] = str(policy_file)  # the pod's mount of the ConfigMap
            env["LLMOP_LOAD_INTERVAL_SECONDS"] = "0"  # kwok pods serve no HTTP: no packets to their made-up addresses
            # In a pod each process has the chart's metrics port to itself; here they all run on one host.
            ports[component] = _free_port()
            env["LLMOP_METRICS_PORT"] = str(ports[component])
            # Only this test's namespace (other tests share the fleet); the chart's default is all namespaces.
            cmd = [OPERATOR, *container["args"], "--context", "chart-sa", "--kubeconfig", kubeconfig, "-n", namespace]
            commands[component] = (cmd, env)
        planner_env = {
            **commands["watcher"][1],
            "LLMOP_DATABASE_URL": hub.database_url,
            "LLMOP_NATS_NKEY_SEED": str(hub.seed("hub")),
            "LLMOP_HEARTBEAT_TIMEOUT_SECONDS": "10",
            "LLMOP_METRICS_PORT": str(_free_port()),
            "LLMOP_PLAN_SIGNING_KEY": str(signing_key()[0]),
        }
        planner_log, watcher_log, agent_log = (tmp_path / f"{n}.log" for n in ("planner", "watcher", "applier"))

        def logs() -> str:
            return (
                f"\n--- watcher log:\n{tail(watcher_log)}\n--- applier log:\n{tail(agent_log)}"
                f"\n--- planner log:\n{tail(planner_log)}"
            )

        async with (
            process([OPERATOR, "planner", "--migrate"], env=planner_env, log=planner_log) as planner,
            process(commands["watcher"][0], env=commands["watcher"][1], log=watcher_log) as watcher_proc,
            process(commands["applier"][0], env=commands["applier"][1], log=agent_log) as agent_proc,
        ):
            await kubectl(role, "apply", "-n", namespace, "-f", str(SEED / "model.yaml"))
            await kubectl(role, "apply", "-n", namespace, "-f", str(SEED / "deployment.yaml"))

            async def workload() -> dict[str, Any] | None:
                assert planner.returncode is None, f"the planner exited{logs()}"
                assert agent_proc.returncode is None, f"the applier exited{logs()}"
                assert watcher_proc.returncode is None, f"the watcher exited{logs()}"
                return await kubectl.get(role, "deployment", "chat-service", "-n", namespace)

            try:
                # The planner starts, migrates a new database and creates the streams first: slow on a busy machine.
                created = await eventually(workload, timeout=120, what="Deployment chat-service")
                service = await eventually(
                    lambda: kubectl.get(role, "service", "chat-service", "-n", namespace), timeout=20, what="Service"
                )

                async def ready() -> dict[str, Any] | None:
                    llmd = await kubectl.get(role, "llmdeployment", "chat-service", "-n", namespace)
                    conditions = {c["type"]: c["status"] for c in (llmd or {}).get("status", {}).get("conditions", [])}
                    return llmd if conditions.get("Ready") == "True" else None

                llmd = await eventually(ready, timeout=60, what="the LLMDeployment to report Ready")
            except BaseException as exc:
                raise AssertionError(f"{exc}{logs()}") from exc
            assert created["spec"]["replicas"] == 2
            assert created["spec"]["template"]["spec"]["containers"][0]["image"] == "your-registry/gpt-small:v1"
            assert [p["port"] for p in service["spec"]["ports"]] == [8080]
            assert llmd["metadata"]["finalizers"] == ["llm.example.com/cleanup"]
            assert llmd["status"]["placements"][0]["cluster"] == fleet.clusters[role].name
            # The probes the chart declares: each component, with the chart's identity, is alive and ready.
            async with aiohttp.ClientSession() as session:
                for port in ports.values():
                    for path in ("/healthz", "/readyz"):
                        async with session.get(f"http://127.0.0.1:{port}{path}") as response:
                            assert response.status == 200, f"{path}: {await response.text()}"

            # Deleting it: the applier prunes the workload and releases its finalizer.
            await kubectl(role, "delete", "-n", namespace, "-f", str(SEED / "deployment.yaml"), "--wait=false")

            async def cleaned_up() -> bool:
                kinds = ("llmdeployment", "deployment", "service")
                return all([await kubectl.get(role, k, "chat-service", "-n", namespace) is None for k in kinds])

            try:
                await eventually(cleaned_up, timeout=60, what="the workload and the LLMDeployment to be gone")
            except BaseException as exc:
                raise AssertionError(f"{exc}{logs()}") from exc
        for text in (agent_log.read_text(), watcher_log.read_text(), planner_log.read_text()):
            assert "forbidden" not in text.lower(), logs()

        # What each ServiceAccount may do, and nothing more.
        await assert_permissions(kubectl, role, "llm-operator-watcher", WATCHER_ALLOWED, WATCHER_DENIED)
        await assert_permissions(kubectl, role, "llm-operator-applier", APPLIER_ALLOWED, APPLIER_DENIED)
    finally:
        for each in fleet.clusters:
            await uninstall(fleet, each)
            await restore_crd_ownership(kubectl, each)


# -------------------------------------------------------------------- least privilege split, upgrade, uninstall

WATCHER_ALLOWED = ["list nodes", "watch pods", "watch llmmodels", "watch llmdeployments", "watch deployments"]
WATCHER_DENIED = [
    "get nodes",
    "create deployments default",
    "patch deployments default",
    "delete deployments default",
    "create services default",
    "patch llmdeployments default",
    "patch llmdeployments/status default",
    "create events default",
    "create namespaces",
    "get secrets",
]
APPLIER_ALLOWED = [
    "create deployments default",
    "patch deployments default",
    "delete deployments default",
    "list deployments default",
    "create services default",
    "create persistentvolumeclaims default",
    "create networkpolicies.networking.k8s.io default",
    "create poddisruptionbudgets.policy default",
    "create horizontalpodautoscalers.autoscaling default",
    "create endpointslices.discovery.k8s.io default",
    "delete endpointslices.discovery.k8s.io default",
    "get namespaces",
    "patch llmdeployments default",
    "patch llmdeployments/status default",
    "create events default",
]
APPLIER_DENIED = [
    "create namespaces",  # the default tenant policy creates none
    "patch namespaces",
    "list nodes",
    "watch pods",
    "watch deployments",
    "watch llmdeployments",
    "list llmmodels",
    "delete llmdeployments default",
    "delete namespaces",
    "get secrets",
    "create pods default",
    "get endpointslices.discovery.k8s.io default",  # listed by label, never read one by one
    "watch endpointslices.discovery.k8s.io default",
]


async def test_split_roles_upgrade_and_uninstall_keeps_crds_and_custom_resources(
    kubectl: Kubectl, namespace: str
) -> None:
    fleet, role = kubectl.fleet, "mixed"
    try:
        await install(kubectl, role, *member_args(fleet, role))
        # By default, the watcher and the applier each hold only their own role.
        deployments = await kubectl.json(role, "get", "deployments", "-n", NAMESPACE)
        assert sorted(d["metadata"]["name"] for d in deployments["items"]) == [
            "llm-operator-applier",
            "llm-operator-watcher",
        ]
        await assert_permissions(kubectl, role, "llm-operator-watcher", WATCHER_ALLOWED, WATCHER_DENIED)
        await assert_permissions(kubectl, role, "llm-operator-applier", APPLIER_ALLOWED, APPLIER_DENIED)

        # A user's resources, which the release must never take with it.
        await kubectl(role, "apply", "-n", namespace, "-f", str(SEED / "model.yaml"))
        await kubectl(role, "apply", "-n", namespace, "-f", str(SEED / "deployment.yaml"))

        # Upgrade 1: new cluster labels reach the agents' command lines.
        await helm(
            fleet, role, "upgrade", RELEASE, CHART, "--namespace", NAMESPACE, "--reuse-values",
            "--set", "cluster.labels.tier=gold", "--wait", "--timeout", "2m",
        )  # fmt: skip
        agent = await kubectl.json(role, "get", "deployment", "llm-operator-watcher", "-n", NAMESPACE)
        args = agent["spec"]["template"]["spec"]["containers"][0]["args"]
        labels = dict(item.split("=") for item in args[args.index("--labels") + 1].split(","))
        assert labels == {**fleet.clusters[role].labels, "tier": "gold"}
        assert agent["status"].get("updatedReplicas") == 1

        # Upgrade 2: watchNamespaces confines both to that namespace (Roles there; only Nodes/Pods cluster-wide).
        await helm(
            fleet, role, "upgrade", RELEASE, CHART, "--namespace", NAMESPACE, "--reuse-values",
            "--set", f"agent.watchNamespaces[0]={namespace}", "--wait", "--timeout", "2m",
        )  # fmt: skip
        await assert_permissions(
            kubectl, role, "llm-operator-watcher",
            allowed=["list nodes", "watch pods", f"watch llmdeployments {namespace}", f"watch deployments {namespace}"],
            denied=["watch llmdeployments", "watch llmdeployments default", "watch deployments default"],
        )  # fmt: skip
        await assert_permissions(
            kubectl, role, "llm-operator-applier",
            allowed=[f"create deployments {namespace}", f"patch llmdeployments/status {namespace}"],
            denied=["create deployments default", "create deployments kube-system", "create services kube-system",
                    "patch llmdeployments/status default", "create namespaces", "list namespaces"],
        )  # fmt: skip

        # Upgrade 3: one process under one account again is one switch.
        await helm(
            fleet, role, "upgrade", RELEASE, CHART, "--namespace", NAMESPACE, "--reuse-values",
            "--set", "agent.split=false", "--set-json", "agent.watchNamespaces=[]", "--wait", "--timeout", "2m",
        )  # fmt: skip
        deployments = await kubectl.json(role, "get", "deployments", "-n", NAMESPACE)
        assert [d["metadata"]["name"] for d in deployments["items"]] == ["llm-operator-agent"]
        await assert_permissions(
            kubectl, role, "llm-operator-agent", [*WATCHER_ALLOWED, *APPLIER_ALLOWED], ["create namespaces"]
        )
        assert await kubectl.get(role, "serviceaccount", "llm-operator-watcher", "-n", NAMESPACE) is None

        history = json.loads((await helm(fleet, role, "history", RELEASE, "-n", NAMESPACE, "-o", "json")).stdout)
        assert [h["revision"] for h in history] == [1, 2, 3, 4]

        await uninstall(fleet, role)
        for kind, name in (
            ("clusterrole", "llm-operator-watcher"),
            ("clusterrole", "llm-operator-applier"),
            ("clusterrolebinding", "llm-operator-applier"),
        ):
            assert await kubectl.get(role, kind, name) is None, f"{kind}/{name} survived the uninstall"

        async def release_gone() -> bool:
            selector = f"app.kubernetes.io/instance={RELEASE}"
            left = await kubectl.json(role, "get", "all,serviceaccounts,secrets", "-n", NAMESPACE, "-l", selector)
            return not left["items"]

        await eventually(release_gone, timeout=30, what="the release's objects to be gone")
        for crd in ("llmmodels.llm.example.com", "llmdeployments.llm.example.com"):
            assert await kubectl.get(role, "crd", crd) is not None, f"{crd} was deleted"
        assert await kubectl.get(role, "llmmodel", "gpt-small", "-n", namespace) is not None
        assert await kubectl.get(role, "llmdeployment", "chat-service", "-n", namespace) is not None
    finally:
        await uninstall(fleet, role)
        await restore_crd_ownership(kubectl, role)
