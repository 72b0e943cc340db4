-- The revision store (PostgreSQL). Only the crate setpoint-store reads or
-- writes these tables; the SQLite twin is migrations/sqlite/0001_*.sql.
-- Times are unix milliseconds (BIGINT). Digests and keys are SHA-256,
-- 32 bytes (BYTEA). Content rows (chunks, manifests, fragments) are keyed
-- by the hash of their bytes, written with ON CONFLICT DO NOTHING and never
-- updated; the reader re-hashes every one of them.

-- Fencing and numbering, exactly one row. Every commit starts with
--   UPDATE leader SET epoch = $e, head = head + 1
--    WHERE id = 1 AND epoch <= $e RETURNING head
-- so a writer holding an older epoch than any seen (a deposed leader)
-- updates nothing and is refused; the row lock serialises commits; `head`
-- is the new revision number. acquire_epoch() increments `epoch`.
CREATE TABLE leader (
    id    SMALLINT PRIMARY KEY CHECK (id = 1),
    epoch BIGINT   NOT NULL,
    head  BIGINT   NOT NULL
);
INSERT INTO leader (id, epoch, head) VALUES (1, 0, 0);

-- One row per committed revision, written by the commit that creates it.
CREATE TABLE revisions (
    revision       BIGINT PRIMARY KEY,
    committed_ms   BIGINT NOT NULL,
    epoch          BIGINT NOT NULL,
    summary        TEXT   NOT NULL,
    -- Nodes whose state changed: rows in `nodes` at this revision plus
    -- nodes using a shared part that changed.
    nodes_changed  BIGINT NOT NULL,
    -- Names of the shared parts written at this revision, one per line.
    shared_changed TEXT   NOT NULL
);

-- The objects (kind/namespace/name) whose change caused a revision.
CREATE TABLE revision_objects (
    revision BIGINT NOT NULL REFERENCES revisions (revision) ON DELETE CASCADE,
    object   TEXT   NOT NULL,
    PRIMARY KEY (revision, object)
);

-- Runs of consecutive atoms of a fragment (see setpoint_dataplane::chunk).
-- digest = SHA-256(body).
CREATE TABLE chunks (
    digest BYTEA   PRIMARY KEY CHECK (octet_length(digest) = 32),
    atoms  INTEGER NOT NULL,
    body   BYTEA   NOT NULL
);

-- Nodes of a fragment's manifest tree: ordered child keys (chunks at
-- level 1, manifests of level - 1 above). digest = SHA-256(body).
CREATE TABLE manifests (
    digest BYTEA    PRIMARY KEY CHECK (octet_length(digest) = 32),
    level  SMALLINT NOT NULL,
    body   BYTEA    NOT NULL
);

-- One row per distinct fragment: its root manifest and what the content
-- must hash to. digest = SHA-256 of the encoded header (root, height,
-- state_digest, atoms); node states refer to fragments by it.
CREATE TABLE fragments (
    digest       BYTEA    PRIMARY KEY CHECK (octet_length(digest) = 32),
    root         BYTEA    NOT NULL,
    height       SMALLINT NOT NULL,
    state_digest BYTEA    NOT NULL,
    atoms        BIGINT   NOT NULL
);

-- Versions of the parts many nodes share ("base", "services", "zone/<z>"):
-- a row when a part's fragment changes; fragment NULL when it was removed.
-- The part at revision R is its newest row at or before R.
CREATE TABLE shared_parts (
    name     TEXT   NOT NULL,
    revision BIGINT NOT NULL,
    fragment BYTEA,
    PRIMARY KEY (name, revision)
);
CREATE INDEX shared_parts_by_revision ON shared_parts (revision);

-- Versions of each node's composition: written only when the list of
-- shared parts it uses or its own parts ("node/<n>") change, never because
-- a shared part changed. A node at revision R is its newest row at or
-- before R; `shared` NULL means the node was removed.
--   shared: shared part names, one per line
--   own: repeated (u16 name length, name, 32-byte fragment key)
--   state_digest: digest of the whole state at this revision, when known
CREATE TABLE nodes (
    node         TEXT   NOT NULL,
    revision     BIGINT NOT NULL,
    shared       TEXT,
    own          BYTEA,
    state_digest BYTEA,
    PRIMARY KEY (node, revision)
);
CREATE INDEX nodes_by_revision ON nodes (revision);
