-- Fewer indexes to keep up on every claim and attempt record. Due work is found through
-- `deliveries_due_callback`, one probe per callback, so the global due order is not kept.
-- An event has few deliveries: their statuses are read from the rows, and the event's
-- index no longer changes with each status.
DROP INDEX deliveries_due;
DROP INDEX deliveries_event_status;
CREATE INDEX deliveries_event ON deliveries (event_id);
