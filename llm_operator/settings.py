"""Configuration: one pydantic `Settings`, from flags and ``LLMOP_*`` environment variables.

Guarantees: every knob has a default that runs the local fleet with embedded NATS and Postgres; invalid values
fail at start-up with the variable's name in the message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from api.network import Cidr, ClusterNetwork, NetworkMode
from bus.streams import StreamLimits, StreamRole
from bus.subjects import valid_cluster_name


def default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "llm-operator"


class StreamLimitSettings(BaseModel):
    """JetStream limits of one stream; an unset field keeps the stream's own value (our default at creation)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_bytes: int | None = Field(default=None, ge=-1)
    """Total bytes the stream keeps (-1: unlimited)."""
    max_age_days: float | None = Field(default=None, ge=0)
    """Messages older than this are removed (0: kept forever)."""
    max_msgs: int | None = Field(default=None, ge=-1)
    max_msgs_per_subject: int | None = Field(default=None, ge=-1)
    """Messages kept per subject, i.e. per member cluster (-1: unlimited)."""
    discard: Literal["old", "new"] | None = None
    """At a limit: drop the oldest messages, or refuse new ones (publishers then retry)."""

    def limits(self) -> StreamLimits:
        return StreamLimits(
            max_bytes=self.max_bytes,
            max_age_seconds=None if self.max_age_days is None else self.max_age_days * 86400.0,
            max_msgs=self.max_msgs,
            max_msgs_per_subject=self.max_msgs_per_subject,
            discard=self.discard,
        )


