-- edgelb schema, version 5: forwarding methods. Never edit an applied migration: add a new one.
-- A pool's method: NULL (every existing pool) means the appliance's default (`--nat`), as before.
-- A node that cannot take IP-in-IP tunnel traffic: 0 (every existing node) means it can.

ALTER TABLE pools ADD COLUMN forwarding TEXT
    CHECK (forwarding IS NULL OR forwarding IN ('fullnat', 'nat', 'direct', 'tunnel'));
ALTER TABLE nodes ADD COLUMN no_tunnel INTEGER NOT NULL DEFAULT 0;
