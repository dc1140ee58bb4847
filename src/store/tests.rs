//! The store's behaviour, the same on both backends: every test here runs
//! on SQLite (a temporary file) and on PostgreSQL (a database made for the
//! test and dropped after it, on the server `MIZUBAN_TEST_POSTGRES` names,
//! by default `postgres://root@127.0.0.1:5432/postgres`). Without a server
//! the PostgreSQL half is skipped, except under `CI=true`, where it fails.

use super::codec::{from_ms, ms};
use super::rollup::{HOUR_MS, MINUTE_MS};
use super::{Batch, Bucket, Location, Resolution, Retention, Store};
use crate::model::{PointId, Quality, Reading, SiteId, Timestamp};
use crate::telemetry::quarantine::Quarantine;
use crate::telemetry::Metrics;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Debug, Clone, Copy)]
enum Kind {
    Sqlite,
    Postgres,
}

/// A fresh, empty store of either kind, removed afterwards.
struct Db {
    at: Location,
    _dir: Option<tempfile::TempDir>,
    /// The server's admin URL and this test's database on it.
    pg: Option<(String, String)>,
}

fn admin_url() -> String {
    std::env::var("MIZUBAN_TEST_POSTGRES").unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/postgres".into())
}

/// `url` with its database replaced by `db`.
fn with_database(url: &str, db: &str) -> String {
    let (base, _) = url.rsplit_once('/').expect("a URL with a database");
    format!("{base}/{db}")
}

impl Db {
    fn new(kind: Kind) -> Option<Self> {
        match kind {
            Kind::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                Some(Self {
                    at: Location::Sqlite(dir.path().join("s.db")),
                    _dir: Some(dir),
                    pg: None,
                })
            }
            Kind::Postgres => {
                static N: AtomicUsize = AtomicUsize::new(0);
                let admin = admin_url();
                let name = format!(
                    "mizuban_unit_{}_{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::SeqCst)
                );
                let made = super::postgres::off_runtime(|| {
                    let mut c = postgres::Client::connect(&admin, postgres::NoTls)?;
                    c.batch_execute(&format!("CREATE DATABASE {name}"))
                });
                if let Err(e) = made {
                    assert!(
                        std::env::var("CI").as_deref() != Ok("true"),
                        "PostgreSQL at {admin} is required under CI=true: {e}"
                    );
                    eprintln!("SKIPPED: PostgreSQL at {admin}: {e}");
                    return None;
                }
                Some(Self {
                    at: Location::Postgres(with_database(&admin, &name)),
                    _dir: None,
                    pg: Some((admin, name)),
                })
            }
        }
    }

    /// One number from a query (`SELECT count(*) ...`) on a connection of its own.
    fn count(&self, sql: &str) -> i64 {
        match &self.at {
            Location::Sqlite(p) => rusqlite::Connection::open(p)
                .unwrap()
                .query_row(sql, [], |r| r.get(0))
                .unwrap(),
            Location::Postgres(url) => super::postgres::off_runtime(|| {
                let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
                c.query_one(sql, &[]).unwrap().get(0)
            }),
        }
    }

    /// A constraint that readings of points named like `pattern` break, as
    /// a schema change or a corrupt value would.
    fn poison_readings_of(&self, pattern: &str) {
        match &self.at {
            Location::Sqlite(p) => rusqlite::Connection::open(p)
                .unwrap()
                .execute_batch(&format!(
                    "CREATE TRIGGER poison BEFORE INSERT ON readings
                     WHEN NEW.point IN (SELECT id FROM points WHERE name LIKE '{pattern}')
                     BEGIN SELECT RAISE(ABORT, 'poisoned row'); END;"
                ))
                .unwrap(),
            Location::Postgres(url) => super::postgres::off_runtime(|| {
                let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
                c.batch_execute(&format!(
                    "CREATE FUNCTION poison() RETURNS trigger AS $$ BEGIN
                       IF NEW.point IN (SELECT id FROM points WHERE name LIKE '{pattern}') THEN
                         RAISE EXCEPTION 'poisoned row' USING ERRCODE = 'check_violation';
                       END IF;
                       RETURN NEW;
                     END $$ LANGUAGE plpgsql;
                     CREATE TRIGGER poison BEFORE INSERT ON readings FOR EACH ROW EXECUTE FUNCTION poison();"
                ))
                .unwrap()
            }),
        }
    }

    /// What a writer's pruning drops at `now` with `keep` (through the
    /// backend itself, on a writer of its own).
    fn prune(&self, keep: Retention, now: Timestamp) -> Vec<(&'static str, usize)> {
        use super::writer::Backend;
        match &self.at {
            Location::Sqlite(p) => {
                let (mut w, _, _) = super::sqlite::open(p, false).unwrap();
                w.prune(keep, now).unwrap()
            }
            Location::Postgres(url) => super::postgres::off_runtime(|| {
                let (mut w, _, _) = super::postgres::open(url, false).unwrap();
                w.prune(keep, now).unwrap()
            }),
        }
    }
}

