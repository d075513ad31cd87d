"""Named schema migrations. Each store keeps its dialect's SQL under the same names and records
applied names in `schema_migrations`."""

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
            collection TEXT NOT NULL,
            type TEXT NOT NULL,
            value TEXT NOT NULL,
            profile_id INTEGER NOT NULL,
            source_id TEXT NOT NULL,
            first_message_id TEXT NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (collection, type, value)
        ) WITHOUT ROWID;
        CREATE INDEX identifiers_profile ON identifiers (profile_id);
        CREATE TABLE events (
            seq INTEGER PRIMARY KEY,
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
        CREATE UNIQUE INDEX events_message ON events (source_id, message_id);
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
]

NAMES = [name for name, _ in SQLITE]
