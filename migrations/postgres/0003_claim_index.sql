-- Faster claims. A claim now moves a delivery's `next_attempt_at` to its lease's expiry,
-- so deliveries in flight leave the due range; move those claimed before this version
-- there too.
UPDATE deliveries SET next_attempt_at = lease_expires_at
WHERE status IN ('pending', 'retrying') AND lease_expires_at > next_attempt_at;

-- The due index also carries what a claim filters on (the callback) and returns (the id).
DROP INDEX deliveries_due;
CREATE INDEX deliveries_due ON deliveries (next_attempt_at, callback_id, id)
WHERE status IN ('pending', 'retrying');

-- One notification per statement that inserted deliveries, not a trigger call per row.
DROP TRIGGER deliveries_notify ON deliveries;
CREATE OR REPLACE FUNCTION hookline_notify_deliveries() RETURNS trigger AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM new_deliveries) THEN
        PERFORM pg_notify('hookline_deliveries', '');
    END IF;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER deliveries_notify AFTER INSERT ON deliveries
    REFERENCING NEW TABLE AS new_deliveries
    FOR EACH STATEMENT EXECUTE FUNCTION hookline_notify_deliveries();

-- One callback's due work, for a dispatcher refilling a busy callback's share.
CREATE INDEX deliveries_due_callback ON deliveries (callback_id, next_attempt_at)
WHERE status IN ('pending', 'retrying');