impl Db {
    /// The store on this database (with the export feed when `feed`), its
    /// metrics and its quarantine.
    fn store(&self, feed: bool) -> (Store, Arc<Metrics>, Arc<Quarantine>) {
        let metrics = Arc::new(Metrics::new());
        let q = Arc::new(Quarantine::new(10));
        let (store, _) = Store::open_at(&self.at, 8, Retention::default(), feed, metrics.clone(), q.clone()).unwrap();
        (store, metrics, q)
    }

    /// A second and a third writer on a PostgreSQL store, as other nodes
    /// would be: `row` is inserted by the slow one in a transaction left open
    /// (so it takes the lower seq) and then by the fast one, committed.
    fn slow_and_fast(&self, row: impl Fn(&str) -> String) -> (postgres::Client, postgres::Client) {
        let Location::Postgres(url) = &self.at else {
            unreachable!("two writers are PostgreSQL's case")
        };
        let (slow_row, fast_row) = (row("slow"), row("fast"));
        super::postgres::off_runtime(|| {
            let mut slow = postgres::Client::connect(url, postgres::NoTls).unwrap();
            let mut fast = postgres::Client::connect(url, postgres::NoTls).unwrap();
            slow.batch_execute(&format!("BEGIN; {slow_row}")).unwrap();
            fast.batch_execute(&fast_row).unwrap();
            (slow, fast)
        })
    }
}

/// Ends the slow writer's transaction; both clients are dropped off the
/// async runtime.
fn commit_and_drop(mut slow: postgres::Client, fast: postgres::Client) {
    super::postgres::off_runtime(move || {
        slow.batch_execute("COMMIT").unwrap();
        drop((slow, fast));
    })
}

impl Drop for Db {
    fn drop(&mut self) {
        if let Some((admin, name)) = self.pg.take() {
            super::postgres::off_runtime(|| {
                if let Ok(mut c) = postgres::Client::connect(&admin, postgres::NoTls) {
                    let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
                }
            });
        }
    }
}

struct Count(Arc<AtomicUsize>);
impl super::Ack for Count {
    fn ack(self: Box<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn reading(site: &str, t: i64) -> Reading {
    let site = SiteId::new(site).unwrap();
    Reading {
        point: PointId::new(&site, "flow").unwrap(),
        t: from_ms(t),
        value: Some(1.0),
        quality: Quality::Good,
        arrived: from_ms(t),
    }
}

/// Each test on both stores: `name::sqlite` and `name::postgres`.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name(super::Kind::Sqlite).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name(super::Kind::Postgres).await
                }
            }
        )*
    };
}

on_both!(
    every_commit_is_in_the_export_feed_in_order_until_delivered,
    a_row_that_can_never_commit_is_quarantined_and_the_rest_commits,
    each_commit_is_published_after_it_is_durable_with_its_transitions,
    rollups_agree_with_the_raw_readings_through_late_duplicate_and_bad_data,
    retention_drops_only_what_is_past_it_per_table,
    deliveries_of_a_round_are_recorded_sent_together
);

