-- MQTT store-and-forward spool, per-source sequence numbers, command audit (issue 8).

-- Messages that must reach the broker: events (never dropped) and QoS 1 samples
-- (dropped first, oldest first, when the spool is full). AUTOINCREMENT: an id is
-- never reused, so "everything after id N" stays meaningful across deletes.
CREATE TABLE telemetry_spool (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    kind TEXT NOT NULL,
    is_event INTEGER NOT NULL
);
CREATE INDEX telemetry_spool_samples ON telemetry_spool (is_event, id);

-- The last sequence number given to each source, committed with its event.
CREATE TABLE telemetry_seq (
    source TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
);

-- Drop counters, published on the spool topic.
CREATE TABLE telemetry_counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);

-- Every command received, its origin and its outcome.
CREATE TABLE command_audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    command TEXT NOT NULL,
    request_id TEXT,
    origin TEXT NOT NULL,
    payload BLOB,
    outcome TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT ''
);

-- Devices taken out of service by an operator (the scheduler gives them no work).
CREATE TABLE device_service (
    device_id TEXT PRIMARY KEY,
    in_service INTEGER NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    ts REAL NOT NULL
);
