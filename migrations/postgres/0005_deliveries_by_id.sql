-- A delivery's id is its event's and its callback's (`{event}_{callback}`), so an event's
-- deliveries are found by id, one probe per callback of its marketplace, and deliveries
-- keep one index fewer up to date on every insert, claim and attempt record.
DROP INDEX deliveries_event;
CREATE INDEX callbacks_marketplace ON callbacks (marketplace_id);
