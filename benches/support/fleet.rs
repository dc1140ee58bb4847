//! The fleet the store benches ingest: 241 sites' hourly uploads, three
//! points of twelve 5-minute samples each (36 readings per message), every
//! message one batch as the pipeline submits it (its readings, the input as
//! received, its dedup key, the site's latest raw message).
#![allow(dead_code)] // each bench uses its part

use chrono::{DateTime, Duration, Utc};
use mizuban::model::{PointId, Quality, Reading, SiteId};
use mizuban::store::{Batch, InputBody, RecordedInput, Retention, Store};
use mizuban::telemetry::quarantine::Quarantine;
use mizuban::telemetry::Metrics;
use std::path::Path;
use std::sync::Arc;

pub const SITES: usize = 241;
pub const POINTS: [&str; 3] = ["q", "p", "tot"];

pub fn base() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

/// A fresh store at `path`; with `feed`, commits also fill the export feed.
#[allow(dead_code)]
pub fn open(path: &Path, feed: bool) -> (Store, Arc<Metrics>) {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(path.with_extension("db-wal"));
    let _ = std::fs::remove_file(path.with_extension("db-shm"));
    open_at(&mizuban::store::Location::Sqlite(path.to_path_buf()), feed)
}

/// An empty PostgreSQL database `name` on the server `admin` connects to
/// (dropped first if it is there), as a store location.
#[allow(dead_code)]
pub fn fresh_postgres(admin: &str, name: &str) -> mizuban::store::Location {
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut c = postgres::Client::connect(admin, postgres::NoTls).expect("PostgreSQL for the bench");
            c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .unwrap();
            c.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
        })
        .join()
        .unwrap()
    });
    let (base, _) = admin.rsplit_once('/').unwrap();
    mizuban::store::Location::Postgres(format!("{base}/{name}"))
}

/// A store at `at` for the bench: nothing pruned, a deep queue.
pub fn open_at(at: &mizuban::store::Location, feed: bool) -> (Store, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let retention = Retention {
        inputs_days: 0,
        readings_days: 0,
        rollup_1m_days: 0,
        rollup_1h_days: 0,
    };
    let (store, _) = Store::open_at(
        at,
        1024,
        retention,
        feed,
        metrics.clone(),
        Arc::new(Quarantine::new(16)),
    )
    .unwrap();
    (store, metrics)
}

/// One site's hourly upload: 12 samples of three points, as one batch.
pub fn upload(site: &SiteId, ids: &[PointId], hour: i64, arrived: DateTime<Utc>) -> Batch {
    let mut readings = Vec::with_capacity(36);
    for k in 0..12 {
        let t = base() + Duration::hours(hour) + Duration::minutes(5 * k);
        for (i, id) in ids.iter().enumerate() {
            let v = match i {
                0 => 80.0 + ((hour * 12 + k) % 37) as f64,
                1 => 0.35 + ((hour + k) % 9) as f64 * 0.01,
                _ => 1.0e5 + (hour * 12 + k) as f64 * 7.0,
            };
            readings.push(Reading {
                point: id.clone(),
                t,
                value: Some(v),
                quality: Quality::Good,
                arrived,
            });
        }
    }
    // The payload as a logger sends it, about the size the fleet's are.
    let payload = format!(
        r#"{{"schema":"dma-telemetry/1","block_id":"{site}","seq":{hour},"boot":1,"samples":[{}]}}"#,
        (0..12)
            .map(|k| format!(r#"{{"t":"{}","q":88.25,"p":0.372,"tot":100123.5}}"#, k))
            .collect::<Vec<_>>()
            .join(",")
    );
    Batch {
        readings,
        seen: vec![(format!("AKT-DMA-{site}"), 1, hour as u64, arrived)],
        raw: vec![(site.as_str().to_string(), payload.clone(), arrived)],
        inputs: vec![RecordedInput {
            arrived,
            site: Some(site.as_str().to_string()),
            body: InputBody::Mqtt {
                topic: format!("akita/v1/dma/{site}/telemetry"),
                payload: payload.into_bytes().into(),
            },
        }],
        ..Default::default()
    }
}

/// Every site with its point ids.
pub fn sites() -> Vec<(SiteId, Vec<PointId>)> {
    (0..SITES)
        .map(|i| {
            let s = SiteId::new(&format!("B{i:03}")).unwrap();
            let ids = POINTS.iter().map(|p| PointId::new(&s, p).unwrap()).collect();
            (s, ids)
        })
        .collect()
}

/// Submits `hours` of every site's uploads from `from_hour` as fast as the
/// writer takes them; returns once all are committed.
pub async fn ingest(store: &Store, metrics: &Metrics, sites: &[(SiteId, Vec<PointId>)], from_hour: i64, hours: i64) {
    let mut acks = Vec::with_capacity(sites.len() * hours as usize);
    for hour in from_hour..from_hour + hours {
        let arrived = base() + Duration::hours(hour + 1);
        for (s, ids) in sites {
            let mut b = upload(s, ids, hour, arrived);
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            b.acks.push(Box::new(tx));
            store.submit(b, metrics).await.unwrap();
            acks.push(rx);
        }
    }
    for rx in acks {
        rx.await.unwrap();
    }
}
