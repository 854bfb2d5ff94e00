-- edgelb schema, version 7: the history of every address. Never edit an applied migration: add a
-- new one.
--
-- One row per thing that happened to an address, written by triggers in the transaction that
-- changed it, so no write path (a PUT alone or in a group commit, a release, an agent's sync, a
-- hold expiring, a pool edit) can forget one:
--   assigned   a Service starts using it (its first user, or one more sharing it)
--   released   a Service stops using it (others may still share it)
--   held       its last user released it: held back for that Service until held_until
--   reused     a held address is allocated again (to the Service it was held for, or after the
--              hold ended, to another); namespace/name/uid say whom it was held for
--   freed      back in its pool, free for anyone
--   expired    a hold ended and the address went back to its pool
-- Addresses in use or held when this migration runs get one `assigned` or `held` row each, at
-- the time their row says.

CREATE TABLE address_events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    ip         BLOB NOT NULL CHECK (length(ip) = 16),
    at         INTEGER NOT NULL,
    event      TEXT NOT NULL CHECK (event IN ('assigned', 'released', 'held', 'reused', 'freed', 'expired')),
    pool       TEXT,
    cluster    TEXT,
    namespace  TEXT,
    name       TEXT,
    uid        TEXT,
    held_until INTEGER
) STRICT;
CREATE INDEX address_events_ip ON address_events (ip, id);
CREATE INDEX address_events_service ON address_events (name, namespace, cluster, id);

CREATE TRIGGER address_assigned AFTER INSERT ON service_addresses BEGIN
    INSERT INTO address_events (ip, at, event, pool, cluster, namespace, name, uid)
    VALUES (NEW.ip, unixepoch(), 'assigned', (SELECT pool FROM addresses WHERE ip = NEW.ip),
            NEW.cluster, NEW.namespace, NEW.name,
            (SELECT uid FROM services WHERE cluster = NEW.cluster AND namespace = NEW.namespace AND name = NEW.name));
END;

CREATE TRIGGER address_released AFTER DELETE ON service_addresses BEGIN
    INSERT INTO address_events (ip, at, event, pool, cluster, namespace, name, uid)
    VALUES (OLD.ip, unixepoch(), 'released', (SELECT pool FROM addresses WHERE ip = OLD.ip),
            OLD.cluster, OLD.namespace, OLD.name,
            (SELECT uid FROM services WHERE cluster = OLD.cluster AND namespace = OLD.namespace AND name = OLD.name));
END;

CREATE TRIGGER address_held AFTER UPDATE OF state ON addresses
WHEN OLD.state = 'allocated' AND NEW.state = 'held' BEGIN
    INSERT INTO address_events (ip, at, event, pool, cluster, namespace, name, uid, held_until)
    VALUES (NEW.ip, unixepoch(), 'held', NEW.pool, NEW.cluster, NEW.held_namespace, NEW.held_name, NEW.held_uid,
            NEW.held_until);
END;

CREATE TRIGGER address_reused AFTER UPDATE OF state ON addresses
WHEN OLD.state = 'held' AND NEW.state = 'allocated' BEGIN
    INSERT INTO address_events (ip, at, event, pool, cluster, namespace, name, uid, held_until)
    VALUES (NEW.ip, unixepoch(), 'reused', NEW.pool, OLD.cluster, OLD.held_namespace, OLD.held_name, OLD.held_uid,
            OLD.held_until);
END;

CREATE TRIGGER address_gone AFTER DELETE ON addresses BEGIN
    INSERT INTO address_events (ip, at, event, pool, cluster, held_until)
    VALUES (OLD.ip, unixepoch(), CASE OLD.state WHEN 'held' THEN 'expired' ELSE 'freed' END, OLD.pool, OLD.cluster,
            OLD.held_until);
END;

-- Backfill: the addresses in use or held now.
INSERT INTO address_events (ip, at, event, pool, cluster, namespace, name, uid)
SELECT a.ip, a.since, 'assigned', a.pool, sa.cluster, sa.namespace, sa.name, s.uid
FROM service_addresses sa
JOIN addresses a ON a.ip = sa.ip
LEFT JOIN services s ON s.cluster = sa.cluster AND s.namespace = sa.namespace AND s.name = sa.name
ORDER BY a.since, a.ip;
INSERT INTO address_events (ip, at, event, pool, cluster, namespace, name, uid, held_until)
SELECT ip, since, 'held', pool, cluster, held_namespace, held_name, held_uid, held_until
FROM addresses WHERE state = 'held' ORDER BY since, ip;
