//! The InfluxDB 2 sink against a real server of InfluxDB 2's write API:
//! VictoriaMetrics (Debian's `victoria-metrics`), which takes
//! `POST /api/v2/write` and exports what it stored (`/api/v1/export`). It is
//! started with `-dedup.minScrapeInterval=1ms`, so like InfluxDB it keeps one
//! sample per series and timestamp (a resent line replaces, not adds), and
//! `-retentionPeriod=100y` for the tests' 2025 timestamps.
//!
//! Each test compares what the server holds with what mizuban's own API
//! serves: the same readings, at the same event times, with the same values,
//! tagged with the site's configuration; and after an outage with a restart
//! of mizuban inside it, nothing missing.

mod common;

use chrono::{DateTime, Duration, Utc};
use common::*;
use mizuban_sim::dma::DmaOptions;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const VM: &str = "/usr/bin/victoria-metrics";

fn vm_present() -> bool {
    peer_present(
        Path::new(VM).exists(),
        "victoria-metrics (the InfluxDB 2 write API the sink is tested against)",
        "apt-get install victoria-metrics",
    )
}

/// A VictoriaMetrics server on its own port and data directory, stoppable
/// and restartable on both (an outage, then the same server back).
struct Vm {
    port: u16,
    data: PathBuf,
    _dir: tempfile::TempDir,
    child: Option<std::process::Child>,
    http: reqwest::Client,
}