/// The notify engine records a round of deliveries in one statement or
/// transaction: exactly those messages are sent, the rest still due.
async fn deliveries_of_a_round_are_recorded_sent_together(kind: Kind) {
    use super::outbox::{Outbox, OutboxRow};
    let Some(db) = Db::new(kind) else { return };
    let (_store, _, _) = db.store(false);
    let outbox = Outbox::open_at(&db.at).unwrap();
    let now = from_ms(5_000);
    for (id, incident) in [("m-1", "i-1"), ("m-2", "i-2"), ("m-3", "i-3")] {
        let body = serde_json::from_value(serde_json::json!({"id": id, "type": "alarm.raised", "sent_at": null,
            "recipient": "tanaka", "recipient_name": "田中", "language": "ja", "board_url": "http://x/"}))
        .unwrap();
        outbox
            .insert(&OutboxRow {
                incident_id: incident.into(),
                channel: "webhook:ops".into(),
                alarm_ids: vec![format!("al-{id}")],
                ..OutboxRow::due(now, body)
            })
            .unwrap();
    }
    let due = |o: &Outbox| -> Vec<String> { o.due(now, 10).unwrap().into_iter().map(|r| r.id).collect() };
    assert_eq!(due(&outbox), ["m-1", "m-2", "m-3"]);
    outbox.mark_sent_all(&["m-1".into(), "m-3".into()], now).unwrap();
    assert_eq!(due(&outbox), ["m-2"], "only the recorded ones are sent");
    let mut sent: Vec<String> = outbox.sent_alarm_ids().unwrap().into_iter().collect();
    sent.sort();
    assert_eq!(sent, ["al-m-1", "al-m-3"]);
}

async fn a_row_that_can_never_commit_is_quarantined_and_the_rest_commits(kind: Kind) {
    let Some(db) = Db::new(kind) else { return };
    let (store, metrics, q) = db.store(false);
    // A constraint the bad row breaks (as a schema change or a corrupt
    // value would): a trigger that refuses one site's readings.
    db.poison_readings_of("BAD%");
    let acked = Arc::new(AtomicUsize::new(0));
    for (site, t) in [("DM-01", 1_000), ("BAD-1", 2_000), ("DM-02", 3_000)] {
        let b = Batch {
            readings: vec![reading(site, t)],
            acks: vec![Box::new(Count(acked.clone()))],
            ..Default::default()
        };
        store.submit(b, &metrics).await.unwrap();
    }
    store.flush().await.unwrap();
    assert!(store.is_healthy(), "a poisoned row must not turn into a failing store");
    assert_eq!(
        acked.load(Ordering::SeqCst),
        3,
        "every message behind the batches is acknowledged"
    );
    let got = |site: &str| {
        let site = SiteId::new(site).unwrap();
        store
            .readings(&PointId::new(&site, "flow").unwrap(), from_ms(0), from_ms(10_000), 10)
            .unwrap()
            .0
            .len()
    };
    assert_eq!((got("DM-01"), got("BAD-1"), got("DM-02")), (1, 0, 1));
    let list = q.list(10);
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].reason, "store_rejected");
    assert_eq!(list[0].topic, "store:readings");
    assert!(list[0].error.contains("poisoned row"), "{:?}", list[0]);
    assert!(list[0].payload.contains("BAD-1.flow"), "{:?}", list[0]);
    assert!(metrics
        .encode()
        .contains("mizuban_store_rejected_rows_total{reason=\"readings\"} 1"));
    // And later batches are not held up by it.
    store
        .submit(
            Batch {
                readings: vec![reading("DM-03", 4_000)],
                ..Default::default()
            },
            &metrics,
        )
        .await
        .unwrap();
    store.flush().await.unwrap();
    assert_eq!(got("DM-03"), 1);
}

