-- The payments ledger and its transactional outbox.
-- Times are integer microseconds since the Unix epoch (UTC) on both backends, so one
-- set of SQL statements serves SQLite and PostgreSQL alike.

CREATE TABLE marketplaces (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    -- SHA-256 (hex) of the API secret; the secret itself is never stored.
    secret_hash TEXT NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL
);

CREATE TABLE orders (
    id               TEXT PRIMARY KEY,
    marketplace_id   TEXT NOT NULL REFERENCES marketplaces (id),
    merchant         TEXT NOT NULL,
    description      TEXT,
    meta             TEXT NOT NULL,
    delivery_address TEXT NOT NULL,
    amount           BIGINT NOT NULL DEFAULT 0,
    amount_escrowed  BIGINT NOT NULL DEFAULT 0 CHECK (amount_escrowed >= 0),
    -- Money a late failure took out of escrow that escrow no longer held (see README).
    escrow_shortfall BIGINT NOT NULL DEFAULT 0,
    version          BIGINT NOT NULL DEFAULT 1,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);
CREATE INDEX orders_marketplace ON orders (marketplace_id, id);

-- Debits, refunds, credits and reversals share one table: they have one life cycle
-- (pending -> succeeded | failed, succeeded -> failed) and one shape.
CREATE TABLE transactions (
    id                      TEXT PRIMARY KEY,
    kind                    TEXT NOT NULL CHECK (kind IN ('debit', 'refund', 'credit', 'reversal')),
    marketplace_id          TEXT NOT NULL REFERENCES marketplaces (id),
    order_id                TEXT REFERENCES orders (id),
    -- The debit a refund returns, the credit a reversal returns.
    parent_id               TEXT REFERENCES transactions (id),
    -- Debit source or credit destination (a card or bank account held elsewhere).
    instrument              TEXT,
    amount                  BIGINT NOT NULL CHECK (amount > 0),
    -- Of a debit: its refunds that have not failed; of a credit: its reversals that have not failed.
    amount_returned         BIGINT NOT NULL DEFAULT 0 CHECK (amount_returned >= 0 AND amount_returned <= amount),
    status                  TEXT NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    failure_reason          TEXT,
    failure_reason_code     TEXT,
    appears_on_statement_as TEXT,
    transaction_number      TEXT NOT NULL,
    description             TEXT,
    meta                    TEXT NOT NULL,
    version                 BIGINT NOT NULL DEFAULT 1,
    created_at              BIGINT NOT NULL,
    updated_at              BIGINT NOT NULL
);
CREATE INDEX transactions_marketplace ON transactions (marketplace_id, kind, id);
CREATE INDEX transactions_order ON transactions (order_id, kind, id);
CREATE INDEX transactions_parent ON transactions (parent_id, id);

-- The outbox: written in the same database transaction as the change it describes.
CREATE TABLE events (
    seq            BIGSERIAL PRIMARY KEY,
    id             TEXT NOT NULL UNIQUE,
    marketplace_id TEXT NOT NULL,
    type           TEXT NOT NULL,
    entity_id      TEXT NOT NULL,
    occurred_at    BIGINT NOT NULL,
    -- The resource as GET returned it at that moment, in envelope form (JSON).
    entity         TEXT NOT NULL
);
CREATE INDEX events_marketplace ON events (marketplace_id, id);
CREATE INDEX events_entity ON events (entity_id, id);

CREATE TABLE idempotency_keys (
    marketplace_id TEXT NOT NULL,
    key            TEXT NOT NULL,
    request_hash   TEXT NOT NULL,
    status         BIGINT NOT NULL,
    body           TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    PRIMARY KEY (marketplace_id, key)
);