impl Vm {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut vm = Self {
            port,
            data: dir.path().join("vm"),
            _dir: dir,
            child: None,
            http: reqwest::Client::new(),
        };
        vm.up().await;
        vm
    }

    async fn up(&mut self) {
        let child = std::process::Command::new(VM)
            .arg(format!("-httpListenAddr=127.0.0.1:{}", self.port))
            .arg(format!("-storageDataPath={}", self.data.display()))
            .arg("-retentionPeriod=100y")
            .arg("-dedup.minScrapeInterval=1ms")
            .arg("-loggerLevel=ERROR")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("victoria-metrics starts");
        self.child = Some(child);
        for _ in 0..200 {
            if let Ok(r) = self.http.get(self.url("/health")).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("victoria-metrics did not come up on port {}", self.port);
    }

    fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGTERM: it flushes what it took before stopping.
            let _ = std::process::Command::new("kill").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Every sample of the series whose name matches `re`: series labels to
    /// their (timestamp ms, value) samples, in time order.
    async fn export(&self, re: &str) -> BTreeMap<BTreeMap<String, String>, Vec<(i64, f64)>> {
        self.http.get(self.url("/internal/force_flush")).send().await.unwrap();
        let body = self
            .http
            .post(self.url("/api/v1/export"))
            .form(&[("match[]", format!("{{__name__=~\"{re}\"}}")), ("start", "0".into())])
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let mut out = BTreeMap::new();
        for line in body.lines().filter(|l| !l.is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let labels: BTreeMap<String, String> = v["metric"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect();
            let ts = v["timestamps"].as_array().unwrap();
            let vs = v["values"].as_array().unwrap();
            let mut samples: Vec<(i64, f64)> = ts
                .iter()
                .zip(vs)
                .map(|(t, x)| (t.as_i64().unwrap(), x.as_f64().unwrap()))
                .collect();
            samples.sort_by_key(|s| s.0);
            out.entry(labels).or_insert_with(Vec::new).extend(samples);
        }
        out
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn influx_config(port: u16) -> impl FnOnce(&Path) {
    move |dir: &Path| {
        let p = dir.join("mizuban.toml");
        let mut cfg = std::fs::read_to_string(&p).unwrap();
        cfg.push_str(&format!(
            "\n[influx]\nurl = \"http://127.0.0.1:{port}\"\norg = \"akita\"\nbucket = \"mizuban\"\ntoken = \"test-token\"\ntimeout_s = 5\nmax_backoff_s = 1\n"
        ));
        std::fs::write(p, cfg).unwrap();
    }
}

/// A point's readings as mizuban serves them: event time (ms) to value.
async fn stored(h: &Harness, point: &str) -> Vec<(i64, f64)> {
    let v = h
        .get(&format!(
            "/api/v1/points/{point}/readings?from=2025-01-01T00:00:00Z&to=2025-03-01T00:00:00Z&limit=100000"
        ))
        .await;
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let t: DateTime<Utc> = r["t"].as_str().unwrap().parse().unwrap();
            (t.timestamp_millis(), r["value"].as_f64().unwrap())
        })
        .collect()
}

/// Waits until the sink has nothing left to send. Read from the export feed
/// itself, not the pending gauge (which the sink refreshes when it wakes, so
/// it can still say 0 just after a commit): a commit's record is deleted only
/// once InfluxDB has taken every line of it.
async fn delivered(h: &Harness) {
    let app = h.app.as_ref().unwrap();
    app.store.flush().await.unwrap();
    let feed = mizuban::store::feed::Feed::open_at(&app.config.store_location()).unwrap();
    h.wait_until("the InfluxDB sink has delivered everything", || async {
        feed.pending().unwrap().records == 0
    })
    .await;
    assert!(h.metric("mizuban_influx_lines_total").await > 0.0);
}

fn series<'a>(
    all: &'a BTreeMap<BTreeMap<String, String>, Vec<(i64, f64)>>,
    name: &str,
    point: &str,
) -> Option<(&'a BTreeMap<String, String>, &'a Vec<(i64, f64)>)> {
    all.iter().find(|(l, _)| {
        l.get("__name__").map(String::as_str) == Some(name) && l.get("point").map(String::as_str) == Some(point)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_and_alarms_reach_influxdb_tagged_and_at_event_time() {
    if !vm_present() {
        return;
    }
    let vm = Vm::start().await;
    let h = Harness::start_custom(
        "influx-tags",
        &[dma("B01", "AKT-DMA-001"), dma("B02", "AKT-DMA-002")],
        None,
        broker(),
        influx_config(vm.port),
    )
    .await;
    let healthy = h.spawn_dma(DmaOptions::new("B01", "AKT-DMA-001"), t0()).await;
    // Below the low pressure limit (0.18 MPa) all along: a raised alarm.
    let low = h
        .spawn_dma(
            DmaOptions {
                base_pressure: 0.16,
                noise: false,
                ..DmaOptions::new("B02", "AKT-DMA-002")
            },
            t0(),
        )
        .await;
    h.run(&[&healthy, &low], Duration::hours(3)).await;
    delivered(&h).await;

    let all = vm.export("(q|p|tot)_(value|quality)").await;
    for point in ["B01.q", "B01.p", "B01.tot", "B02.q", "B02.p"] {
        let ours = stored(&h, point).await;
        assert!(
            ours.len() >= 24,
            "{point}: two uploads of 5-minute samples at least, got {}",
            ours.len()
        );
        let local = point.split_once('.').unwrap().1;
        let (labels, theirs) = series(&all, &format!("{local}_value"), point)
            .unwrap_or_else(|| panic!("{point} is in InfluxDB; series: {:?}", all.keys().collect::<Vec<_>>()));
        assert_eq!(
            theirs, &ours,
            "{point}: every reading, at its event time, with its value, once"
        );
        let site = point.split_once('.').unwrap().0;
        assert_eq!(labels.get("site").map(String::as_str), Some(site));
        assert_eq!(labels.get("area").map(String::as_str), Some("test"));
        assert_eq!(labels.get("kind").map(String::as_str), Some("dma"));
        let (_, quality) = series(&all, &format!("{local}_quality"), point).unwrap();
        assert_eq!(quality.len(), ours.len());
        assert!(quality.iter().all(|(_, q)| *q == 0.0), "good readings carry quality 0");
    }

    // The low pressure's raise, as an alarm line at the transition's time.
    let alarms = h.alarms_all().await;
    let raised = alarms
        .iter()
        .find(|a| a["site"] == "B02" && a["source"] == "B02.p")
        .unwrap_or_else(|| panic!("a pressure alarm on B02: {alarms:?}"));
    let condition = raised["condition"].as_str().unwrap();
    let journal = h.get("/api/v1/journal?site=B02").await;
    let raise_at: DateTime<Utc> = journal
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["action"] == "raise" && r["condition"] == condition)
        .unwrap_or_else(|| panic!("a raise in the journal: {journal}"))["at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let exported = vm.export("alarm_(active|acked)").await;
    let (labels, active) = exported
        .iter()
        .find(|(l, _)| {
            l.get("__name__").map(String::as_str) == Some("alarm_active")
                && l.get("condition").map(String::as_str) == Some(condition)
        })
        .unwrap_or_else(|| {
            panic!(
                "alarm_active for {condition}: {:?}",
                exported.keys().collect::<Vec<_>>()
            )
        });
    assert_eq!(labels.get("site").map(String::as_str), Some("B02"));
    assert_eq!(labels.get("source").map(String::as_str), Some("B02.p"));
    assert_eq!(
        labels
            .get("priority")
            .and_then(|p| raised["priority"].as_str().map(|r| r == p)),
        Some(true)
    );
    assert!(
        active.contains(&(raise_at.timestamp_millis(), 1.0)),
        "the raise at {raise_at} is active=1: {active:?}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_with_a_restart_inside_it_loses_nothing_and_stores_each_point_once() {
    if !vm_present() {
        return;
    }
    let mut vm = Vm::start().await;
    let mut h = Harness::start_custom(
        "influx-outage",
        &[
            dma("B01", "AKT-DMA-001"),
            dma("B02", "AKT-DMA-002"),
            dma("B03", "AKT-DMA-003"),
        ],
        None,
        broker(),
        influx_config(vm.port),
    )
    .await;
    let sims = [
        h.spawn_dma(DmaOptions::new("B01", "AKT-DMA-001"), t0()).await,
        h.spawn_dma(DmaOptions::new("B02", "AKT-DMA-002"), t0()).await,
        h.spawn_dma(DmaOptions::new("B03", "AKT-DMA-003"), t0()).await,
    ];
    let refs: Vec<_> = sims.iter().collect();
    h.run(&refs, Duration::hours(2)).await;
    delivered(&h).await;

    // The server goes away; uploads go on and wait in the feed.
    vm.down();
    h.run(&refs, Duration::hours(6)).await;
    h.wait_until("writes fail while the server is away", || async {
        h.metric("mizuban_influx_write_errors_total").await > 0.0
            || h.metrics_text().await.contains("influx_write_errors_total{")
    })
    .await;
    assert!(
        h.metric("mizuban_influx_pending_points").await > 0.0,
        "readings wait for the server"
    );

    // mizuban restarts inside the outage: the feed is its cursor.
    h.restart().await;
    h.run(&refs, Duration::hours(6)).await;
    assert!(h.metric("mizuban_influx_pending_points").await > 0.0);

    vm.up().await;
    delivered(&h).await;

    let all = vm.export("(q|p|tot)_value").await;
    let mut total = 0;
    for site in ["B01", "B02", "B03"] {
        for local in ["q", "p", "tot"] {
            let point = format!("{site}.{local}");
            let ours = stored(&h, &point).await;
            assert!(
                ours.len() >= 13 * 12,
                "{point}: 13 uploads of 12 samples, got {}",
                ours.len()
            );
            let (_, theirs) = series(&all, &format!("{local}_value"), &point).unwrap();
            let times: BTreeSet<i64> = theirs.iter().map(|s| s.0).collect();
            assert_eq!(times.len(), theirs.len(), "{point}: one sample per series and time");
            assert_eq!(
                theirs, &ours,
                "{point}: everything stored reached InfluxDB, before, during and after the outage"
            );
            total += ours.len();
        }
    }
    assert!(total > 0);
    h.stop().await;
}
