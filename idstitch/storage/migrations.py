"""Named schema migrations. Each store keeps its dialect's SQL under the same names and records
applied names in `schema_migrations`.

Lookups by identifier and by message id go through 64-bit hashes (`storage.rows`): an integer
index costs far less to maintain than one on text, and every hit is checked on the full value.
"""

from __future__ import annotations

SQLITE: list[tuple[str, str]] = [
    (
        "0001_initial",
        """
        CREATE TABLE profiles (
            id INTEGER PRIMARY KEY,
            segment_id TEXT NOT NULL UNIQUE,
            collection TEXT NOT NULL,
            canonical_id INTEGER NOT NULL,
            created_at REAL NOT NULL,
            merges INTEGER NOT NULL DEFAULT 0,
            first_message_id TEXT,
            first_source_id TEXT
        );
        CREATE INDEX profiles_canonical ON profiles (canonical_id);
        CREATE TABLE identifiers (
            id INTEGER PRIMARY KEY,
            key_hash INTEGER NOT NULL,
            collection TEXT NOT NULL,
            type TEXT NOT NULL,
            value TEXT NOT NULL,
            profile_id INTEGER NOT NULL,
            source_id TEXT NOT NULL,
            first_message_id TEXT NOT NULL,
            created_at REAL NOT NULL
        );
        CREATE INDEX identifiers_key ON identifiers (key_hash);
        CREATE INDEX identifiers_profile ON identifiers (profile_id);
        CREATE TABLE events (
            seq INTEGER PRIMARY KEY,
            msg_hash INTEGER NOT NULL,
            source_id TEXT NOT NULL,
            message_id TEXT NOT NULL,
            type TEXT NOT NULL,
            event TEXT,
            timestamp REAL NOT NULL,
            received_at REAL NOT NULL,
            profile_id INTEGER,
            account_id INTEGER,
            reason TEXT,
            external_ids TEXT NOT NULL,
            body BLOB NOT NULL
        );
        CREATE INDEX events_message ON events (msg_hash);
        CREATE INDEX events_profile ON events (profile_id, timestamp, seq)
            WHERE profile_id IS NOT NULL;
        CREATE INDEX events_account ON events (account_id, timestamp, seq)
            WHERE account_id IS NOT NULL;
        CREATE TABLE traits (
            profile_id INTEGER NOT NULL,
            key TEXT NOT NULL,
            value TEXT,
            timestamp REAL NOT NULL,
            seq INTEGER NOT NULL,
            source_id TEXT NOT NULL,
            PRIMARY KEY (profile_id, key)
        ) WITHOUT ROWID;
        CREATE TABLE merges (
            id INTEGER PRIMARY KEY,
            from_id INTEGER NOT NULL,
            into_id INTEGER NOT NULL,
            message_id TEXT NOT NULL,
            source_id TEXT NOT NULL,
            timestamp REAL NOT NULL
        );
        CREATE INDEX merges_into ON merges (into_id);
        CREATE TABLE violations (
            id INTEGER PRIMARY KEY,
            source_id TEXT NOT NULL,
            message_id TEXT NOT NULL,
            collection TEXT NOT NULL,
            type TEXT NOT NULL,
            value TEXT NOT NULL,
            rule TEXT NOT NULL,
            detail TEXT NOT NULL,
            timestamp REAL NOT NULL
        );
        CREATE TABLE links (
            user_id INTEGER NOT NULL,
            account_id INTEGER NOT NULL,
            source_id TEXT NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (user_id, account_id)
        ) WITHOUT ROWID;
        CREATE INDEX links_account ON links (account_id);
        CREATE TABLE import_progress (
            name TEXT PRIMARY KEY,
            byte_offset INTEGER NOT NULL,
            updated_at REAL NOT NULL
        );
        """,
    ),
    # The dedupe index moves off the events table. An index on a random 64-bit hash gains an
    # entry in a different page for almost every message, and SQLite's WAL writes whole pages:
    # on a store of a million events that index alone cost more than half of each commit. Now
    # message hashes since the last merge are held in memory (rebuilt from `events` at
    # startup), and the committer merges them into `message_index` in hash order, a range at a
    # time, so each page takes many entries at once; it reads them from `events_seq_hash`, a
    # narrow index in insertion order (cheap to keep), not from the wide event rows.
    # `index_progress` says how far it got.
    (
        "0002_message_index",
        """
        CREATE TABLE message_index (
            msg_hash INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            PRIMARY KEY (msg_hash, seq)
        ) WITHOUT ROWID;
        INSERT INTO message_index (msg_hash, seq)
            SELECT msg_hash, seq FROM events ORDER BY msg_hash, seq;
        DROP INDEX events_message;
        CREATE INDEX events_seq_hash ON events (seq, msg_hash);
        CREATE TABLE index_progress (
            name TEXT PRIMARY KEY,
            seq INTEGER NOT NULL
        );
        INSERT INTO index_progress (name, seq)
            SELECT 'message_index', COALESCE(MAX(seq), 0) FROM events;
        """,
    ),
    # PostgreSQL's 0003 re-keys its identifier index; SQLite's already keys on a hash.
    ("0003_identifier_digest", "SELECT 1"),
    # The log-first write path. What a commit makes durable is the message log (`events`,
    # appended in `seq` order) and the graph changes (profiles, identifiers, merges, links,
    # violations, each appended in id order): no index a commit would have to update at
    # random. Everything else is derived from those tables and lives in the index database
    # beside this one (`<db>-index`, see `sqlite_index`): events by profile and account, the
    # dedupe index, identifiers by key and by profile, traits. So these go from here; the
    # index database is built from the log when the store next opens.
    (
        "0004_log_first",
        """
        DROP INDEX IF EXISTS events_profile;
        DROP INDEX IF EXISTS events_account;
        DROP INDEX IF EXISTS events_seq_hash;
        DROP INDEX IF EXISTS identifiers_key;
        DROP INDEX IF EXISTS identifiers_profile;
        DROP TABLE IF EXISTS traits;
        DROP TABLE IF EXISTS message_index;
        DROP TABLE IF EXISTS index_progress;
        CREATE TABLE store_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO store_meta (name, value) VALUES ('store_id', lower(hex(randomblob(16))))
        """,
    ),
    # The idstitch preset's `conflict` violations: SQLite reads them all when it loads the
    # graph, so it needs no index (and a commit updates none).
    ("0005_conflicts", "SELECT 1"),
    # A merge made past a limit names the rule that allowed it (`trusted_alias`).
    ("0006_merge_rule", "ALTER TABLE merges ADD COLUMN rule TEXT"),
    # Each refusal names the profile its message resolved to and the profile the refused
    # identifier or merge would have joined, so a profile's refusals can be listed from either
    # side (`/profiles/{ref}/violations`, `idstitch explain`). Refusals are rare beside
    # messages: these indexes cost a commit little. Rows from before stay without profiles.
    (
        "0007_violation_profiles",
        """
        ALTER TABLE violations ADD COLUMN profile_id INTEGER;
        ALTER TABLE violations ADD COLUMN other_profile_id INTEGER;
        CREATE INDEX violations_profile ON violations (profile_id)
            WHERE profile_id IS NOT NULL;
        CREATE INDEX violations_other_profile ON violations (other_profile_id)
            WHERE other_profile_id IS NOT NULL;
        """,
    ),
    # Repairs: changes no message made (an identifier deleted, a profile unmerged), each with
    # an audit record; the identifiers an unmerge named junk, which link nothing from then on;
    # and the generation of the log's rewrites, which tells the index to build itself again.
    (
        "0008_repairs",
        """
        CREATE TABLE operations (
            id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL,
            segment_id TEXT NOT NULL,
            collection TEXT NOT NULL,
            type TEXT NOT NULL,
            value TEXT NOT NULL,
            actor TEXT NOT NULL,
            detail TEXT NOT NULL,
            created_at REAL NOT NULL
        );
        CREATE TABLE blocked_identifiers (
            collection TEXT NOT NULL,
            type TEXT NOT NULL,
            value TEXT NOT NULL,
            operation_id INTEGER NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (collection, type, value)
        ) WITHOUT ROWID;
        INSERT INTO store_meta (name, value) VALUES ('generation', '0');
        """,
    ),
    # The change feed: what each message changed (`core.changes`), written in the
    # transaction that stores it, while webhooks are configured; and how far each webhook got.
    # AUTOINCREMENT: ids never go back, even once every delivered row is deleted.
    (
        "0009_outbox",
        """
        CREATE TABLE outbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            segment_id TEXT NOT NULL,
            changes BLOB NOT NULL,
            created_at REAL NOT NULL
        );
        CREATE TABLE webhook_progress (
            name TEXT PRIMARY KEY,
            xid INTEGER NOT NULL,
            id INTEGER NOT NULL,
            updated_at REAL NOT NULL
        );
        """,
    ),
]

