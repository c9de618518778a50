-- `deliveries` loses its index by callback (as on PostgreSQL, where it took an entry at a
-- delivery's insert, claim and record; here at its insert).
--
-- What read deliveries by callback reads other indexes. A callback's latest attempts:
-- `attempts_callback`, of each attempt by the callback it was made to, which is the part
-- of its delivery's id (`{event}_{callback}`, ids have no other `_`) after the `_`. Its
-- failed deliveries, to re-deliver them: `deliveries_failed_callback`, whose entries are
-- written only when a delivery gives up. Its waiting deliveries (on deleting it):
-- `deliveries_due_callback`.
CREATE INDEX attempts_callback ON attempts (substr(delivery_id, instr(delivery_id, '_') + 1), id);
CREATE INDEX deliveries_failed_callback ON deliveries (callback_id) WHERE status = 'failed';
DROP INDEX deliveries_callback;
