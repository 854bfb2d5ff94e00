-- edgelb schema, version 6, PostgreSQL dialect: capacity thresholds per pool (see `../sqlite/`).
-- Never edit an applied migration: add a new one. Every existing pool gets the defaults, 80 %
-- (warning) and 95 % (critical).

ALTER TABLE pools ADD COLUMN capacity_warning_percent BIGINT NOT NULL DEFAULT 80
    CHECK (capacity_warning_percent BETWEEN 1 AND 99);
ALTER TABLE pools ADD COLUMN capacity_critical_percent BIGINT NOT NULL DEFAULT 95
    CHECK (capacity_critical_percent BETWEEN 2 AND 100 AND capacity_critical_percent > capacity_warning_percent);