# PostgreSQL keeps text keys under a unique index: the database itself then guarantees that no
# identifier has two owners and no message is stored twice, whatever several writers do.
# Ids and event numbers come from sequences, so workers on several hosts interleave correctly.
POSTGRES: list[tuple[str, str]] = [
    (
        "0001_initial",
        """
        CREATE SEQUENCE profile_id_seq;
        CREATE TABLE profiles (
            id BIGINT PRIMARY KEY DEFAULT nextval('profile_id_seq'),
            segment_id TEXT COLLATE "C" NOT NULL UNIQUE,
            collection TEXT NOT NULL,
            canonical_id BIGINT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            merges INTEGER NOT NULL DEFAULT 0,
            first_message_id TEXT,
            first_source_id TEXT
        );
        ALTER SEQUENCE profile_id_seq OWNED BY profiles.id;
        CREATE INDEX profiles_canonical ON profiles (canonical_id);
        CREATE TABLE identifiers (
            collection TEXT COLLATE "C" NOT NULL,
            type TEXT COLLATE "C" NOT NULL,
            value TEXT COLLATE "C" NOT NULL,
            profile_id BIGINT NOT NULL,
            source_id TEXT NOT NULL,
            first_message_id TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (collection, type, value)
        );
        CREATE INDEX identifiers_profile ON identifiers (profile_id);
        CREATE SEQUENCE event_seq;
        CREATE TABLE events (
            seq BIGINT PRIMARY KEY DEFAULT nextval('event_seq'),
            source_id TEXT COLLATE "C" NOT NULL,
            message_id TEXT COLLATE "C" NOT NULL,
            type TEXT NOT NULL,
            event TEXT,
            timestamp DOUBLE PRECISION NOT NULL,
            received_at DOUBLE PRECISION NOT NULL,
            profile_id BIGINT,
            account_id BIGINT,
            reason TEXT,
            external_ids TEXT NOT NULL,
            body BYTEA NOT NULL
        );
        ALTER SEQUENCE event_seq OWNED BY events.seq;
        CREATE UNIQUE INDEX events_message ON events (source_id, message_id);
        CREATE INDEX events_profile ON events (profile_id, timestamp, seq)
            WHERE profile_id IS NOT NULL;
        CREATE INDEX events_account ON events (account_id, timestamp, seq)
            WHERE account_id IS NOT NULL;
        CREATE TABLE traits (
            profile_id BIGINT NOT NULL,
            key TEXT COLLATE "C" NOT NULL,
            value TEXT,
            timestamp DOUBLE PRECISION NOT NULL,
            seq BIGINT NOT NULL,
            source_id TEXT NOT NULL,
            PRIMARY KEY (profile_id, key)
        );
        CREATE TABLE merges (
            id BIGSERIAL PRIMARY KEY,
            from_id BIGINT NOT NULL,
            into_id BIGINT NOT NULL,
            message_id TEXT NOT NULL,
            source_id TEXT NOT NULL,
            timestamp DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX merges_into ON merges (into_id);
        CREATE TABLE violations (
            id BIGSERIAL PRIMARY KEY,
            source_id TEXT NOT NULL,
            message_id TEXT NOT NULL,
            collection TEXT NOT NULL,
            type TEXT NOT NULL,
            value TEXT NOT NULL,
            rule TEXT NOT NULL,
            detail TEXT NOT NULL,
            timestamp DOUBLE PRECISION NOT NULL
        );
        CREATE TABLE links (
            user_id BIGINT NOT NULL,
            account_id BIGINT NOT NULL,
            source_id TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (user_id, account_id)
        );
        CREATE INDEX links_account ON links (account_id);
        CREATE TABLE import_progress (
            name TEXT PRIMARY KEY,
            byte_offset BIGINT NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL
        );
        """,
    ),
    # SQLite's 0002 moves its dedupe index off the events table because its WAL writes whole
    # pages. PostgreSQL's WAL records rows, and its unique index on (source_id, message_id) is
    # what keeps two workers from storing one message twice: it stays. The name is recorded
    # so both stores list the same migrations.
    ("0002_message_index", "SELECT 1"),
    # An identifier value may hold 1,000 characters, up to 4,000 bytes, and a B-tree entry
    # takes at most 2,704: the unique index keys on a SHA-256 of the value instead (lookups
    # compare the full value too). SHA-256, not md5, so that no one can make two values
    # collide and keep the second out of the graph.
    (
        "0003_identifier_digest",
        """
        CREATE FUNCTION identifier_digest(value text) RETURNS bytea
            LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
            AS $$ SELECT pg_catalog.sha256(pg_catalog.convert_to(value, 'UTF8')) $$;
        ALTER TABLE identifiers DROP CONSTRAINT identifiers_pkey;
        CREATE UNIQUE INDEX identifiers_key
            ON identifiers (collection, type, identifier_digest(value));
        """,
    ),
    # SQLite's 0004 moves everything but the log and the graph out of the commit; PostgreSQL
    # keeps its indexes (several workers need them inside each transaction).
    ("0004_log_first", "SELECT 1"),
    # Each batch reads the `conflict` violations of its keys (the idstitch preset: a value
    # seen with several known users stops linking): a partial index over those rows only.
    (
        "0005_conflicts",
        """
        CREATE INDEX violations_conflicts
            ON violations (collection, type, identifier_digest(value)) WHERE rule = 'conflict';
        """,
    ),
    ("0006_merge_rule", "ALTER TABLE merges ADD COLUMN rule TEXT"),
    (
        "0007_violation_profiles",
        """
        ALTER TABLE violations ADD COLUMN profile_id BIGINT;
        ALTER TABLE violations ADD COLUMN other_profile_id BIGINT;
        CREATE INDEX violations_profile ON violations (profile_id)
            WHERE profile_id IS NOT NULL;
        CREATE INDEX violations_other_profile ON violations (other_profile_id)
            WHERE other_profile_id IS NOT NULL;
        """,
    ),
    (
        "0008_repairs",
        """
        CREATE TABLE operations (
            id BIGSERIAL PRIMARY KEY,
            kind TEXT NOT NULL,
            segment_id TEXT NOT NULL,
            collection TEXT NOT NULL,
            type TEXT NOT NULL,
            value TEXT NOT NULL,
            actor TEXT NOT NULL,
            detail TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL
        );
        CREATE TABLE blocked_identifiers (
            id BIGSERIAL PRIMARY KEY,
            collection TEXT COLLATE "C" NOT NULL,
            type TEXT COLLATE "C" NOT NULL,
            value TEXT COLLATE "C" NOT NULL,
            operation_id BIGINT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL
        );
        CREATE UNIQUE INDEX blocked_identifiers_key
            ON blocked_identifiers (collection, type, identifier_digest(value));
        """,
    ),
    # Workers commit in another order than they take ids: each row keeps the id of its
    # transaction, and a webhook reads rows of finished transactions only, in (xid, id) order
    # (a transaction that waited for a profile's lock takes its xid after the one it waited
    # for: each profile's changes keep their order).
    (
        "0009_outbox",
        """
        CREATE TABLE outbox (
            id BIGSERIAL PRIMARY KEY,
            xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
            segment_id TEXT NOT NULL,
            changes TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX outbox_order ON outbox (xid, id);
        CREATE TABLE webhook_progress (
            name TEXT PRIMARY KEY,
            xid BIGINT NOT NULL,
            id BIGINT NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL
        );
        """,
    ),
]

NAMES = [name for name, _ in SQLITE]
