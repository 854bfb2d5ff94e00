-- edgelb schema, version 1. Never edit an applied migration: add a new one.
-- Times are unix seconds (INTEGER). Addresses are 16-byte BLOBs (IPv4 mapped into ::ffff:0:0/96)
-- so they sort numerically and one PRIMARY KEY forbids a duplicate address across all pools.

CREATE TABLE pools (
    name            TEXT PRIMARY KEY NOT NULL,
    ranges          TEXT NOT NULL,              -- JSON array of range strings, as given
    auto_assign     INTEGER NOT NULL CHECK (auto_assign IN (0, 1)),
    avoid_buggy_ips INTEGER NOT NULL CHECK (avoid_buggy_ips IN (0, 1)),
    priority        INTEGER NOT NULL,
    clusters        TEXT NOT NULL,              -- JSON array
    namespaces      TEXT NOT NULL,              -- JSON array
    scheduler       TEXT NOT NULL,
    hold_seconds    INTEGER NOT NULL CHECK (hold_seconds >= 0),
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
) STRICT;

CREATE TABLE clusters (
    name          TEXT PRIMARY KEY NOT NULL,
    description   TEXT NOT NULL DEFAULT '',
    created_at    INTEGER NOT NULL,
    last_contact  INTEGER,
    agent_version TEXT
) STRICT;

CREATE TABLE services (
    cluster    TEXT NOT NULL REFERENCES clusters (name) ON DELETE RESTRICT,
    namespace  TEXT NOT NULL,
    name       TEXT NOT NULL,
    uid        TEXT NOT NULL,
    spec       TEXT,                            -- JSON ServiceSpec; NULL when only reserved by a sync
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (cluster, namespace, name)
) STRICT;

CREATE TABLE addresses (
    ip             BLOB PRIMARY KEY NOT NULL CHECK (length(ip) = 16),
    pool           TEXT NOT NULL REFERENCES pools (name) ON DELETE RESTRICT,
    cluster        TEXT NOT NULL,
    sharing_key    TEXT,
    state          TEXT NOT NULL CHECK (state IN ('allocated', 'held')),
    held_namespace TEXT,
    held_name      TEXT,
    held_uid       TEXT,
    held_until     INTEGER,
    since          INTEGER NOT NULL,
    CHECK ((state = 'held') = (held_until IS NOT NULL))
) STRICT;
CREATE INDEX addresses_pool ON addresses (pool, state);
CREATE INDEX addresses_cluster ON addresses (cluster);

-- Which Service uses which address; several rows for one address when it is shared.
CREATE TABLE service_addresses (
    cluster   TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name      TEXT NOT NULL,
    ip        BLOB NOT NULL REFERENCES addresses (ip) ON DELETE RESTRICT,
    PRIMARY KEY (cluster, namespace, name, ip),
    FOREIGN KEY (cluster, namespace, name) REFERENCES services (cluster, namespace, name) ON DELETE CASCADE
) STRICT;
CREATE INDEX service_addresses_ip ON service_addresses (ip);

CREATE TABLE nodes (
    cluster     TEXT NOT NULL REFERENCES clusters (name) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    addresses   TEXT NOT NULL,                  -- JSON array of addresses
    ready       INTEGER NOT NULL,
    schedulable INTEGER NOT NULL,
    excluded    INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (cluster, name)
) STRICT;

CREATE TABLE tokens (
    id           TEXT PRIMARY KEY NOT NULL,
    name         TEXT NOT NULL,
    role         TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'viewer', 'agent')),
    cluster      TEXT REFERENCES clusters (name) ON DELETE CASCADE,
    secret_hash  BLOB NOT NULL,                 -- SHA-256 of the secret; the secret is random, 256 bits
    created_by   TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER,
    CHECK ((role = 'agent') = (cluster IS NOT NULL))
) STRICT;

CREATE TABLE users (
    name          TEXT PRIMARY KEY NOT NULL,
    password_hash TEXT NOT NULL,                -- argon2 PHC string
    role          TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    created_at    INTEGER NOT NULL
) STRICT;

CREATE TABLE audit (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    time   INTEGER NOT NULL,
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,
    object TEXT NOT NULL,
    before TEXT,                                -- JSON
    after  TEXT                                 -- JSON
) STRICT;
CREATE INDEX audit_time ON audit (time);
CREATE INDEX audit_actor ON audit (actor, id);
CREATE INDEX audit_object ON audit (object, id);
