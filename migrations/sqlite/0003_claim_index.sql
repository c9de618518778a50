-- Faster claims. A claim now moves a delivery's `next_attempt_at` to its lease's expiry,
-- so deliveries in flight leave the due range; move those claimed before this version
-- there too.
UPDATE deliveries SET next_attempt_at = lease_expires_at
WHERE status IN ('pending', 'retrying') AND lease_expires_at > next_attempt_at;

-- The due index also carries what a claim filters on (the callback) and returns (the id),
-- so finding due work reads the index alone.
DROP INDEX deliveries_due;
CREATE INDEX deliveries_due ON deliveries (next_attempt_at, callback_id, id)
WHERE status IN ('pending', 'retrying');

-- One callback's due work, for a dispatcher refilling a busy callback's share.
CREATE INDEX deliveries_due_callback ON deliveries (callback_id, next_attempt_at)
WHERE status IN ('pending', 'retrying');
