-- A callback's health is read without walking its attempt log. Counting its attempts of
-- the last day, and finding its last failure, walked all its attempts of the day (a
-- healthy callback's failures: all its attempts), about a second a million.
--
-- `attempt_counts`: each callback's attempts by the minute they started (microseconds
-- / 60,000,000), every attempt logged counted once, as each batch of attempts is recorded.
-- An hour's counts are 61 rows at most.
CREATE TABLE attempt_counts (
    callback_id TEXT COLLATE "C" NOT NULL,
    minute      BIGINT NOT NULL,
    succeeded   BIGINT NOT NULL,
    failed      BIGINT NOT NULL,
    PRIMARY KEY (callback_id, minute)
);

-- From the log as it stands: the last day's counts, and each callback's last failure
-- (the log does not say which attempts kept their lease: its last failed attempt).
-- Both read the log before `callbacks` is altered, which locks it until the end.
INSERT INTO attempt_counts (callback_id, minute, succeeded, failed)
SELECT d.callback_id, a.started_at / 60000000,
    COUNT(*) FILTER (WHERE a.succeeded), COUNT(*) FILTER (WHERE NOT a.succeeded)
FROM attempts a JOIN deliveries d ON d.id = a.delivery_id
WHERE a.started_at >= CAST(EXTRACT(EPOCH FROM now()) * 1000000 AS BIGINT) - 90000000000
GROUP BY d.callback_id, a.started_at / 60000000;

CREATE TEMPORARY TABLE last_failures ON COMMIT DROP AS
SELECT a.started_at, a.delivery_id, d.callback_id FROM attempts a
JOIN deliveries d ON d.id = a.delivery_id
WHERE a.id IN (SELECT MAX(a2.id) FROM attempts a2 JOIN deliveries d2 ON d2.id = a2.delivery_id
               WHERE NOT a2.succeeded GROUP BY d2.callback_id);

-- The last failure among the attempts that kept their lease (those its health is made
-- of): when it started, and its delivery, whose attempts are few.
ALTER TABLE callbacks ADD COLUMN last_failure_at BIGINT,
    ADD COLUMN last_failure_delivery_id TEXT COLLATE "C";

UPDATE callbacks SET last_failure_at = f.started_at, last_failure_delivery_id = f.delivery_id
FROM last_failures f WHERE callbacks.id = f.callback_id;
