"""SQLAlchemy table definitions: the event log, projections, the outbox and bookkeeping.

Guarantees: these tables mirror exactly what the alembic migrations create (a test compares them); nothing here
creates or alters the schema at runtime (partitions of ``events`` are added and dropped by `store.retention`, and
are left out of the comparison: `PARTITION_PREFIX`). Projections are disposable: every row in them can be rebuilt
by folding ``events`` in position order (`store.replay`), except ``clusters.last_heartbeat_at``, which heartbeats
refresh without logging (their meaning is logged as ClusterJoined/ClusterHealthChanged).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    Table,
    Text,
    UniqueConstraint,
    and_,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

TZ = DateTime(timezone=True)

# ------------------------------------------------------------------------------------------------ the event log

events = Table(
    "events",
    metadata,
    # Position is assigned inside a transaction that holds the writers' advisory lock, so position order is
    # commit order and a reader tailing `position > last` never skips a row committed later with a smaller one.
    # It takes its default from a sequence (no identity: PostgreSQL 16 has none on partitioned tables).
    Column("position", BigInteger, nullable=False, server_default=text("nextval('events_position_seq'::regclass)")),
    Column("event_id", Text, nullable=False),
    Column("stream_id", Text, nullable=False),
    Column("stream_version", Integer, nullable=False),
    Column("type", Text, nullable=False),
    Column("schema_version", SmallInteger, nullable=False),
    Column("cluster", Text, nullable=False),
    Column("payload", JSONB, nullable=False),
    Column("metadata", JSONB, nullable=False),
    Column("occurred_at", TZ, nullable=False),
    Column("recorded_at", TZ, nullable=False, server_default=func.now()),
    # cluster/kind/uid of the object an observation is about (NULL for other events): a later observation of the
    # same object supersedes an earlier one, and replay finds the last of each with one index walk.
    Column("object_key", Text),
    # audit | observation | snapshot (store.recorder.retention_of): with recorded_at, the partition key. The
    # table is partitioned by RANGE (retention, recorded_at) (migration 0007): audit by month, observations by
    # day, so a prune drops whole partitions of observations and never touches audit events.
    Column("retention", Text, nullable=False),
    # Unique keys must hold the partition key: event ids and stream versions are kept unique in `event_ids` and
    # `event_streams` instead.
    PrimaryKeyConstraint("position", "retention", "recorded_at"),
    CheckConstraint("retention IN ('audit', 'observation', 'snapshot')", name="ck_events_retention"),
    Index("ix_events_type_occurred_at", "type", "occurred_at"),
    Index("ix_events_occurred_at", "occurred_at"),
    Index("ix_events_object_key_position", "object_key", "position", postgresql_where=text("object_key IS NOT NULL")),
    Index("ix_events_unkeyed_position", "position", postgresql_where=text("object_key IS NULL")),
    Index("ix_events_stream_id_stream_version", "stream_id", "stream_version"),
)

# Every stored event's id, one index probe away: what keeps appends idempotent (store.recorder.append).
event_ids = Table("event_ids", metadata, Column("event_id", Text, primary_key=True))

# Each stream's last version, moved by compare-and-set under the writers' lock.
event_streams = Table(
    "event_streams",
    metadata,
    Column("stream_id", Text, primary_key=True),
    Column("version", Integer, nullable=False),
)

# Per retention class, the time before which its events were dropped by a prune (store.retention).
event_horizons = Table(
    "event_horizons",
    metadata,
    Column("retention", Text, primary_key=True),
    Column("kept_from", TZ, nullable=False),
    Column("pruned_at", TZ, nullable=False, server_default=func.now()),
)

# The projections copied at a log position (store.snapshots), so a fold up to a past time starts near it.
projection_snapshots = Table(
    "projection_snapshots",
    metadata,
    Column("position", BigInteger, primary_key=True, autoincrement=False),
    Column("recorded_until", TZ, nullable=False),
    Column("taken_at", TZ, nullable=False, server_default=func.now()),
    Column("fingerprint", Text, nullable=False),
    Column("rows", Integer, nullable=False),
)
# One row per projection table of a snapshot (its rows as a JSON array), so a look needing few tables reads only those.
projection_snapshot_tables = Table(
    "projection_snapshot_tables",
    metadata,
    Column(
        "position",
        BigInteger,
        ForeignKey(
            "projection_snapshots.position",
            name="fk_projection_snapshot_tables_position_projection_snapshots",
            ondelete="CASCADE",
        ),
        primary_key=True,
    ),
    Column("name", Text, primary_key=True),
    Column("rows", Integer, nullable=False),
    Column("state", Text, nullable=False),
)

PARTITION_PREFIX = "events_"
"""Partitions of `events` are named events_<class>[_<time>] (events_default, events_snapshot): tables the
models do not describe."""


# -------------------------------------------------------------------------------------------------- projections
# The projections the fold rewrites in place keep free room on each page (fillfactor 70, migration 0004), so an
# update is heap-only and touches no index; alembic does not compare storage parameters.

clusters = Table(
    "clusters",
    metadata,
    Column("name", Text, primary_key=True),
    Column("labels", JSONB, nullable=False),
    Column("healthy", Boolean, nullable=False),
    Column("health_reason", Text, nullable=False),
    Column("joined_at", TZ, nullable=False),
    Column("health_changed_at", TZ, nullable=False),
    Column("last_heartbeat_at", TZ),
    # The network the cluster declared (api.network.ClusterNetwork as JSON); NULL: undeclared (flat, no ranges).
    Column("network", JSONB),
)

nodes = Table(
    "nodes",
    metadata,
    Column("cluster", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("uid", Text, nullable=False),
    Column("labels", JSONB, nullable=False),
    Column("gpu_product", Text),
    Column("gpu_memory_bytes", BigInteger, nullable=False),
    Column("gpu_allocatable", Integer, nullable=False),
    Column("cpu_allocatable_m", BigInteger, nullable=False),
    Column("memory_allocatable_bytes", BigInteger, nullable=False),
    Column("ready", Boolean, nullable=False),
    Column("schedulable", Boolean, nullable=False),
    Column("taints", JSONB, nullable=False),
    Column("updated_at", TZ, nullable=False),
    PrimaryKeyConstraint("cluster", "name"),
)

pods = Table(
    "pods",
    metadata,
    Column("cluster", Text, nullable=False),
    Column("namespace", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("uid", Text, nullable=False),
    Column("node_name", Text),
    Column("phase", Text, nullable=False),
    Column("ready", Boolean, nullable=False),
    Column("gpu_request", Integer, nullable=False),
    Column("cpu_request_m", BigInteger, nullable=False),
    Column("memory_request_bytes", BigInteger, nullable=False),
    Column("deployment_key", Text),
    Column("updated_at", TZ, nullable=False),
    Column("pod_ip", Text),
    PrimaryKeyConstraint("cluster", "namespace", "name"),
    Index("ix_pods_deployment_key", "deployment_key"),
)

services = Table(
    "services",
    metadata,
    Column("cluster", Text, nullable=False),
    Column("namespace", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("uid", Text, nullable=False),
    Column("deployment_key", Text),
    Column("service_type", Text, nullable=False),
    Column("port", Integer),
    Column("node_port", Integer),
    Column("ingress", JSONB, nullable=False),
    Column("updated_at", TZ, nullable=False),
    PrimaryKeyConstraint("cluster", "namespace", "name"),
    Index("ix_services_deployment_key", "deployment_key"),
)

models = Table(
    "models",
    metadata,
    Column("cluster", Text, nullable=False),
    Column("namespace", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("uid", Text, nullable=False),
    Column("generation", BigInteger, nullable=False),
    Column("spec", JSONB, nullable=False),
    Column("updated_at", TZ, nullable=False),
    PrimaryKeyConstraint("cluster", "namespace", "name"),
)

deployments = Table(
    "deployments",
    metadata,
    Column("origin_cluster", Text, nullable=False),
    Column("namespace", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("uid", Text, nullable=False),
    Column("generation", BigInteger, nullable=False),
    Column("spec", JSONB, nullable=False),
    Column("labels", JSONB, nullable=False),
    Column("deleting", Boolean, nullable=False),
    Column("has_finalizer", Boolean, nullable=False),
    Column("observed_status", JSONB, nullable=False),
    Column("created_at", TZ, nullable=False),
    Column("updated_at", TZ, nullable=False),
    PrimaryKeyConstraint("origin_cluster", "namespace", "name"),
)

# The planner's own bookkeeping per deployment, folded only from the planner's events (never from observations),
# so it survives the LLMDeployment being deleted and recreated (plan sequences keep growing) and a rebuild that
# skips superseded observations cannot lose it.
deployment_plans = Table(
    "deployment_plans",
    metadata,
    Column("origin_cluster", Text, nullable=False),
    Column("namespace", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("plan_sequence", Integer, nullable=False, server_default="0"),
    Column("last_status", JSONB),
    Column("last_outcome", Text),
    Column("last_decision_at", TZ),
    PrimaryKeyConstraint("origin_cluster", "namespace", "name"),
)

placements = Table(
    "placements",
    metadata,
    Column("origin_cluster", Text, nullable=False),
    Column("namespace", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("cluster", Text, nullable=False),
    Column("replicas", Integer, nullable=False),
    # active: part of the current placement; retiring: kept running until its replacement is Available (a lost
    # cluster, or a cluster the policy no longer selects); removing: a removal plan was issued.
    Column("role", Text, nullable=False),
    Column("gpu_type", Text),
    Column("nodes", JSONB, nullable=False),
    Column("replica_gpus", Integer, nullable=False),
    Column("replica_cpu_m", BigInteger, nullable=False),
    Column("replica_memory_bytes", BigInteger, nullable=False),
    Column("plan_id", Text),
    Column("epoch", BigInteger),
    Column("sequence", Integer),
    Column("planned_at", TZ, nullable=False),
    Column("applied_plan_id", Text),
    Column("apply_outcome", Text),
    Column("apply_message", Text),
    Column("applied_at", TZ),
    PrimaryKeyConstraint("origin_cluster", "namespace", "name", "cluster"),
    Index("ix_placements_cluster", "cluster"),
)

workloads = Table(
    "workloads",
    metadata,
    Column("cluster", Text, nullable=False),
    Column("namespace", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("uid", Text, nullable=False),
    Column("origin_cluster", Text),
    Column("deployment_namespace", Text),
    Column("deployment_name", Text),
    Column("plan_id", Text),
    Column("replicas", Integer, nullable=False),
    Column("ready_replicas", Integer, nullable=False),
    Column("available_replicas", Integer, nullable=False),
    Column("updated_replicas", Integer, nullable=False),
    Column("observed_generation", BigInteger, nullable=False),
    Column("generation", BigInteger, nullable=False),
    Column("updated_at", TZ, nullable=False),
    PrimaryKeyConstraint("cluster", "namespace", "name"),
    Index("ix_workloads_origin", "origin_cluster", "deployment_namespace", "deployment_name"),
)

plans = Table(
    "plans",
    metadata,
    Column("plan_id", Text, primary_key=True),
    Column("kind", Text, nullable=False),
    Column("cluster", Text, nullable=False),
    Column("origin_cluster", Text, nullable=False),
    Column("namespace", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("epoch", BigInteger, nullable=False),
    Column("sequence", Integer, nullable=False),
    Column("replicas", Integer),
    Column("payload", JSONB, nullable=False),
    Column("issued_at", TZ, nullable=False),
    Index("ix_plans_deployment", "origin_cluster", "namespace", "name"),
)

apply_results = Table(
    "apply_results",
    metadata,
    Column("plan_id", Text, nullable=False),
    Column("cluster", Text, nullable=False),
    Column("origin_cluster", Text, nullable=False),
    Column("namespace", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("outcome", Text, nullable=False),
    Column("message", Text, nullable=False),
    Column("objects", JSONB, nullable=False),
    Column("finished_at", TZ, nullable=False),
    PrimaryKeyConstraint("plan_id", "cluster"),
)

# ------------------------------------------------------------------------------------------------- bookkeeping

outbox = Table(
    "outbox",
    metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    Column("plan_id", Text, nullable=False, unique=True),
    Column("subject", Text, nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("created_at", TZ, nullable=False, server_default=func.now()),
    Column("sent_at", TZ),
    # Why the relay gave up on this plan for good (too large for the bus); such a row is never sent.
    Column("parked_reason", Text),
)
Index(
    "ix_outbox_unsent",
    outbox.c.id,
    postgresql_where=and_(outbox.c.sent_at.is_(None), outbox.c.parked_reason.is_(None)),
)

consumer_positions = Table(
    "consumer_positions",
    metadata,
    # The last JetStream stream sequence whose effects are committed, per consumer: a redelivered message at or
    # below it is acknowledged and skipped.
    Column("consumer", Text, primary_key=True),
    Column("stream_sequence", BigInteger, nullable=False),
    Column("updated_at", TZ, nullable=False, server_default=func.now()),
)

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    Column("consumer", Text, nullable=False),
    Column("subject", Text, nullable=False),
    Column("stream_sequence", BigInteger),
    Column("reason", Text, nullable=False),
    Column("raw", LargeBinary, nullable=False),
    Column("received_at", TZ, nullable=False, server_default=func.now()),
    UniqueConstraint("consumer", "stream_sequence"),
)

planner_epochs = Table(
    "planner_epochs",
    metadata,
    Column("epoch", BigInteger, Identity(always=False), primary_key=True),
    Column("holder", Text, nullable=False),
    Column("acquired_at", TZ, nullable=False, server_default=func.now()),
)

PROJECTION_TABLES = (
    clusters,
    nodes,
    pods,
    services,
    models,
    deployments,
    deployment_plans,
    placements,
    workloads,
    plans,
    apply_results,
)
