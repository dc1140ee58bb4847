//! Every schema that shipped opens and upgrades: a database made by each
//! earlier release (the schema it created, verbatim, in
//! `tests/fixtures/schemas/`, with rows in it) is opened by this build's
//! store, keeps its data, gains what was added since (rollups of the readings
//! already there, the outbox's order column), and ends with exactly the
//! schema a fresh database has.

use mizuban::alarm::{AlarmOrigin, RaiseSpec, Registry};
use mizuban::model::{DeviceId, PointId, SiteId};
use mizuban::store::outbox::Outbox;
use mizuban::store::{schema, JournalFilter, Resolution, Retention, Store};
use mizuban::telemetry::quarantine::Quarantine;
use mizuban::telemetry::Metrics;
use rusqlite::Connection;
use std::path::Path;
use std::sync::Arc;

const HOUR: i64 = 3_600_000;
const BASE: i64 = 1_764_633_600_000; // on an hour

fn fixtures() -> Vec<(usize, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/schemas");
    let mut out: Vec<(usize, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            let name = p.file_name().unwrap().to_str().unwrap().to_string();
            let v = name[1..name.find('-').unwrap()].parse().unwrap();
            (v, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    out.sort_by_key(|(v, _)| *v);
    out
}

/// Tables with their columns (name, type, not null, default, key) and
/// indexes with their columns: the shape code relies on, not the SQL text.
fn shape(c: &Connection) -> Vec<String> {
    let mut st = c
        .prepare("SELECT type, name, tbl_name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name")
        .unwrap();
    let objects: Vec<(String, String, String)> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut out = Vec::new();
    for (kind, name, table) in objects {
        let pragma = if kind == "table" {
            format!("PRAGMA table_info({name})")
        } else {
            format!("PRAGMA index_info({name})")
        };
        let mut st = c.prepare(&pragma).unwrap();
        let n = st.column_count();
        let cols: Vec<String> = st
            .query_map([], |r| {
                Ok((0..n)
                    .map(|i| format!("{:?}", r.get_ref(i).unwrap()))
                    .collect::<Vec<_>>()
                    .join(" "))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        out.push(format!("{kind} {name} on {table}: {}", cols.join(", ")));
    }
    out
}

fn open(path: &Path) -> Store {
    Store::open(
        path,
        8,
        Retention::default(),
        false,
        Arc::new(Metrics::new()),
        Arc::new(Quarantine::new(4)),
    )
    .unwrap()
    .0
}

fn alarm_json() -> (String, String) {
    let mut reg = Registry::new();
    let t = chrono::DateTime::from_timestamp_millis(BASE).unwrap();
    let spec = RaiseSpec {
        site: SiteId::new("MP-0001").unwrap(),
        device: DeviceId::new("AKT-MPN-0001").unwrap(),
        source: "AKT-MPN-0001".into(),
        condition: "DOOR_OPEN".into(),
        origin: AlarmOrigin::Device,
        priority: mizuban::device::Priority::High,
        value: None,
        limit: None,
        message: "door open".into(),
        message_ja: "扉開".into(),
        suppressed_by: vec![],
    };
    let a = reg.raise(spec, t, t).remove(0).alarm;
    (a.id.clone(), serde_json::to_string(&a).unwrap())
}

#[test]
fn a_database_from_every_shipped_schema_opens_keeps_its_data_and_ends_with_todays_schema() {
    let dir = tempfile::tempdir().unwrap();
    let fresh = dir.path().join("fresh.db");
    drop(open(&fresh));
    let want = shape(&Connection::open(&fresh).unwrap());
    let fixtures = fixtures();
    assert_eq!(
        fixtures.iter().map(|f| f.0).collect::<Vec<_>>(),
        (1..=6).collect::<Vec<_>>(),
        "one fixture per schema shipped before versioning"
    );
    let (alarm_id, alarm) = alarm_json();
    for (v, sql) in fixtures {
        let path = dir.path().join(format!("v{v}.db"));
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(&sql).unwrap();
            // Rows as that release wrote them: three readings in one hour
            // (one bad), a closed alarm and its journal row.
            for (i, q) in [0, 0, 2].iter().enumerate() {
                c.execute(
                    "INSERT INTO readings (point, t, value, quality, arrived) VALUES ('DM-01.flow', ?1, ?2, ?3, ?1)",
                    rusqlite::params![BASE + i as i64 * 600_000, 10.0 + i as f64, q],
                )
                .unwrap();
            }
            c.execute(
                "INSERT INTO alarms (id, site, source, condition, open, updated, json) VALUES (?1, 'MP-0001', 'AKT-MPN-0001', 'DOOR_OPEN', 0, ?2, ?3)",
                rusqlite::params![alarm_id, BASE, alarm],
            )
            .unwrap();
            c.execute(
                "INSERT INTO journal (at, alarm_id, site, source, condition, action, from_state, to_state, who, why, event_time, notify, late)
                 VALUES (?1, ?2, 'MP-0001', 'AKT-MPN-0001', 'DOOR_OPEN', 'raise', 'normal', 'unack_active', 'device', NULL, ?1, 1, 0)",
                rusqlite::params![BASE, alarm_id],
            )
            .unwrap();
            if v >= 4 {
                // Two messages of one incident to one person, in the order
                // they were planned (the later one first by id).
                for (id, created) in [("m-b", BASE), ("m-a", BASE + 1)] {
                    // The payload as that release wrote it (interfaces.md's webhook body).
                    let body = format!(
                        r#"{{"id":"{id}","type":"alarm.raised","sent_at":null,"alarm":{alarm},"recipient":"tanaka","recipient_name":"田中","language":"ja","incident":{{"id":"inc-1","count":1,"alarms":[{alarm}]}},"board_url":"http://127.0.0.1:8080/","escalation_level":1,"ack_url":"http://127.0.0.1:8080/ack/abc","ack_code":"123456","ack_expires_at":"2025-12-02T01:00:00Z"}}"#
                    );
                    c.execute(
                        "INSERT INTO outbox (id, incident_id, kind, person, contact_idx, channel, level, created_at, state, attempts, next_at, alarm_ids, body)
                         VALUES (?1, 'inc-1', 'alarm.raised', 'tanaka', 0, 'webhook:ops', 1, ?2, 'pending', 0, ?2, '[]', ?3)",
                        rusqlite::params![id, created, body],
                    )
                    .unwrap();
                }
            }
        }
        let store = open(&path);
        let c = Connection::open(&path).unwrap();
        let version: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version as usize, schema::LATEST, "schema v{v}");
        assert_eq!(shape(&c), want, "schema v{v} ends as a fresh database");

        let point = PointId::parse("DM-01.flow").unwrap();
        let t = |ms| chrono::DateTime::from_timestamp_millis(ms).unwrap();
        let (raw, _) = store.readings(&point, t(BASE), t(BASE + HOUR), 100).unwrap();
        assert_eq!(raw.len(), 3, "schema v{v}: readings kept");
        let (hours, _) = store
            .rollups(&point, Resolution::Hour, t(BASE), t(BASE + HOUR), 100)
            .unwrap();
        assert_eq!(hours.len(), 1, "schema v{v}: readings already stored are rolled up");
        assert_eq!(
            (hours[0].count, hours[0].min, hours[0].max),
            (2, 10.0, 11.0),
            "schema v{v}"
        );
        let j = store
            .journal(&JournalFilter {
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(j.len(), 1, "schema v{v}: journal kept");
        assert_eq!(j[0].alarm_id, alarm_id);
        assert_eq!(store.alarm(&alarm_id).unwrap().map(|a| a.id), Some(alarm_id.clone()));
        if v >= 4 {
            let outbox = Outbox::open(&path).unwrap();
            let due = outbox.due(t(BASE + HOUR), 10).unwrap();
            // The stored payload reads back as the typed message it was.
            assert_eq!(due[0].body.ack_code.as_deref(), Some("123456"), "schema v{v}");
            assert_eq!(
                due[0].body.alarm.as_ref().map(|a| a.id.as_str()),
                Some(alarm_id.as_str())
            );
            let due: Vec<String> = due.into_iter().map(|r| r.id).collect();
            // One at a time per person and incident, the first planned first.
            assert_eq!(due, ["m-b"], "schema v{v}: outbox order kept");
            outbox.mark_sent("m-b", t(BASE + HOUR)).unwrap();
            let due: Vec<String> = outbox
                .due(t(BASE + HOUR), 10)
                .unwrap()
                .into_iter()
                .map(|r| r.id)
                .collect();
            assert_eq!(due, ["m-a"], "schema v{v}");
        }
        // And it opens again, already current.
        drop(store);
        drop(open(&path));
    }
}

#[test]
fn the_store_refuses_a_database_from_a_newer_release() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    drop(open(&path));
    Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", (schema::LATEST + 1) as i64)
        .unwrap();
    let err = Store::open(
        &path,
        8,
        Retention::default(),
        false,
        Arc::new(Metrics::new()),
        Arc::new(Quarantine::new(4)),
    )
    .err()
    .expect("a newer schema is refused, not written over")
    .to_string();
    assert!(err.contains("newer than this build"), "{err}");
}
