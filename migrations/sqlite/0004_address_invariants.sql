-- edgelb schema, version 4: the database itself refuses an address given to two Services that do
-- not share it, so no writer (a bug in the allocator, a hand edit) can hand one address out
-- twice. The allocator already never does; this is the last line, as the primary key on
-- addresses (ip) is for an address allocated twice. Never edit an applied migration: add a new one.
--
-- A link from a Service to an address needs the address allocated (not held) for that
-- Service's cluster, and, when another Service already uses it, a sharing key on the address.

CREATE TRIGGER service_addresses_need_an_allocated_address
BEFORE INSERT ON service_addresses
FOR EACH ROW
WHEN NOT EXISTS (SELECT 1 FROM addresses a
                 WHERE a.ip = NEW.ip AND a.state = 'allocated' AND a.cluster = NEW.cluster)
BEGIN
    SELECT RAISE(ABORT, 'edgelb: address not allocated to this cluster');
END;

CREATE TRIGGER service_addresses_are_shared_only_by_key
BEFORE INSERT ON service_addresses
FOR EACH ROW
WHEN EXISTS (SELECT 1 FROM service_addresses s
             WHERE s.ip = NEW.ip
               AND NOT (s.cluster = NEW.cluster AND s.namespace = NEW.namespace AND s.name = NEW.name))
 AND (SELECT a.sharing_key FROM addresses a WHERE a.ip = NEW.ip) IS NULL
BEGIN
    SELECT RAISE(ABORT, 'edgelb: address held by another Service without a sharing key');
END;

-- The same two rules seen from the address: it loses its sharing key, or goes on hold, only
-- when no second Service (respectively no Service at all) still uses it.
CREATE TRIGGER addresses_keep_the_key_while_shared
BEFORE UPDATE OF sharing_key ON addresses
FOR EACH ROW
WHEN NEW.sharing_key IS NULL
 AND (SELECT COUNT(*) FROM service_addresses s WHERE s.ip = NEW.ip) > 1
BEGIN
    SELECT RAISE(ABORT, 'edgelb: address held by another Service without a sharing key');
END;

CREATE TRIGGER addresses_go_on_hold_unused
BEFORE UPDATE OF state ON addresses
FOR EACH ROW
WHEN NEW.state = 'held' AND EXISTS (SELECT 1 FROM service_addresses s WHERE s.ip = NEW.ip)
BEGIN
    SELECT RAISE(ABORT, 'edgelb: address on hold while a Service uses it');
END;
