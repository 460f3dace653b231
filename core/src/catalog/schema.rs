//! Catalog schema migrations, applied in order; the version lives in `user_version`.
//! Never edit a released migration: add a new one.

use rusqlite_migration::{Migrations, M};

pub fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(
            "
    CREATE TABLE jobs (
        name       TEXT PRIMARY KEY,
        kind       TEXT NOT NULL,
        host       TEXT NOT NULL,
        first_seen TEXT NOT NULL,
        last_seen  TEXT NOT NULL
    );
    -- Every backup run, good or bad. status: running | success | failed | interrupted.
    CREATE TABLE runs (
        id         INTEGER PRIMARY KEY,
        job        TEXT NOT NULL,
        started    TEXT NOT NULL,
        finished   TEXT,
        status     TEXT NOT NULL,
        error      TEXT,
        backup_id  TEXT,
        bytes_in   INTEGER,
        bytes_out  INTEGER,
        trigger    TEXT NOT NULL,
        writer     TEXT NOT NULL,
        pid        INTEGER NOT NULL
    );
    CREATE INDEX runs_by_job ON runs (job, id DESC);
    -- A cache of the repository's commit records; rebuilt by `bk catalog rebuild`.
    CREATE TABLE backups (
        backup_id     TEXT PRIMARY KEY,
        job           TEXT NOT NULL,
        kind          TEXT NOT NULL,
        host          TEXT NOT NULL,
        started       TEXT NOT NULL,
        finished      TEXT NOT NULL,
        source_size   INTEGER NOT NULL,
        stored_size   INTEGER NOT NULL,
        commit_json   TEXT NOT NULL
    );
    CREATE INDEX backups_by_job ON backups (job, backup_id DESC);
    ",
        ),
        // Restore tests: status running | passed | failed | interrupted. `scratch` names
        // the scratch database or directory while the test holds one (JSON, no
        // secrets), so a test cut short by kill -9 is cleaned up at the next start.
        M::up(
            "
    CREATE TABLE restore_tests (
        id         INTEGER PRIMARY KEY,
        job        TEXT NOT NULL,
        backup_id  TEXT,
        started    TEXT NOT NULL,
        finished   TEXT,
        status     TEXT NOT NULL,
        reason     TEXT,
        trigger    TEXT NOT NULL,
        writer     TEXT NOT NULL,
        pid        INTEGER NOT NULL,
        scratch    TEXT,
        report     TEXT
    );
    CREATE INDEX restore_tests_by_job ON restore_tests (job, id DESC);
    ",
        ),
        // Per good run: directory entries, and the anomalies found against the job's
        // history (JSON list), so the next comparison and `bk status` can read them.
        M::up(
            "
    ALTER TABLE runs ADD COLUMN entries INTEGER;
    ALTER TABLE runs ADD COLUMN anomalies TEXT;
    ",
        ),
        // The writer of each cached backup in a column of its own, so that `bk list`
        // reads everything it shows from columns without parsing commit records.
        M::up(
            "
    ALTER TABLE backups ADD COLUMN writer TEXT;
    UPDATE backups SET writer = json_extract(commit_json, '$.writer');
    ",
        ),
        // Everything `bk list` shows, newest first, in an index of its own: a listing of
        // all jobs reads the index in order (~140 bytes a row) instead of every row with
        // its commit record (~1.2 KiB) and sorting them afterwards.
        M::up(
            "
    CREATE INDEX backups_listed ON backups
        (backup_id DESC, job, kind, host, started, finished, source_size, stored_size, writer);
    ",
        ),
    ])
}

#[cfg(test)]
mod tests {
    #[test]
    fn migrations_are_valid() {
        super::migrations().validate().unwrap();
    }
}
