//! The historian on SQLite with the durability the README promises
//! (`synchronous = FULL`, WAL; a batch is acknowledged only after its commit):
//!
//! - **ingest**: a month of the fleet's hourly uploads (241 sites, three
//!   points, twelve 5-minute samples each: 36 readings per message), every
//!   message a batch as the pipeline submits it (its readings, the input as
//!   received, its dedup key, the site's latest raw message), submitted as
//!   fast as the writer takes them; committed readings per second, rollups
//!   included;
//! - **point-month read**: one point's month raw (8,640 readings) and from
//!   the 1-minute and 1-hour rollups, median of 50 reads;
//! - **1-year trend**: one point with a year of 5-minute readings, read as
//!   the board does (hourly rollups, 8,760 buckets), median of 20;
//! - **bytes on disk per reading** after the month (database + WAL, inputs
//!   and rollups included).
//!
//! `cargo bench --bench store -- [DAYS] [postgres]` (default 30 days, on
//! SQLite). The SQLite database is made under target/store-bench/ (a real
//! disk, not tmpfs: fsync is the cost). With `postgres`, the same on the
//! server `MIZUBAN_BENCH_POSTGRES` names (default
//! `postgres://root@127.0.0.1:5432/postgres`), in databases
//! `mizuban_bench_month` and `mizuban_bench_year` made afresh; bytes on disk
//! are `pg_database_size` (its WAL is the server's, shared, and not counted).

#[path = "support/fleet.rs"]
mod fleet;

use chrono::Duration;
use fleet::{base, fresh_postgres, open, open_at, SITES};
use mizuban::model::{PointId, Quality, Reading, SiteId};
use mizuban::store::{Batch, Resolution};
use std::path::Path;
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn time_ms(n: usize, mut f: impl FnMut()) -> f64 {
    median(
        (0..n)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64() * 1000.0
            })
            .collect(),
    )
}

fn size(path: &Path, ext: &str) -> u64 {
    std::fs::metadata(path.with_extension(ext))
        .map(|m| m.len())
        .unwrap_or(0)
}

/// The database's size on the server.
fn pg_size(admin: &str, name: &str) -> u64 {
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut c = postgres::Client::connect(admin, postgres::NoTls).unwrap();
            c.query_one("SELECT pg_database_size($1)", &[&name])
                .unwrap()
                .get::<_, i64>(0) as u64
        })
        .join()
        .unwrap()
    })
}

#[tokio::main]
async fn main() {
    let days: i64 = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(30);
    let pg = std::env::args().any(|a| a == "postgres").then(|| {
        std::env::var("MIZUBAN_BENCH_POSTGRES").unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/postgres".into())
    });
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/store-bench");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("month.db");
    let (store, metrics) = match &pg {
        Some(admin) => open_at(&fresh_postgres(admin, "mizuban_bench_month"), false),
        None => open(&path, false),
    };
    println!("store: {}", if pg.is_some() { "PostgreSQL" } else { "SQLite" });
    let sites = fleet::sites();

    // Ingest: every message a batch with its ack; the clock stops when the
    // last ack has run (everything committed).
    let hours = days * 24;
    let started = Instant::now();
    fleet::ingest(&store, &metrics, &sites, 0, hours).await;
    let secs = started.elapsed().as_secs_f64();
    let readings = (hours as usize * SITES * 36) as f64;
    let messages = (hours as usize * SITES) as f64;
    let commit = metrics.encode();
    let commits = commit
        .lines()
        .find(|l| l.starts_with("mizuban_store_commit_seconds_count"))
        .and_then(|l| l.split_whitespace().last())
        .unwrap_or("?")
        .to_string();
    println!(
        "ingest: {days} days of {SITES} sites, {readings:.0} readings in {messages:.0} batches, {commits} commits: {secs:.1} s, {:.0} readings/s ({:.0} messages/s)",
        readings / secs,
        messages / secs
    );
    // The WAL is bounded (its checkpoint interval), not a cost per reading.
    let (bytes, wal) = match &pg {
        Some(admin) => (pg_size(admin, "mizuban_bench_month"), 0),
        None => (size(&path, "db"), size(&path, "db-wal")),
    };
    println!(
        "on disk: {:.1} MiB database ({:.1} bytes per reading: raw readings, 1m and 1h rollups, inputs as received, dedup keys) + {:.1} MiB WAL",
        bytes as f64 / 1048576.0,
        bytes as f64 / readings,
        wal as f64 / 1048576.0
    );

    // A point's month, raw and from the rollups.
    let point = sites[7].1[0].clone();
    let (from, to) = (base(), base() + Duration::days(days.min(30)));
    let (raw, _) = store.readings(&point, from, to, 100_000).unwrap();
    let raw_ms = time_ms(50, || {
        store.readings(&point, from, to, 100_000).unwrap();
    });
    let (m1, _) = store.rollups(&point, Resolution::Minute, from, to, 100_000).unwrap();
    let m1_ms = time_ms(50, || {
        store.rollups(&point, Resolution::Minute, from, to, 100_000).unwrap();
    });
    let (h1, _) = store.rollups(&point, Resolution::Hour, from, to, 100_000).unwrap();
    let h1_ms = time_ms(50, || {
        store.rollups(&point, Resolution::Hour, from, to, 100_000).unwrap();
    });
    println!(
        "point-month read: raw {} readings {raw_ms:.2} ms; 1m rollups {} buckets {m1_ms:.2} ms; 1h rollups {} buckets {h1_ms:.2} ms (median of 50)",
        raw.len(),
        m1.len(),
        h1.len()
    );
    drop(store);

    // A year of one point at 5 minutes, read as the board's 1-year trend.
    let path = dir.join("year.db");
    let (store, metrics) = match &pg {
        Some(admin) => open_at(&fresh_postgres(admin, "mizuban_bench_year"), false),
        None => open(&path, false),
    };
    let site = SiteId::new("B001").unwrap();
    let id = PointId::new(&site, "q").unwrap();
    let mut acks = Vec::new();
    for hour in 0..365 * 24 {
        let readings = (0..12)
            .map(|k| Reading {
                point: id.clone(),
                t: base() + Duration::hours(hour) + Duration::minutes(5 * k),
                value: Some(50.0 + (hour % 24) as f64 + k as f64 * 0.1),
                quality: Quality::Good,
                arrived: base() + Duration::hours(hour + 1),
            })
            .collect();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let b = Batch {
            readings,
            acks: vec![Box::new(tx)],
            ..Default::default()
        };
        store.submit(b, &metrics).await.unwrap();
        acks.push(rx);
    }
    for rx in acks {
        rx.await.unwrap();
    }
    let (from, to) = (base(), base() + Duration::days(365));
    let (year, _) = store.rollups(&id, Resolution::Hour, from, to, 100_000).unwrap();
    let year_ms = time_ms(20, || {
        store.rollups(&id, Resolution::Hour, from, to, 100_000).unwrap();
    });
    let (year_raw, _) = store.readings(&id, from, to, 200_000).unwrap();
    let year_raw_ms = time_ms(5, || {
        store.readings(&id, from, to, 200_000).unwrap();
    });
    println!(
        "1-year trend: 1h rollups {} buckets {year_ms:.2} ms (median of 20); the same year raw, {} readings, {year_raw_ms:.1} ms",
        year.len(),
        year_raw.len()
    );
}
