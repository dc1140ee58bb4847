//! The InfluxDB 2 sink's rates against a real server of InfluxDB 2's write
//! API (VictoriaMetrics, `/usr/bin/victoria-metrics`, started here on a free
//! port with its data under target/sink-bench/):
//!
//! - **catch-up**: DAYS of the fleet's uploads (241 sites, 36 readings per
//!   message) committed while the sink is not running — an outage — then
//!   the sink started: lines per second until the feed is empty;
//! - **sustained**: the sink running while another DAYS are committed as
//!   fast as the store takes them: lines per second from the first commit
//!   until the feed is empty, and how far behind the sink was when ingest
//!   ended.
//!
//! Requests of 5,000 lines, gzipped, as configured by default.
//! `cargo bench --bench sink -- [DAYS] [postgres]` (default 3 days, on
//! SQLite; with `postgres`, on the server `MIZUBAN_BENCH_POSTGRES` names, in
//! a database `mizuban_bench_sink` made afresh).

#[path = "support/fleet.rs"]
mod fleet;

use mizuban::config::InfluxSection;
use mizuban::model::SiteKind;
use mizuban::sink::influx::{Lines, Sink};
use mizuban::store::feed::Feed;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const VM: &str = "/usr/bin/victoria-metrics";

async fn drained(feed: &Feed) -> Duration {
    let t = Instant::now();
    while feed.pending().unwrap().records > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t.elapsed()
}

#[tokio::main]
async fn main() {
    let days: i64 = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(3);
    if !Path::new(VM).exists() {
        eprintln!("{VM} is missing: apt-get install victoria-metrics");
        std::process::exit(2);
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/sink-bench");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut vm = std::process::Command::new(VM)
        .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
        .arg(format!("-storageDataPath={}", dir.join("vm").display()))
        .arg("-retentionPeriod=100y")
        .arg("-loggerLevel=ERROR")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    for _ in 0..200 {
        if http.get(format!("http://127.0.0.1:{port}/health")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let path = dir.join("sink.db");
    let at = match std::env::args().any(|a| a == "postgres") {
        true => fleet::fresh_postgres(
            &std::env::var("MIZUBAN_BENCH_POSTGRES")
                .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/postgres".into()),
            "mizuban_bench_sink",
        ),
        false => {
            let _ = std::fs::remove_file(&path);
            mizuban::store::Location::Sqlite(path.clone())
        }
    };
    println!("store: {at}");
    let (store, metrics) = fleet::open_at(&at, true);
    let sites = fleet::sites();
    let feed = Feed::open_at(&at).unwrap();
    let influx = InfluxSection {
        url: format!("http://127.0.0.1:{port}"),
        org: "akita".into(),
        bucket: "mizuban".into(),
        token: String::new(),
        token_env: None,
        batch_lines: 5000,
        gzip: true,
        timeout_s: 30,
        max_backoff_s: 5,
    };
    let lines = || {
        Lines::of_sites(
            sites
                .iter()
                .map(|(s, _)| (s.as_str().to_string(), "north".to_string(), SiteKind::Dma)),
        )
    };
    let hours = days * 24;
    let per_phase = (hours as usize * fleet::SITES * 36) as f64;

    // Catch-up: committed during an outage, then the sink starts.
    fleet::ingest(&store, &metrics, &sites, 0, hours).await;
    let waiting = feed.pending().unwrap();
    let cancel = CancellationToken::new();
    let sink = Sink::open(&at, &influx, lines(), metrics.clone()).unwrap();
    let task = sink.start(store.subscribe(), cancel.clone());
    let took = drained(&feed).await;
    println!(
        "catch-up: {} readings waiting ({} commits) after {days} days of outage, delivered in {:.1} s: {:.0} lines/s",
        waiting.readings,
        waiting.records,
        took.as_secs_f64(),
        waiting.readings as f64 / took.as_secs_f64()
    );

    // Sustained: the sink beside full-speed ingest.
    let started = Instant::now();
    fleet::ingest(&store, &metrics, &sites, hours, hours).await;
    let ingest = started.elapsed();
    let behind = feed.pending().unwrap();
    drained(&feed).await;
    let total = started.elapsed();
    println!(
        "sustained: {per_phase:.0} readings committed in {:.1} s ({:.0} readings/s) with the sink running; {} readings still waiting when ingest ended; all delivered after {:.1} s: {:.0} lines/s",
        ingest.as_secs_f64(),
        per_phase / ingest.as_secs_f64(),
        behind.readings,
        total.as_secs_f64(),
        per_phase / total.as_secs_f64()
    );
    let text = metrics.encode();
    let errors: u64 = text
        .lines()
        .filter(|l| l.starts_with("mizuban_influx_write_errors_total{"))
        .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
        .sum();
    println!("write errors: {errors}");
    cancel.cancel();
    let _ = task.await;
    let _ = vm.kill();
    let _ = vm.wait();
}
