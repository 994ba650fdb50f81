"""the event log is partitioned by retention class and recorded time, so old observations are dropped whole

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02

`events` becomes a table partitioned by RANGE (retention, recorded_at):
- `retention` is a new column, 'audit' | 'observation' | 'snapshot' (store.recorder.retention_of): observations
  are ResourceObserved/ResourceDeleted of Nodes, Pods and Deployments, and LoadObserved; everything else (specs of
  the custom resources, decisions, plans, applies, cluster health, resyncs, refusals) is audit. 'snapshot' holds
  the last observation of each object that a prune kept (store.retention).
- partitions: audit by calendar month (kept forever: a month can be detached and archived without touching the
  rest), observations by UTC day (dropped whole by `llm-operator store prune`), one snapshot partition, and a
  DEFAULT partition as the safety net, so no insert ever fails for want of a partition (store.retention moves its
  rows out when the planner creates the partition they belong to).

Uniqueness. A unique index on a partitioned table must contain the partition key, so `event_id` and
(`stream_id`, `stream_version`) cannot stay unique on `events` itself: a redelivered event recorded a day later
would land in another partition and pass any index that includes the time. Instead:
- `event_ids` (event_id primary key) holds the id of every stored event; the recorder looks ids up there and
  writes them in the same transaction as the events, so appends stay idempotent with one index probe per id
  (probing every partition's index would cost one probe per partition). A prune deletes the ids of the rows it
  drops, never of the rows it keeps.
- `event_streams` (stream_id primary key, version) holds each stream's last version; the recorder moves it by
  compare-and-set, so a writer breaking the writers' lock fails on pk_event_streams or on the set, as it failed on
  uq_events_stream_id_stream_version before. Versions keep counting after a prune.
The primary key becomes (position, retention, recorded_at): position is still unique (one sequence), and the
indexes the code reads by (object_key/position, unkeyed position, type/occurred_at, occurred_at, stream) are
kept as partitioned indexes. PostgreSQL 16 has no identity columns on partitioned tables: position takes its
default from the sequence `events_position_seq`, owned by the column (pg_get_serial_sequence still finds it).

Existing rows are copied into the partitions with their positions, times and ids; the reporting views that read
`events` are re-pointed at the new table with their definitions unchanged.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | None = None
depends_on: str | None = None

COLUMNS = (
    "position, event_id, stream_id, stream_version, type, schema_version, cluster, payload, metadata, "
    "occurred_at, recorded_at, object_key"
)
# The rule of store.recorder.retention_of, in SQL (a snapshot: the recorder's rule may grow, this migration not).
RETENTION_SQL = (
    "CASE WHEN type = 'LoadObserved' OR (type IN ('ResourceObserved', 'ResourceDeleted') "
    "AND payload->>'kind' IN ('Node', 'Pod', 'Deployment')) THEN 'observation' ELSE 'audit' END"
)
INDEXES = (
    "CREATE INDEX ix_events_type_occurred_at ON events (type, occurred_at)",
    "CREATE INDEX ix_events_occurred_at ON events (occurred_at)",
    "CREATE INDEX ix_events_object_key_position ON events (object_key, position) WHERE object_key IS NOT NULL",
    "CREATE INDEX ix_events_unkeyed_position ON events (position) WHERE object_key IS NULL",
    "CREATE INDEX ix_events_stream_id_stream_version ON events (stream_id, stream_version)",
)


def _views(bind: sa.Connection, table: str) -> dict[str, str]:
    """Views that read `table`, with their definitions."""
    found = bind.execute(
        sa.text(
            "SELECT DISTINCT v.relname, pg_get_viewdef(v.oid) FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid "
            "JOIN pg_class v ON v.oid = r.ev_class "
            "WHERE d.refobjid = CAST(:t AS regclass) AND v.oid <> CAST(:t AS regclass)"
        ),
        {"t": table},
    ).all()
    return {str(name): str(definition) for name, definition in found}


def _repoint(views: dict[str, str], old: str, new: str) -> None:
    pattern = re.compile(rf"\b{old}\b")
    for name, definition in views.items():
        op.execute(f"CREATE OR REPLACE VIEW {name} AS {pattern.sub(new, definition)}")


def _month(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _next_month(at: datetime) -> datetime:
    return _month(_month(at) + timedelta(days=32))


def _day(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def _partition(retention: str, name: str, start: datetime, end: datetime) -> None:
    op.execute(
        f"CREATE TABLE {name} PARTITION OF events FOR VALUES FROM ('{retention}', '{start.isoformat()}') "
        f"TO ('{retention}', '{end.isoformat()}')"
    )


def upgrade() -> None:
    bind = op.get_bind()
    op.execute("ALTER TABLE events RENAME TO events_unpartitioned")
    views = _views(bind, "events_unpartitioned")
    last = bind.execute(
        sa.text(
            "SELECT coalesce(max(position), 0), (SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END "
            "FROM events_position_seq) FROM events_unpartitioned"
        )
    ).one()
    start = max(int(last[0]), int(last[1])) + 1
    op.execute("ALTER TABLE events_unpartitioned DROP CONSTRAINT pk_events")
    op.execute("ALTER TABLE events_unpartitioned DROP CONSTRAINT uq_events_event_id")
    op.execute("ALTER TABLE events_unpartitioned DROP CONSTRAINT uq_events_stream_id_stream_version")
    for index in ("ix_events_type_occurred_at", "ix_events_occurred_at", "ix_events_object_key_position"):
        op.execute(f"DROP INDEX {index}")
    op.execute("DROP INDEX ix_events_unkeyed_position")
    op.execute("ALTER TABLE events_unpartitioned ALTER COLUMN position DROP IDENTITY")

    op.execute(f"CREATE SEQUENCE events_position_seq START WITH {start}")
    op.execute("""
        CREATE TABLE events (
            position bigint NOT NULL DEFAULT nextval('events_position_seq'),
            event_id text NOT NULL,
            stream_id text NOT NULL,
            stream_version integer NOT NULL,
            type text NOT NULL,
            schema_version smallint NOT NULL,
            cluster text NOT NULL,
            payload jsonb NOT NULL,
            metadata jsonb NOT NULL,
            occurred_at timestamptz NOT NULL,
            recorded_at timestamptz NOT NULL DEFAULT now(),
            object_key text,
            retention text NOT NULL,
            CONSTRAINT pk_events PRIMARY KEY (position, retention, recorded_at),
            CONSTRAINT ck_events_retention CHECK (retention IN ('audit', 'observation', 'snapshot'))
        ) PARTITION BY RANGE (retention, recorded_at)
    """)
    op.execute("ALTER SEQUENCE events_position_seq OWNED BY events.position")
    op.execute("CREATE TABLE events_default PARTITION OF events DEFAULT")
    op.execute(
        "CREATE TABLE events_snapshot PARTITION OF events "
        "FOR VALUES FROM ('snapshot', MINVALUE) TO ('snapshot', MAXVALUE)"
    )

    now = datetime.now(UTC)
    spans: dict[str, datetime] = dict(
        bind.execute(
            sa.text(
                f"SELECT r, min(recorded_at) FROM (SELECT {RETENTION_SQL} AS r, recorded_at "
                "FROM events_unpartitioned) s GROUP BY r"
            )
        ).all()
    )
    # Audit: every month from the oldest audit row to next month; observations: every day from the oldest to two
    # days ahead (the planner keeps creating them ahead; store.retention).
    month = _month(spans.get("audit") or now)
    while month <= _month(now) + timedelta(days=32):
        _partition("audit", f"events_audit_{month:%Y%m}", month, _next_month(month))
        month = _next_month(month)
    day = _day(spans.get("observation") or now)
    while day <= _day(now) + timedelta(days=2):
        _partition("observation", f"events_observation_{day:%Y%m%d}", day, day + timedelta(days=1))
        day += timedelta(days=1)

    op.execute(f"INSERT INTO events ({COLUMNS}, retention) SELECT {COLUMNS}, {RETENTION_SQL} FROM events_unpartitioned")
    for statement in INDEXES:
        op.execute(statement)

    op.execute("CREATE TABLE event_ids (event_id text NOT NULL, CONSTRAINT pk_event_ids PRIMARY KEY (event_id))")
    op.execute("INSERT INTO event_ids SELECT event_id FROM events_unpartitioned")
    op.execute(
        "CREATE TABLE event_streams (stream_id text NOT NULL, version integer NOT NULL, "
        "CONSTRAINT pk_event_streams PRIMARY KEY (stream_id))"
    )
    op.execute("INSERT INTO event_streams SELECT stream_id, max(stream_version) FROM events_unpartitioned GROUP BY 1")
    # What a prune dropped: per retention class, the time before which events of that class are no longer kept.
    op.execute(
        "CREATE TABLE event_horizons (retention text NOT NULL, kept_from timestamptz NOT NULL, "
        "pruned_at timestamptz NOT NULL DEFAULT now(), CONSTRAINT pk_event_horizons PRIMARY KEY (retention))"
    )

    _repoint(views, "events_unpartitioned", "events")
    op.execute("DROP TABLE events_unpartitioned")


def downgrade() -> None:
    bind = op.get_bind()
    op.execute("ALTER TABLE events RENAME TO events_partitioned")
    views = _views(bind, "events_partitioned")
    # Names the plain table takes back (index and sequence names are schema-wide).
    op.execute("ALTER TABLE events_partitioned DROP CONSTRAINT pk_events")
    for index in ("ix_events_type_occurred_at", "ix_events_occurred_at", "ix_events_object_key_position"):
        op.execute(f"DROP INDEX {index}")
    op.execute("DROP INDEX ix_events_unkeyed_position")
    op.execute("ALTER SEQUENCE events_position_seq RENAME TO events_partitioned_position_seq")
    op.create_table(
        "events",
        sa.Column("position", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("event_id", sa.Text(), nullable=False),
        sa.Column("stream_id", sa.Text(), nullable=False),
        sa.Column("stream_version", sa.Integer(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("schema_version", sa.SmallInteger(), nullable=False),
        sa.Column("cluster", sa.Text(), nullable=False),
        sa.Column("payload", sa.dialects.postgresql.JSONB(), nullable=False),
        sa.Column("metadata", sa.dialects.postgresql.JSONB(), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("object_key", sa.Text(), nullable=True),
    )
    # Snapshot rows are copies kept by a prune: their originals are gone, so they go back as ordinary rows.
    op.execute(f"INSERT INTO events ({COLUMNS}) SELECT {COLUMNS} FROM events_partitioned ORDER BY position")
    last = bind.scalar(sa.text("SELECT coalesce(max(position), 0) FROM events"))
    op.execute(f"ALTER TABLE events ALTER COLUMN position RESTART WITH {int(last or 0) + 1}")
    op.execute("ALTER TABLE events ADD CONSTRAINT pk_events PRIMARY KEY (position)")
    op.execute("ALTER TABLE events ADD CONSTRAINT uq_events_event_id UNIQUE (event_id)")
    op.execute(
        "ALTER TABLE events ADD CONSTRAINT uq_events_stream_id_stream_version UNIQUE (stream_id, stream_version)"
    )
    for statement in INDEXES[:4]:
        op.execute(statement)
    _repoint(views, "events_partitioned", "events")
    op.execute("DROP TABLE events_partitioned")  # its partitions and the sequence it owns go with it
    op.execute("DROP TABLE event_horizons")
    op.execute("DROP TABLE event_streams")
    op.execute("DROP TABLE event_ids")
