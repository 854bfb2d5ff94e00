-- edgelb schema, version 2: console sessions. Never edit an applied migration: add a new one.
-- A session is found by the SHA-256 of its cookie secret; the secret itself is never stored.
-- Deleting a user ends their sessions.

CREATE TABLE console_sessions (
    id_hash    BLOB PRIMARY KEY NOT NULL CHECK (length(id_hash) = 32),
    user       TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    csrf       TEXT NOT NULL,                   -- per-session token every console form carries
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
) STRICT;
CREATE INDEX console_sessions_user ON console_sessions (user);
CREATE INDEX console_sessions_expiry ON console_sessions (expires_at);