async fn each_commit_is_published_after_it_is_durable_with_its_transitions(kind: Kind) {
    use crate::alarm::{AlarmOrigin, RaiseSpec, Registry};
    use crate::model::DeviceId;
    let Some(db) = Db::new(kind) else { return };
    let (store, metrics, _) = db.store(false);
    let mut commits = store.subscribe();
    store
        .submit(
            Batch {
                readings: vec![reading("DM-01", 1_000)],
                ..Default::default()
            },
            &metrics,
        )
        .await
        .unwrap();
    let c = commits.recv().await.unwrap();
    assert_eq!((c.readings, c.transitions.len()), (1, 0));
    let mut reg = Registry::new();
    let spec = RaiseSpec {
        site: SiteId::new("MP-0001").unwrap(),
        device: DeviceId::new("AKT-MPN-0001").unwrap(),
        source: "AKT-MPN-0001".into(),
        condition: "DOOR_OPEN".into(),
        origin: AlarmOrigin::Device,
        priority: crate::device::Priority::High,
        value: None,
        limit: None,
        message: "door open".into(),
        message_ja: "扉開".into(),
        suppressed_by: vec![],
    };
    let transitions = reg.raise(spec, from_ms(2_000), from_ms(2_000));
    let id = transitions[0].alarm.id.clone();
    store
        .submit(
            Batch {
                transitions,
                ..Default::default()
            },
            &metrics,
        )
        .await
        .unwrap();
    let c = commits.recv().await.unwrap();
    assert_eq!(c.transitions.len(), 1);
    assert_eq!(c.transitions[0].alarm.id, id);
    // Published means durable: another connection reads it at once.
    let n = db.count(&format!("SELECT count(*) FROM journal WHERE alarm_id = '{id}'"));
    assert_eq!(n, 1, "the transition is in the journal when it is published");
}

async fn submit_readings(store: &Store, metrics: &Metrics, readings: Vec<Reading>) {
    let b = Batch {
        readings,
        ..Default::default()
    };
    store.submit(b, metrics).await.unwrap();
}

fn at(site: &str, t: i64, v: Option<f64>, q: Quality) -> Reading {
    Reading {
        value: v,
        quality: q,
        ..reading(site, t)
    }
}

async fn rollups_agree_with_the_raw_readings_through_late_duplicate_and_bad_data(kind: Kind) {
    let Some(db) = Db::new(kind) else { return };
    let (store, metrics, _) = db.store(false);
    // Three hours of a reading every 20 s, in shuffled batches, with
    // every tenth sent twice (a QoS 1 redelivery), some bad or without a
    // value, and the first hour arriving last (a backlog).
    let base = 1_764_633_600_000; // 2025-12-02T00:00Z, on an hour
    let mut all: Vec<Reading> = (0..540)
        .map(|i| {
            let t = base + i * 20_000;
            let v = ((i * 37) % 101) as f64 / 7.0;
            match i % 17 {
                3 => at("DM-01", t, Some(v), Quality::Bad),
                5 => at("DM-01", t, None, Quality::Uncertain),
                7 => at("DM-01", t, Some(v), Quality::Uncertain),
                _ => at("DM-01", t, Some(v), Quality::Good),
            }
        })
        .collect();
    all.rotate_left(180);
    let mut rng: u64 = 7;
    for chunk in all.chunks(23) {
        let mut readings = chunk.to_vec();
        for r in chunk.iter().step_by(10) {
            readings.push(r.clone());
        }
        // A shuffle without a crate: the order within a batch is arbitrary.
        for k in (1..readings.len()).rev() {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            readings.swap(k, (rng >> 33) as usize % (k + 1));
        }
        submit_readings(&store, &metrics, readings).await;
    }
    // A redelivery in a later transaction, of readings already stored.
    store
        .submit(
            Batch {
                readings: all[..50].to_vec(),
                ..Default::default()
            },
            &metrics,
        )
        .await
        .unwrap();
    store.flush().await.unwrap();

    let point = PointId::new(&SiteId::new("DM-01").unwrap(), "flow").unwrap();
    let (raw, _) = store
        .readings(&point, from_ms(base), from_ms(base + 3 * HOUR_MS), 10_000)
        .unwrap();
    assert_eq!(raw.len(), 540, "every reading stored once");
    for (res, width) in [(Resolution::Minute, MINUTE_MS), (Resolution::Hour, HOUR_MS)] {
        let (got, more) = store
            .rollups(&point, res, from_ms(base), from_ms(base + 3 * HOUR_MS), 10_000)
            .unwrap();
        assert!(!more);
        // The same buckets computed afresh from the raw readings.
        let mut want: Vec<Bucket> = Vec::new();
        for (t, v, q, _) in &raw {
            let (Some(v), false) = (v, *q == Quality::Bad) else {
                continue;
            };
            let b = ms(*t) - ms(*t).rem_euclid(width);
            match want.last_mut() {
                Some(w) if ms(w.t) == b => {
                    w.count += 1;
                    w.mean += v;
                    w.min = w.min.min(*v);
                    w.max = w.max.max(*v);
                }
                _ => want.push(Bucket {
                    t: from_ms(b),
                    mean: *v,
                    min: *v,
                    max: *v,
                    count: 1,
                }),
            }
        }
        for w in &mut want {
            w.mean /= w.count as f64;
        }
        assert_eq!(got.len(), want.len(), "{res:?}");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!((g.t, g.count, g.min, g.max), (w.t, w.count, w.min, w.max), "{res:?}");
            assert!((g.mean - w.mean).abs() < 1e-9, "{res:?} {g:?} {w:?}");
        }
    }
    // A span starting mid-bucket includes the bucket it starts in, and
    // pages when it holds more than the limit.
    let (page, more) = store
        .rollups(
            &point,
            Resolution::Hour,
            from_ms(base + 90 * MINUTE_MS),
            from_ms(base + 3 * HOUR_MS),
            1,
        )
        .unwrap();
    assert_eq!((ms(page[0].t), more), (base + HOUR_MS, true));
}

