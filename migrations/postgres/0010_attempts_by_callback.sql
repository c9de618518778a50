-- `deliveries` loses its index by callback. A delivery's claim and its attempt's record
-- each change columns its other indexes cover (its status, its next attempt), so
-- PostgreSQL writes a new entry for the new row version in every index of the table:
-- `deliveries_callback` took three entries per delivery (its insert, claim and record).
--
-- What read deliveries by callback reads other indexes. A callback's latest attempts:
-- `attempts_callback`, of each attempt by the callback it was made to, which is the part
-- of its delivery's id (`{event}_{callback}`, ids have no other `_`) after the `_`; one
-- entry per attempt, written once, and the log is not rewritten to add a column. Its
-- failed deliveries, to re-deliver them: `deliveries_failed_callback`, whose entries are
-- written only when a delivery gives up. Its waiting deliveries (on deleting it):
-- `deliveries_due_callback`.
--
-- Building `attempts_callback` reads the log, which is locked for writes meanwhile.
CREATE INDEX attempts_callback ON attempts ((substr(delivery_id, strpos(delivery_id, '_') + 1)), id);
CREATE INDEX deliveries_failed_callback ON deliveries (callback_id) WHERE status = 'failed';
DROP INDEX deliveries_callback;
