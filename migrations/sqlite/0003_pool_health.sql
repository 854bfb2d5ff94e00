-- edgelb schema, version 3: per-pool health-check overrides. Never edit an applied migration: add
-- a new one. NULL (every existing pool) means the pool overrides nothing: its Services take the
-- appliance's defaults, as before.

ALTER TABLE pools ADD COLUMN health TEXT CHECK (health IS NULL OR json_valid(health)); -- JSON HealthOverrides
