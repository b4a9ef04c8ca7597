"""The store's schema, as numbered migrations for each database: a store applies, in order and once, every
migration above the version its database records (``meta.schema_version``), and refuses a database newer than
itself. Both dialects describe the same tables; the event log is append-only in the database itself (a trigger
refuses every UPDATE and DELETE, and TRUNCATE on PostgreSQL)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Dialect = Literal["sqlite", "postgres"]

_SQLITE_V1 = """
CREATE TABLE IF NOT EXISTS pairs (
    name TEXT PRIMARY KEY, state TEXT NOT NULL, epoch INTEGER NOT NULL,
    primary_host TEXT, standby_host TEXT, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, pair TEXT, kind TEXT NOT NULL,
    reason TEXT NOT NULL, data TEXT NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS intents (
    id INTEGER PRIMARY KEY AUTOINCREMENT, pair TEXT NOT NULL, kind TEXT NOT NULL, created_at REAL NOT NULL,
    consumed_at REAL, outcome TEXT);
CREATE TABLE IF NOT EXISTS operations (
    id INTEGER PRIMARY KEY AUTOINCREMENT, pair TEXT NOT NULL, kind TEXT NOT NULL, step TEXT NOT NULL,
    started_at REAL NOT NULL, finished_at REAL, succeeded INTEGER, error TEXT, data TEXT NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS passes (
    pair TEXT NOT NULL, epoch INTEGER NOT NULL, seq INTEGER NOT NULL, snapshot_seq INTEGER,
    started_at REAL NOT NULL, finished_at REAL NOT NULL, files INTEGER NOT NULL, bytes INTEGER NOT NULL,
    bytes_sent INTEGER NOT NULL, copied INTEGER NOT NULL, deferred INTEGER NOT NULL,
    PRIMARY KEY (pair, epoch, seq));
CREATE TABLE IF NOT EXISTS hosts (
    provider TEXT NOT NULL, instance_id TEXT NOT NULL, pair TEXT NOT NULL, role TEXT NOT NULL,
    created_at REAL NOT NULL, released_at REAL, note TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (provider, instance_id));
CREATE TRIGGER IF NOT EXISTS events_append_only_update BEFORE UPDATE ON events
    BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS events_append_only_delete BEFORE DELETE ON events
    BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
"""

# Times are DOUBLE PRECISION (PostgreSQL's REAL is 4 bytes: a Unix time would lose its seconds).
_POSTGRES_V1 = """
CREATE TABLE IF NOT EXISTS pairs (
    name TEXT PRIMARY KEY, state TEXT NOT NULL, epoch BIGINT NOT NULL,
    primary_host TEXT, standby_host TEXT, updated_at DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, at DOUBLE PRECISION NOT NULL, pair TEXT,
    kind TEXT NOT NULL, reason TEXT NOT NULL, data TEXT NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS intents (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, pair TEXT NOT NULL, kind TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL, consumed_at DOUBLE PRECISION, outcome TEXT);
CREATE TABLE IF NOT EXISTS operations (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, pair TEXT NOT NULL, kind TEXT NOT NULL,
    step TEXT NOT NULL, started_at DOUBLE PRECISION NOT NULL, finished_at DOUBLE PRECISION, succeeded INTEGER,
    error TEXT, data TEXT NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS passes (
    pair TEXT NOT NULL, epoch BIGINT NOT NULL, seq BIGINT NOT NULL, snapshot_seq BIGINT,
    started_at DOUBLE PRECISION NOT NULL, finished_at DOUBLE PRECISION NOT NULL, files BIGINT NOT NULL,
    bytes BIGINT NOT NULL, bytes_sent BIGINT NOT NULL, copied INTEGER NOT NULL, deferred INTEGER NOT NULL,
    PRIMARY KEY (pair, epoch, seq));
CREATE TABLE IF NOT EXISTS hosts (
    provider TEXT NOT NULL, instance_id TEXT NOT NULL, pair TEXT NOT NULL, role TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL, released_at DOUBLE PRECISION, note TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (provider, instance_id));
CREATE OR REPLACE FUNCTION dumont_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN RAISE EXCEPTION 'the event log is append-only'; END $$;
CREATE OR REPLACE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION dumont_events_append_only();
CREATE OR REPLACE TRIGGER events_append_only_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION dumont_events_append_only();
"""


# A fleet: who owns each pair (a lease renewed by compare-and-set on ``version``), and which controller wrote each
# event (so a history shows that no two acted on one pair at once).
_SQLITE_V2 = """
CREATE TABLE IF NOT EXISTS leases (
    pair TEXT PRIMARY KEY, owner TEXT NOT NULL, version INTEGER NOT NULL, renewed_at REAL NOT NULL);
ALTER TABLE events ADD COLUMN controller TEXT NOT NULL DEFAULT '';
"""

_POSTGRES_V2 = """
CREATE TABLE IF NOT EXISTS leases (
    pair TEXT PRIMARY KEY, owner TEXT NOT NULL, version BIGINT NOT NULL, renewed_at DOUBLE PRECISION NOT NULL);
ALTER TABLE events ADD COLUMN IF NOT EXISTS controller TEXT NOT NULL DEFAULT '';
"""


@dataclass(frozen=True)
class Migration:
    """One step of the schema: its version, what it does, and its SQL for each database."""

    version: int
    what: str
    sqlite: str
    postgres: str

    def script(self, dialect: Dialect) -> str:
        """The step's SQL for ``dialect``."""
        return self.sqlite if dialect == "sqlite" else self.postgres


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "pairs, events (append-only), intents, operations, passes, hosts", _SQLITE_V1, _POSTGRES_V1),
    Migration(2, "leases on pairs; the controller that wrote each event", _SQLITE_V2, _POSTGRES_V2),
)
LATEST = MIGRATIONS[-1].version
