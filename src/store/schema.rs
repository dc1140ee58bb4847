//! The SQLite schema, versioned: one SQL file per version under
//! `migrations/sqlite/`, applied in order by `rusqlite_migration`, which keeps
//! the version in `PRAGMA user_version`. A migration once shipped is never
//! edited; a change is a new file.
//!
//! Before versioning, the schema was created with `CREATE TABLE IF NOT EXISTS`
//! and one in-place column add, so a database from then has user_version 0 but
//! tables. Each of those releases added exactly one thing, so what a database
//! holds tells which release made it; [`legacy_version`] reads that and the
//! migrations continue from there.

use rusqlite::Connection;
use rusqlite_migration::{Migrations, M};

fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(include_str!("migrations/sqlite/01-historian.sql")),
        M::up(include_str!("migrations/sqlite/02-meta.sql")),
        M::up(include_str!("migrations/sqlite/03-journal-priority.sql")),
        M::up(include_str!("migrations/sqlite/04-notify.sql")),
        M::up(include_str!("migrations/sqlite/05-revoked-sessions.sql")),
        M::up(include_str!("migrations/sqlite/06-inputs.sql")),
        M::up(include_str!("migrations/sqlite/07-outbox-order.sql")),
        M::up(include_str!("migrations/sqlite/08-rollups.sql")),
        M::up(include_str!("migrations/sqlite/09-point-ids.sql")),
        M::up(include_str!("migrations/sqlite/10-feed.sql")),
        M::up(include_str!("migrations/sqlite/11-readings-log.sql")),
        M::up(include_str!("migrations/sqlite/12-state-log.sql")),
    ])
}

/// The schema version this build writes.
pub const LATEST: usize = 12;

fn has_table(c: &Connection, name: &str) -> rusqlite::Result<bool> {
    c.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [name],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
}

fn has_column(c: &Connection, table: &str, col: &str) -> rusqlite::Result<bool> {
    let mut st = c.prepare(&format!("PRAGMA table_info({table})"))?;
    let names = st
        .query_map([], |r| r.get::<_, String>(1))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(names.iter().any(|n| n == col))
}

/// Which migration an unversioned database (from before versioning) had
/// reached, newest first: 0 for an empty file.
fn legacy_version(c: &Connection) -> rusqlite::Result<usize> {
    Ok(if has_table(c, "inputs")? {
        6
    } else if has_table(c, "revoked_sessions")? {
        5
    } else if has_table(c, "incidents")? {
        4
    } else if has_table(c, "journal")? && has_column(c, "journal", "priority")? {
        3
    } else if has_table(c, "meta")? {
        2
    } else if has_table(c, "readings")? {
        1
    } else {
        0
    })
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("schema migration: {0}")]
    Migration(#[from] rusqlite_migration::Error),
    #[error("the database has schema version {found}, newer than this build's {latest}: run the newer mizuban, or restore a backup")]
    Newer { found: usize, latest: usize },
}

/// Brings the database to [`LATEST`], each migration in its own transaction.
pub fn migrate(c: &mut Connection) -> Result<(), MigrateError> {
    let version: usize = c.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? as usize;
    if version > LATEST {
        return Err(MigrateError::Newer {
            found: version,
            latest: LATEST,
        });
    }
    if version == 0 {
        let legacy = legacy_version(c)?;
        if legacy > 0 {
            tracing::info!(
                version = legacy,
                "unversioned database from an earlier release; versioning it"
            );
            c.pragma_update(None, "user_version", legacy as i64)?;
        }
    }
    migrations().to_latest(c)?;
    Ok(())
}

/// The notification tables' own file: its versions, kept in that file's
/// `PRAGMA user_version`, apart from the store's.
fn notify_migrations() -> Migrations<'static> {
    Migrations::new(vec![M::up_with_hook(
        include_str!("migrations/sqlite-notify/01-notify.sql"),
        |tx: &rusqlite::Transaction| Ok(super::outbox::copy_legacy(tx)?),
    )])
}

/// The notify file's schema version this build writes.
pub const NOTIFY_LATEST: usize = 1;

/// Brings the notify file to [`NOTIFY_LATEST`]; the store must be attached
/// as `store`, already migrated.
pub fn migrate_notify(c: &mut Connection) -> Result<(), MigrateError> {
    let version: usize = c.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? as usize;
    if version > NOTIFY_LATEST {
        return Err(MigrateError::Newer {
            found: version,
            latest: NOTIFY_LATEST,
        });
    }
    notify_migrations().to_latest(c)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_migrations_are_valid_and_latest_is_their_count() {
        migrations().validate().unwrap();
        let mut c = Connection::open_in_memory().unwrap();
        migrate(&mut c).unwrap();
        let v: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(v as usize, LATEST);
        // Opening again is a no-op.
        migrate(&mut c).unwrap();
        notify_migrations().validate().unwrap();
        let mut c = Connection::open_in_memory().unwrap();
        migrate_notify(&mut c).unwrap();
        let v: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(v as usize, NOTIFY_LATEST);
    }

    #[test]
    fn a_database_from_a_newer_release_is_refused() {
        let mut c = Connection::open_in_memory().unwrap();
        c.pragma_update(None, "user_version", (LATEST + 1) as i64).unwrap();
        assert!(matches!(migrate(&mut c), Err(MigrateError::Newer { .. })));
    }
}
