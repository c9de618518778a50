-- Ids compare byte by byte (COLLATE "C"), as SQLite compares them. With a libc locale as
-- the database's collation, each comparison was a call to strcoll on copies of both
-- strings, and most of the index entries a delivery writes and reads are keyed by ids.
-- Ids are ASCII letters and digits (and the `_` joining a delivery's two), of one length
-- per kind, so lists by id keep their order. A column or a parameter of the default
-- collation compared with these columns compares in "C" too.
--
-- `events.seq` was read by nothing: one index entry and one sequence step per event fewer.
-- Its id is the primary key now.
--
-- Each index on these columns is rebuilt (the tables are not rewritten), with the tables
-- locked meanwhile.
ALTER TABLE events DROP COLUMN seq, DROP CONSTRAINT events_id_key;
ALTER TABLE marketplaces ALTER COLUMN id TYPE TEXT COLLATE "C";
ALTER TABLE orders ALTER COLUMN id TYPE TEXT COLLATE "C",
    ALTER COLUMN marketplace_id TYPE TEXT COLLATE "C";
ALTER TABLE transactions ALTER COLUMN id TYPE TEXT COLLATE "C",
    ALTER COLUMN marketplace_id TYPE TEXT COLLATE "C",
    ALTER COLUMN order_id TYPE TEXT COLLATE "C",
    ALTER COLUMN parent_id TYPE TEXT COLLATE "C";
ALTER TABLE events ALTER COLUMN id TYPE TEXT COLLATE "C",
    ALTER COLUMN marketplace_id TYPE TEXT COLLATE "C",
    ALTER COLUMN entity_id TYPE TEXT COLLATE "C";
ALTER TABLE events ADD PRIMARY KEY (id);
ALTER TABLE idempotency_keys ALTER COLUMN marketplace_id TYPE TEXT COLLATE "C";
ALTER TABLE callbacks ALTER COLUMN id TYPE TEXT COLLATE "C",
    ALTER COLUMN marketplace_id TYPE TEXT COLLATE "C";
ALTER TABLE callback_event_types ALTER COLUMN callback_id TYPE TEXT COLLATE "C";
ALTER TABLE deliveries ALTER COLUMN id TYPE TEXT COLLATE "C",
    ALTER COLUMN event_id TYPE TEXT COLLATE "C",
    ALTER COLUMN callback_id TYPE TEXT COLLATE "C",
    ALTER COLUMN marketplace_id TYPE TEXT COLLATE "C";
ALTER TABLE attempts ALTER COLUMN delivery_id TYPE TEXT COLLATE "C";

-- `attempts.started_at` is read only for the recent attempts of a range of time (the
-- queue's last minute, a callback's last hour and day), and grows with the table. A BRIN
-- index (the least and greatest value of each range of pages) serves those reads, and an
-- attempt's insert leaves it alone until VACUUM summarizes the new pages, where the B-tree
-- took an entry per attempt.
DROP INDEX attempts_started;
CREATE INDEX attempts_started ON attempts USING BRIN (started_at);
