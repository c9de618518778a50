-- Callbacks, and the deliveries of events to them with every attempt.

CREATE TABLE callbacks (
    id              TEXT PRIMARY KEY,
    marketplace_id  TEXT NOT NULL REFERENCES marketplaces (id),
    url             TEXT NOT NULL,
    method          TEXT NOT NULL CHECK (method IN ('post', 'put', 'get')),
    revision        TEXT NOT NULL,
    enabled         BOOLEAN NOT NULL,
    disabled_reason TEXT,
    -- The signing secret (`whsec_...`): needed in clear to sign, so never logged or shown
    -- again after creation or rotation.
    secret          TEXT NOT NULL,
    -- After a rotation the old secret signs too until this time.
    previous_secret TEXT,
    previous_secret_expires_at BIGINT,
    last_success_at BIGINT,
    -- Start of the current run of failures (NULL after a success).
    failing_since   BIGINT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    deleted_at      BIGINT
);
CREATE UNIQUE INDEX callbacks_url ON callbacks (marketplace_id, url, method) WHERE deleted_at IS NULL;

-- The event types a callback wants; none listed means all.
CREATE TABLE callback_event_types (
    callback_id TEXT NOT NULL REFERENCES callbacks (id),
    event_type  TEXT NOT NULL,
    PRIMARY KEY (callback_id, event_type)
);

-- One per (event, callback), written in the event's own transaction. Its id is the
-- `webhook-id` receivers dedupe on.
CREATE TABLE deliveries (
    id               TEXT PRIMARY KEY,
    event_id         TEXT NOT NULL REFERENCES events (id),
    callback_id      TEXT NOT NULL REFERENCES callbacks (id),
    marketplace_id   TEXT NOT NULL,
    -- pending (never tried), retrying, succeeded, failed (no retries left)
    status           TEXT NOT NULL CHECK (status IN ('pending', 'retrying', 'succeeded', 'failed')),
    attempts         BIGINT NOT NULL DEFAULT 0,
    -- The retry schedule restarts on a re-delivery by hand: it counts attempts from
    -- `schedule_base` and its maximum age from `schedule_start`.
    schedule_base    BIGINT NOT NULL DEFAULT 0,
    schedule_start   BIGINT NOT NULL,
    next_attempt_at  BIGINT,
    lease_token      TEXT,
    lease_expires_at BIGINT,
    last_attempt_at  BIGINT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);
-- Due work only: the claim query's index stays as small as the backlog of due work.
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status IN ('pending', 'retrying');
CREATE INDEX deliveries_callback ON deliveries (callback_id, id);
CREATE INDEX deliveries_event_status ON deliveries (event_id, status);

CREATE TABLE attempts (
    id               BIGSERIAL PRIMARY KEY,
    delivery_id      TEXT NOT NULL REFERENCES deliveries (id),
    attempt          BIGINT NOT NULL,
    started_at       BIGINT NOT NULL,
    duration_us      BIGINT NOT NULL,
    request_headers  TEXT NOT NULL,
    request_body     TEXT NOT NULL,
    response_status  BIGINT,
    response_headers TEXT,
    response_body    TEXT,
    -- For attempts without a usable answer: timeout, connect, dns, tls, blocked,
    -- body-too-large.
    error_code       TEXT,
    error_detail     TEXT,
    succeeded        BOOLEAN NOT NULL
);
CREATE INDEX attempts_delivery ON attempts (delivery_id, attempt);
CREATE INDEX attempts_started ON attempts (started_at);

-- Wakes dispatchers (LISTEN hookline_deliveries) when new deliveries commit. Per row, so an
-- event no callback wants wakes nobody; PostgreSQL sends one notification per transaction.
CREATE FUNCTION hookline_notify_deliveries() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('hookline_deliveries', '');
    RETURN NULL;
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER deliveries_notify AFTER INSERT ON deliveries
    FOR EACH ROW EXECUTE FUNCTION hookline_notify_deliveries();

-- Event filters: by type, and by time.
CREATE INDEX events_type ON events (marketplace_id, type, id);
CREATE INDEX events_time ON events (marketplace_id, occurred_at);
