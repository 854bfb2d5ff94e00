-- edgelb schema, version 5: a pool's forwarding method. Never edit an applied migration: add a
-- new one. NULL (every existing pool) means the appliance's default (`--nat`), as before.

ALTER TABLE pools ADD COLUMN forwarding TEXT
    CHECK (forwarding IS NULL OR forwarding IN ('fullnat', 'nat', 'direct', 'tunnel'));