class Settings(BaseSettings):
    """Settings shared by every command. Environment variables are LLMOP_<NAME> (e.g. LLMOP_NATS_URL)."""

    model_config = SettingsConfigDict(env_prefix="LLMOP_", extra="ignore")

    nats_url: str | None = None
    """NATS server URL, e.g. nats://hub:4222. Unset: start an embedded NATS with JetStream in data_dir."""
    nats_credentials: Path | None = None
    """NATS credentials file (.creds) for the connection, if the server requires one."""
    database_url: str | None = None
    """Postgres URL (postgresql://user:pass@host/db). Unset: start an embedded Postgres in data_dir."""
    data_dir: Path = Field(default_factory=default_data_dir)
    """Where embedded NATS and Postgres keep their data."""
    subject_prefix: str = "fleet"
    """Prefix of NATS subjects and stream names (isolates several installations on one NATS)."""
    kubeconfig: Path | None = None
    """Kubeconfig file with the member clusters' contexts (default: $KUBECONFIG or ~/.kube/config)."""
    namespaces: list[str] = Field(default_factory=list)
    """Namespaces whose LLMModels/LLMDeployments are watched; empty: all namespaces."""
    connect_wait_seconds: float = Field(default=30.0, ge=0)
    """At start, how long to keep trying a NATS that does not answer before giving up with an error."""
    heartbeat_seconds: float = Field(default=2.0, gt=0)
    """How often each watcher heartbeats its cluster."""
    heartbeat_timeout_seconds: float = Field(default=10.0, gt=0)
    """Silence after which the planner marks a cluster Unhealthy and fails its deployments over."""
    recovery_hold_seconds: float = Field(default=5.0, ge=0)
    """How long an Unhealthy cluster stays Unhealthy at least, even if heartbeats resume (no flapping)."""
    unschedulable_seconds: float = Field(default=60.0, gt=0)
    """Replicas the cluster's scheduler has left Pending this long are placed elsewhere (no pods parked Pending)."""
    applier_workers: int = Field(default=8, ge=1, le=256)
    """Plans of different LLMDeployments each cluster's applier executes at once (one deployment's plans always
    run one at a time, in order)."""
    applier_max_attempts: int = Field(default=10, ge=1, le=1000)
    """Tries of a plan that keeps failing transiently (apiserver unreachable, 5xx) before the applier reports it
    Failed (the deployment's status then says ApplyFailed); retries back off exponentially up to 30s."""
    resync_seconds: float = Field(default=600.0, gt=0)
    """Full relist period of every watch."""
    load_interval_seconds: float = Field(default=10.0, ge=0, le=60)
    """How often each member cluster's agent reads its model replicas' inference metrics and publishes a load
    observation per LLMDeployment (1 to 60 s; 0: off, and the fleet autoscaler sees no load)."""
    prometheus_url: str | None = None
    """A Prometheus-compatible query API (Prometheus, Thanos, Mimir, VictoriaMetrics) the agent asks for the
    replicas' metrics instead of scraping the pods, e.g. http://prometheus.monitoring:9090."""
    metrics_port: int = Field(default=0, ge=0, le=65535)
    """Port of /metrics, /healthz and /readyz (0: off)."""
    # --- How other clusters reach this cluster's model replicas (issue 18, api.network) ----------------------
    network_mode: NetworkMode | None = None
    """flat (pod IPs routable between clusters: Cilium ClusterMesh, Submariner, VPC-native pods), exposed (the
    model's Service here is a LoadBalancer/NodePort) or mcs (the Multi-Cluster Services API is installed). The
    agent reports it with every heartbeat. Unset (and no pod ranges): undeclared."""
    network_pod_cidrs: list[Cidr] = Field(default_factory=list, max_length=16)
    """This cluster's pod ranges, JSON list (e.g. '["10.244.0.0/16"]'): serving clusters admit clients from these
    ranges to the models placed from here (NetworkPolicy), and nothing more."""
    # --- JetStream stream limits -----------------------------------------------------------------------------
    stream_limits: dict[StreamRole, StreamLimitSettings] = Field(default_factory=dict)
    """Limits per stream ("events", "plans", "dead-letters"), as JSON, e.g. LLMOP_STREAM_LIMITS='{"events":
    {"max_bytes": 10737418240, "max_age_days": 3}}'. The planner creates missing streams with these (defaults: 7
    days for events and plans, 30 for dead letters); on an existing stream it applies only what is set here and
    leaves limits tuned elsewhere alone."""
    # --- Event store retention (issue 15; store/retention.py, docs/architecture.md "Retention") ---------------
    observation_retention_days: float = Field(default=7.0, ge=0)
    """How long raw observations (Node, Pod and Deployment snapshots, load observations) stay in the event log,
    in days; whole days are dropped (the last observation of each object is kept, so replay still rebuilds the
    current state). 0: keep them forever. Specs, decisions, plans, applies and cluster health are audit events:
    they are never pruned (their monthly partitions can be detached and archived by hand)."""
    retention_check_seconds: float = Field(default=3600.0, gt=0)
    """How often the planner creates the coming partitions of the log and prunes (one day's partition per run
    at most, so a backlog of days is worked off at a bounded rate)."""
    projection_snapshot_events: int = Field(default=2000, ge=0)
    """The leading planner copies the projections into a projection snapshot (store.snapshots) once this many
    events were recorded since the last one (0: by time only), so `history --as-of` and the dashboard's "as of"
    fold only the log after the nearest snapshot (~2,000 events: ~0.2 s at 10,000 deployments)."""
    projection_snapshot_seconds: float = Field(default=900.0, ge=0)
    """... and at least this often when anything was recorded. 0: no snapshots at all (every look at the past
    folds the whole log). Kept: every snapshot of the last hour, then the first of each hour for a day, then the
    first of each day."""
    partition_days_ahead: int = Field(default=2, ge=1, le=60)
    """How many days of observation partitions the planner keeps created ahead (a DEFAULT partition catches
    anything else, so an insert never fails)."""
    # ---------------------------------------------------------------------------------------------------------
    # ---- trust: signed plans and the tenant policy (issue 16)
    plan_signing_key: Path | None = None
    """The planner's Ed25519 private key (PEM; `llm-operator keys generate`). Only the hub has it. Unset: the
    key in data_dir (plan-signing.pem), generated on first use (local runs)."""
    plan_public_keys: list[str] = Field(default_factory=list)
    """Public keys (ed25519:<base64>) whose signed plans the appliers execute; list two while rotating keys.
    Unset: the planner's own key when it runs in the same process (`llm-operator up`); an agent alone refuses
    to start without one."""
    plan_max_epoch_jump: int = Field(default=10_000, ge=1)
    """Appliers refuse a plan whose planner epoch is more than this above the highest they have seen."""
    tenant_policy: Path | None = None
    """YAML/JSON file with the tenant policy (api.policy.TenantPolicy: rules, reservedNamespaces). Unset: any
    origin may place into any cluster, reserved namespaces refused, missing namespaces not created."""
    operator_namespace: str | None = None
    """The operator's own namespace (refused by the tenant policy); the chart sets it."""

    log_format: str = "text"
    """text or json."""
    log_level: str = "INFO"

    # --- Security: identities on the bus, TLS, where the operations endpoint listens (issue 16) ---------------
    nats_nkey_seed: Path | None = None
    """This process's NATS identity: an nkey seed file (`llm-operator bus add-cluster NAME` makes one per cluster;
    the planner's is named "hub"). Used by every component of the process."""
    nats_identities_dir: Path | None = None
    """A directory with a seed per identity, <identity>/nats.nk, for a process that runs several (`llm-operator up`:
    the planner as hub/nats.nk, each cluster as <cluster>/nats.nk). Unset with embedded NATS:
    <data_dir>/bus/<subject_prefix>."""
    nats_auth: bool = True
    """The embedded NATS requires an identity of every client (turn off only to debug)."""
    nats_tls_ca: Path | None = None
    """CA bundle (PEM) that signed the NATS server's certificate; setting it (or a client certificate) turns TLS on."""
    nats_tls_cert: Path | None = None
    """Client certificate (PEM) for NATS servers that verify clients (mutual TLS)."""
    nats_tls_key: Path | None = None
    """Private key (PEM) of nats_tls_cert."""
    nats_tls_hostname: str | None = None
    """Name to check the NATS server's certificate against, when it differs from the URL's host."""
    database_tls_ca: Path | None = None
    """CA bundle (PEM) that signed Postgres's certificate; setting it (or a client certificate) turns TLS on,
    with the server's certificate and host name verified."""
    database_tls_cert: Path | None = None
    """Client certificate (PEM) for Postgres servers that verify clients (hostssl ... cert)."""
    database_tls_key: Path | None = None
    """Private key (PEM) of database_tls_cert."""
    metrics_host: str = "127.0.0.1"
    """Address /metrics, /healthz and /readyz listen on; 0.0.0.0 to let a kubelet or Prometheus reach them."""

    @model_validator(mode="after")
    def _tls_pairs(self) -> Settings:
        for cert, key, what in (
            (self.nats_tls_cert, self.nats_tls_key, "nats_tls"),
            (self.database_tls_cert, self.database_tls_key, "database_tls"),
        ):
            if (cert is None) != (key is None):
                raise ValueError(f"{what}_cert and {what}_key go together: set both or neither")
        return self

    def cluster_network(self) -> ClusterNetwork | None:
        """What this agent declares about its cluster's network (None: nothing declared)."""
        if self.network_mode is None and not self.network_pod_cidrs:
            return None
        return ClusterNetwork(mode=self.network_mode or "flat", pod_cidrs=list(self.network_pod_cidrs))

    @field_validator("log_format")
    @classmethod
    def _format(cls, value: str) -> str:
        if value not in ("text", "json"):
            raise ValueError("log_format must be text or json")
        return value


def parse_cluster(value: str) -> tuple[str, str]:
    """'name=context' or 'context' (the name is then derived from the context)."""
    name, sep, context = value.partition("=")
    if not sep:
        context = value
        name = context.removeprefix("kwok-").lower().replace("_", "-").replace(".", "-")
    if not valid_cluster_name(name):
        raise ValueError(f"invalid cluster name {name!r}: use a DNS label (lowercase letters, digits, '-')")
    return name, context


def parse_labels(value: str) -> dict[str, str]:
    """'k=v,k2=v2' -> dict."""
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in value.split(","))):
        key, sep, val = part.partition("=")
        if not sep or not key:
            raise ValueError(f"invalid label {part!r}: expected key=value")
        out[key] = val
    return out
