-- edgelb schema, version 5, PostgreSQL dialect: forwarding methods (see `../sqlite/`). Never edit
-- an applied migration: add a new one. A pool's method: NULL means the appliance's default. A node
-- that cannot take IP-in-IP tunnel traffic: 0 means it can.

ALTER TABLE pools ADD COLUMN forwarding TEXT
    CHECK (forwarding IS NULL OR forwarding IN ('fullnat', 'nat', 'direct', 'tunnel'));
ALTER TABLE nodes ADD COLUMN no_tunnel BIGINT NOT NULL DEFAULT 0;