async fn retention_drops_only_what_is_past_it_per_table(kind: Kind) {
    let Some(db) = Db::new(kind) else { return };
    let (store, metrics, _) = db.store(false);
    let day = 86_400_000;
    let now = 1_764_633_600_000;
    // Three points, a reading every 6 hours over 40 days.
    let readings: Vec<Reading> = ["DM-01", "DM-02", "MP-0001"]
        .iter()
        .flat_map(|s| (0..160).map(move |i| at(s, now - 40 * day + i * day / 4, Some(i as f64), Quality::Good)))
        .collect();
    submit_readings(&store, &metrics, readings).await;
    store.flush().await.unwrap();
    let count =
        |table: &str, older: i64| -> i64 { db.count(&format!("SELECT count(*) FROM {table} WHERE t < {older}")) };
    let total = |table: &str| count(table, i64::MAX);
    assert_eq!(
        (total("readings"), total("rollup_1m"), total("rollup_1h")),
        (480, 480, 480)
    );
    let keep = Retention {
        inputs_days: 0,
        readings_days: 10,
        rollup_1m_days: 20,
        rollup_1h_days: 0,
    };
    let pruned = db.prune(keep, from_ms(now));
    // 10 and 20 days of 4 readings a day per point remain.
    assert_eq!(
        (total("readings"), total("rollup_1m"), total("rollup_1h")),
        (120, 240, 480)
    );
    assert_eq!(
        (count("readings", now - 10 * day), count("rollup_1m", now - 20 * day)),
        (0, 0)
    );
    assert_eq!(pruned.iter().map(|(_, n)| *n).collect::<Vec<_>>(), [0, 360, 240, 0]);
    // What the store serves agrees: raw is gone past 10 days, the hourly
    // trend is whole.
    let point = PointId::new(&SiteId::new("DM-02").unwrap(), "flow").unwrap();
    let (raw, _) = store
        .readings(&point, from_ms(now - 40 * day), from_ms(now), 1000)
        .unwrap();
    let (hours, _) = store
        .rollups(&point, Resolution::Hour, from_ms(now - 40 * day), from_ms(now), 1000)
        .unwrap();
    assert_eq!((raw.len(), hours.len()), (40, 160));
}

