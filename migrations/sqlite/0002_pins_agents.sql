-- Rollback pins and agent status (SQLite); the PostgreSQL twin is
-- migrations/postgres/0002_*.sql. Conventions as in 0001.

-- What wrote a revision: 'commit' (a computation), 'rollback' (target is
-- the revision rolled back to) or 'resume' (pins lifted). Revisions from
-- 0001 are commits.
ALTER TABLE revisions ADD COLUMN action TEXT NOT NULL DEFAULT 'commit';
ALTER TABLE revisions ADD COLUMN target INTEGER;

-- Versions of each node's pin, written by rollback() and resume(), never by
-- commit(). A node's current state at revision R: if its newest row here
-- at or before R has `parts`, exactly those fragments (the state it had at
-- `held_at`, resolved when the rollback was written, so later versions of
-- shared parts do not leak in); otherwise its computed state (`nodes` and
-- `shared_parts` as of R). `parts` NULL is a resume.
--   parts: every part of the state, repeated (u16 name length, name,
--          32-byte fragment key) as in nodes.own
--   state_digest: digest of the pinned state, checked on every read
--   reason: the operator's reason (empty for a resume)
CREATE TABLE node_pins (
    node         TEXT    NOT NULL,
    revision     INTEGER NOT NULL,
    held_at      INTEGER,
    parts        BLOB,
    state_digest BLOB,
    reason       TEXT    NOT NULL,
    PRIMARY KEY (node, revision)
);
CREATE INDEX node_pins_by_revision ON node_pins (revision);

-- The last report of each node's agent, upserted by whichever replica the
-- agent talks to; a report older (contact_ms) than the stored one is
-- ignored. result: 'ack' or 'nack' (error and operation set for a nack).
CREATE TABLE agent_status (
    node             TEXT    PRIMARY KEY,
    applied_revision INTEGER,
    applied_digest   BLOB CHECK (applied_digest IS NULL OR length(applied_digest) = 32),
    result           TEXT    NOT NULL CHECK (result IN ('ack', 'nack')),
    error            TEXT,
    operation        TEXT,
    contact_ms       INTEGER NOT NULL,
    agent_version    TEXT    NOT NULL
);
