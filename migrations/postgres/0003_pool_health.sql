-- edgelb schema, version 3, PostgreSQL dialect: per-pool health-check overrides (see
-- `../sqlite/`). Never edit an applied migration: add a new one. NULL (every existing pool) means
-- the pool overrides nothing.

CREATE FUNCTION edgelb_json_valid(t TEXT) RETURNS BOOLEAN LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    PERFORM t::json;
    RETURN TRUE;
EXCEPTION WHEN others THEN
    RETURN FALSE;
END;
$$;

ALTER TABLE pools ADD COLUMN health TEXT CHECK (health IS NULL OR edgelb_json_valid(health)); -- JSON HealthOverrides