async fn every_commit_is_in_the_export_feed_in_order_until_delivered(kind: Kind) {
    let Some(db) = Db::new(kind) else { return };
    let (store, metrics, _) = db.store(true);
    let feed = super::feed::Feed::open_at(&db.at).unwrap();
    for (site, t) in [("DM-01", 1_000), ("DM-02", 2_000), ("DM-01", 3_000), ("DM-01", 1_000)] {
        let b = Batch {
            readings: vec![reading(site, t)],
            ..Default::default()
        };
        store.submit(b, &metrics).await.unwrap();
        store.flush().await.unwrap();
    }
    let got: Vec<(String, i64)> = feed
        .next(0, 5000)
        .unwrap()
        .iter()
        .flat_map(|r| r.readings.iter().map(|x| (x.point.clone(), x.t)))
        .collect();
    // The duplicate (DM-01 at 1 s again) was not stored, so not exported.
    let want = [("DM-01.flow", 1_000), ("DM-02.flow", 2_000), ("DM-01.flow", 3_000)];
    assert_eq!(got, want.map(|(p, t)| (p.to_string(), t)));
    let p = feed.pending().unwrap();
    assert_eq!((p.records, p.readings), (3, 3));
    let records = feed.next(0, 1).unwrap();
    assert_eq!(records.len(), 1, "a record at a time when one fills the request");
    feed.done(records[0].seq).unwrap();
    assert_eq!(feed.pending().unwrap().readings, 2);
    assert_eq!(feed.next(0, 5000).unwrap()[0].readings[0].point, "DM-02.flow");
    // Emptied, the feed goes on after its last sequence, never behind a
    // sink's cursor.
    let last = feed.next(0, 5000).unwrap().last().unwrap().seq;
    feed.done(last).unwrap();
    let b = Batch {
        readings: vec![reading("DM-03", 4_000)],
        ..Default::default()
    };
    store.submit(b, &metrics).await.unwrap();
    store.flush().await.unwrap();
    let after = feed.next(last, 5000).unwrap();
    assert_eq!(after.len(), 1);
    assert!(after[0].seq > last);
}

/// What a PUBACK promises on PostgreSQL: the writer's commits wait for the
/// server's WAL flush (and the server itself does flush).
#[test]
fn the_postgres_writer_commits_only_once_the_wal_is_flushed() {
    let Some(db) = Db::new(Kind::Postgres) else { return };
    let Location::Postgres(url) = &db.at else {
        unreachable!()
    };
    let (mut w, _, _) = super::postgres::open(url, false).unwrap();
    assert_eq!(w.setting("synchronous_commit"), "on");
    assert_eq!(w.setting("fsync"), "on", "the server flushes what it commits");
}

/// Two writers on one PostgreSQL journal (later, two nodes): a row whose
/// transaction commits after a later row's is not passed over; the engine
/// waits until that part of the journal is final (its step reads nothing
/// new while a writer holds the journal longer than the lock wait).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_notify_cursor_passes_no_row_a_slower_writer_commits_later() {
    let Some(db) = Db::new(Kind::Postgres) else { return };
    let (_store, _, _) = db.store(false);
    let outbox = super::outbox::Outbox::open_at(&db.at).unwrap();
    let (slow, fast) = db.slow_and_fast(|id| {
        format!(
            "INSERT INTO journal (at, alarm_id, site, source, condition, action, from_state, to_state, who, notify, late)
             VALUES (1000, '{id}', 'MP-0001', 'dev', 'DOOR_OPEN', 'raise', 'normal', 'unack_active', 'test', false, false)"
        )
    });
    let planned = |outbox: &super::outbox::Outbox| {
        let mut seen = Vec::new();
        outbox
            .plan(from_ms(2_000), &[], |_, journal, _| {
                seen.extend(journal.iter().map(|j| j.alarm_id.clone()));
                Ok(())
            })
            .unwrap();
        seen
    };
    assert_eq!(
        planned(&outbox),
        Vec::<String>::new(),
        "nothing is final while the slow writer is open"
    );
    commit_and_drop(slow, fast);
    assert_eq!(planned(&outbox), ["slow", "fast"], "both, in journal order, once final");
    assert_eq!(planned(&outbox), Vec::<String>::new(), "and never again");
}

/// The export feed on PostgreSQL, with two writers: the sink is never given
/// a record past one a slower writer has yet to commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_passes_no_record_a_slower_writer_commits_later() {
    let Some(db) = Db::new(Kind::Postgres) else { return };
    let (_store, _, _) = db.store(true);
    let feed = super::feed::Feed::open_at(&db.at).unwrap();
    let (slow, fast) = db.slow_and_fast(|_| {
        "INSERT INTO feed (committed, readings, transitions, body)
         VALUES (1000, 0, 0, convert_to('{\"readings\":[],\"transitions\":[]}', 'UTF8'))"
            .to_string()
    });
    let seqs = |feed: &super::feed::Feed| feed.next(0, 5000).unwrap().iter().map(|r| r.seq).collect::<Vec<_>>();
    assert_eq!(seqs(&feed), Vec::<i64>::new(), "nothing while the slow writer is open");
    commit_and_drop(slow, fast);
    assert_eq!(seqs(&feed), [1, 2], "both, in order, once final");
}
