-- edgelb schema, version 2, PostgreSQL dialect: console sessions (see `../sqlite/`). Never edit an
-- applied migration: add a new one. A session is found by the SHA-256 of its cookie secret; the
-- secret itself is never stored. Deleting a user ends their sessions. `user` is a reserved word
-- in PostgreSQL: queries write the column "user", which SQLite reads the same.

CREATE TABLE console_sessions (
    id_hash    BYTEA PRIMARY KEY NOT NULL CHECK (octet_length(id_hash) = 32),
    "user"     TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    csrf       TEXT NOT NULL,                   -- per-session token every console form carries
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX console_sessions_user ON console_sessions ("user");
CREATE INDEX console_sessions_expiry ON console_sessions (expires_at);
