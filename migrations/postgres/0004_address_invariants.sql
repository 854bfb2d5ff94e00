-- edgelb schema, version 4, PostgreSQL dialect: the database itself refuses an address given to
-- two Services that do not share it (see `../sqlite/` for the rules, which are the same, with the
-- same messages). Never edit an applied migration: add a new one.
--
-- PostgreSQL allows no subquery in a trigger's WHEN, so each rule is checked in its function.
-- Several appliances write at once here: a link first locks its address's row (FOR UPDATE), and
-- so does every update of that row, so two transactions linking one address, or one linking while
-- another puts it on hold, run one after the other and the second sees what the first committed.

CREATE FUNCTION edgelb_service_address_rules() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    addr addresses%ROWTYPE;
BEGIN
    SELECT * INTO addr FROM addresses WHERE ip = NEW.ip FOR UPDATE;
    IF NOT FOUND OR addr.state <> 'allocated' OR addr.cluster <> NEW.cluster THEN
        RAISE EXCEPTION 'edgelb: address not allocated to this cluster';
    END IF;
    IF addr.sharing_key IS NULL AND EXISTS (
        SELECT 1 FROM service_addresses s
        WHERE s.ip = NEW.ip
          AND NOT (s.cluster = NEW.cluster AND s.namespace = NEW.namespace AND s.name = NEW.name)) THEN
        RAISE EXCEPTION 'edgelb: address held by another Service without a sharing key';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER service_addresses_rules
BEFORE INSERT ON service_addresses
FOR EACH ROW EXECUTE FUNCTION edgelb_service_address_rules();

-- The same two rules seen from the address: it loses its sharing key, or goes on hold, only
-- when no second Service (respectively no Service at all) still uses it.
CREATE FUNCTION edgelb_address_rules() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.sharing_key IS NULL
       AND (SELECT COUNT(*) FROM service_addresses s WHERE s.ip = NEW.ip) > 1 THEN
        RAISE EXCEPTION 'edgelb: address held by another Service without a sharing key';
    END IF;
    IF NEW.state = 'held' AND EXISTS (SELECT 1 FROM service_addresses s WHERE s.ip = NEW.ip) THEN
        RAISE EXCEPTION 'edgelb: address on hold while a Service uses it';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER addresses_rules
BEFORE UPDATE OF sharing_key, state ON addresses
FOR EACH ROW EXECUTE FUNCTION edgelb_address_rules();
