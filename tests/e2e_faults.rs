//! The fault suite: the MQTT intake against a real Mosquitto of the test's
//! own (persistence on, room for a long outage's backlog) under the faults
//! the field and the machine bring — a backlog queued while mizuban was down,
//! a burst as fast as the broker sends, the broker restarted under load,
//! mizuban killed with SIGKILL under load, the store's disk full and freed.
//! Each ends with every message the broker took stored exactly once, without
//! restarting anything to get there, and checks that health told the truth.

mod common;
use chrono::Duration;
use common::mosquitto::{self, Mosquitto};
use common::*;
use mizuban::model::{PointId, SiteId};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::json;

const SITES: usize = 10;

fn sites() -> Vec<SiteDef> {
    (0..SITES)
        .map(|i| {
            let id: &'static str = Box::leak(format!("B{:02}", i + 1).into_boxed_str());
            let dev: &'static str = Box::leak(format!("AKT-DMA-{:03}", i + 1).into_boxed_str());
            dma(id, dev)
        })
        .collect()
}

/// Message `n` of the stream: site `n % SITES`, its own seq, one sample a
/// minute apart in the past of the service's clock.
fn message(prefix: &str, n: usize) -> (String, Vec<u8>) {
    let site = n % SITES + 1;
    let seq = n / SITES + 1;
    let t = t0() - Duration::days(30) + Duration::minutes(seq as i64);
    let ts = t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let body = json!({"schema":"dma-telemetry/1","device_id":format!("AKT-DMA-{site:03}"),"block_id":format!("B{site:02}"),
        "boot":1,"seq":seq,"sent_at":ts,"log_interval_s":60,"upload_interval_s":60,"backlog":0,
        "units":{"q":"m3/h","p":"MPa","tot":"m3"},
        "samples":[{"t":ts,"q":40.0 + (seq % 7) as f64,"p":0.40,"tot":1000.0 + seq as f64}],
        "diag":{"batt_v":3.5,"batt_pct":70,"rssi_dbm":-80,"temp_c":5.0}});
    (
        format!("{prefix}akita/v1/dma/B{site:02}/AKT-DMA-{site:03}/telemetry"),
        serde_json::to_vec(&body).unwrap(),
    )
}

/// Publishes messages `range` at QoS 1 as fast as the broker takes them and
/// returns once the broker has acknowledged every one.
async fn publish(broker: (String, u16), prefix: String, range: std::ops::Range<usize>) {
    let mut o = MqttOptions::new(format!("fault-dev-{}", rand_id()), broker.0, broker.1);
    o.set_keep_alive(std::time::Duration::from_secs(30));
    o.set_inflight(200);
    o.set_credentials(MQTT_USER, MQTT_PASSWORD);
    let (c, mut el) = AsyncClient::new(o, 1000);
    let want = range.len();
    let counter = tokio::spawn(async move {
        let mut acked = 0;
        while acked < want {
            match el.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => panic!("publisher lost the broker: {e}"),
            }
        }
        el
    });
    for n in range {
        let (topic, body) = message(&prefix, n);
        c.publish(topic, QoS::AtLeastOnce, false, body).await.unwrap();
    }
    let mut el = tokio::time::timeout(std::time::Duration::from_secs(120), counter)
        .await
        .expect("broker acknowledged every publish")
        .unwrap();
    c.disconnect().await.unwrap();
    // Let the DISCONNECT go out.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        while el.poll().await.is_ok() {}
    })
    .await;
}

/// Readings of one site's flow point (`q`), counted in the store.
fn stored(h: &Harness, site: usize) -> usize {
    let s = SiteId::new(&format!("B{site:02}")).unwrap();
    h.app
        .as_ref()
        .unwrap()
        .store
        .readings(
            &PointId::new(&s, "q").unwrap(),
            t0() - Duration::days(60),
            t0(),
            1_000_000,
        )
        .unwrap()
        .0
        .len()
}

/// Waits until all `n` messages are stored (counted in the store, so a
/// message processed twice cannot make up for one never processed).
async fn wait_stored(h: &Harness, n: usize) {
    let per_site = n / SITES;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        // A flush waits for the writer, which retries a failing commit for
        // as long as it fails: bounded here so the deadline below holds.
        let flush = h.app.as_ref().unwrap().store.flush();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), flush).await;
        let got: Vec<usize> = (1..=SITES).map(|s| stored(h, s)).collect();
        if got.iter().all(|&g| g == per_site) {
            return;
        }
        assert!(got.iter().all(|&g| g <= per_site), "more readings than sent: {got:?}");
        if std::time::Instant::now() > deadline {
            let m = h.metrics_text().await;
            let m: Vec<&str> = m
                .lines()
                .filter(|l| l.contains("mqtt") || l.contains("messages"))
                .collect();
            panic!("stored {got:?} of {per_site} each\n{}", m.join("\n"));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn health(h: &Harness) -> (u16, serde_json::Value) {
    h.request(reqwest::Method::GET, "/api/v1/health", None, None).await
}

async fn start(name: &str, broker: &Mosquitto, prepare: impl FnOnce(&std::path::Path)) -> Harness {
    Harness::start_custom(name, &sites(), None, broker.addr(), |dir| {
        // Stall reporting in seconds, not the default half minute.
        let p = dir.join("mizuban.toml");
        let cfg = std::fs::read_to_string(&p)
            .unwrap()
            .replacen("[mqtt]\n", "[mqtt]\nstall_after_s = 2\n", 1);
        std::fs::write(&p, cfg).unwrap();
        prepare(dir);
    })
    .await
}

/// 20,000 QoS 1 messages queued for mizuban while it was down (as after an
/// outage) are all taken in after it starts, with no second restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_queued_while_down_is_taken_in_whole() {
    if !mosquitto::present() {
        return;
    }
    let broker = Mosquitto::start("");
    let mut h = start("backlog", &broker, |_| {}).await;
    h.stop_service().await;
    publish(broker.addr(), h.prefix.clone(), 0..20_000).await;
    h.start_service().await;
    wait_stored(&h, 20_000).await;
    h.wait_until("every PUBACK sent", || async {
        h.metric("mizuban_mqtt_owed").await == 0.0
    })
    .await;
    let (code, body) = health(&h).await;
    assert_eq!(code, 200, "{body}");
    h.stop().await;
}

/// Messages published as fast as possible while mizuban runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_as_fast_as_the_broker_sends_is_taken_in_whole() {
    if !mosquitto::present() {
        return;
    }
    let broker = Mosquitto::start("");
    let h = start("burst", &broker, |_| {}).await;
    publish(broker.addr(), h.prefix.clone(), 0..6_000).await;
    wait_stored(&h, 6_000).await;
    assert_eq!(health(&h).await.0, 200);
    assert_eq!(h.metric("mizuban_mqtt_stalled").await, 0.0);
    h.stop().await;
}

/// The broker restarted under load: health says so while it is away, and
/// everything the broker took before and after arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_under_load_loses_nothing() {
    if !mosquitto::present() {
        return;
    }
    let mut broker = Mosquitto::start("");
    let h = start("broker-restart", &broker, |_| {}).await;
    publish(broker.addr(), h.prefix.clone(), 0..3_000).await;
    broker.stop();
    h.wait_until("health reports the broker gone", || async { health(&h).await.0 == 503 })
        .await;
    let (_, body) = health(&h).await;
    assert!(body["reasons"].to_string().contains("mqtt: not connected"), "{body}");
    broker.resume();
    publish(broker.addr(), h.prefix.clone(), 3_000..6_000).await;
    wait_stored(&h, 6_000).await;
    h.wait_until("health ok again", || async { health(&h).await.0 == 200 })
        .await;
    h.stop().await;
}

/// The store's disk fills up under load and is freed again: health is 503
/// (store and stalled intake) while it is full, and once space is back every
/// message arrives — without restarting the service or the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_then_freed_loses_nothing_and_health_tells() {
    if !mosquitto::present() {
        return;
    }
    if std::env::var("MIZUBAN_TEST_STORE").as_deref() == Ok("postgres") {
        // The store's disk is the database server's there, not one this
        // test can fill: this is the embedded store's case.
        eprintln!("not run on PostgreSQL: the full disk here is SQLite's own");
        return;
    }
    // A small disk of its own for the store (tmpfs needs root, as in CI).
    let probe = tempfile::tempdir().unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=24m", "tmpfs"])
        .arg(probe.path())
        .status()
        .is_ok_and(|s| s.success());
    if mounted {
        let _ = std::process::Command::new("umount").arg(probe.path()).status();
    }
    if !peer_present(mounted, "a tmpfs mount (root)", "run as root") {
        return;
    }
    let broker = Mosquitto::start("");
    let data = std::cell::RefCell::new(std::path::PathBuf::new());
    let mut h = start("disk-full", &broker, |dir| {
        let d = dir.join("data");
        std::fs::create_dir_all(&d).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=24m", "tmpfs"])
            .arg(&d)
            .status()
            .unwrap();
        assert!(ok.success());
        *data.borrow_mut() = d;
    })
    .await;
    let data = data.into_inner();
    publish(broker.addr(), h.prefix.clone(), 0..1_000).await;
    wait_stored(&h, 1_000).await;
    // Fill the disk.
    let filler = data.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
    drop(f);
    publish(broker.addr(), h.prefix.clone(), 1_000..4_000).await;
    h.wait_until("health 503 while the disk is full", || async {
        health(&h).await.0 == 503
    })
    .await;
    h.wait_until("the intake reported stalled", || async {
        h.metric("mizuban_mqtt_stalled").await == 1.0
    })
    .await;
    let (_, body) = health(&h).await;
    let reasons = body["reasons"].to_string();
    assert!(reasons.contains("store: writes failing"), "{body}");
    assert!(reasons.contains("intake stalled"), "{body}");
    // Free it.
    std::fs::remove_file(&filler).unwrap();
    wait_stored(&h, 4_000).await;
    h.wait_until("health ok again", || async { health(&h).await.0 == 200 })
        .await;
    assert_eq!(h.metric("mizuban_mqtt_stalled").await, 0.0);
    h.stop_service().await;
    let _ = std::process::Command::new("umount").arg(&data).status();
}

/// The deployed binary killed with SIGKILL in the middle of a burst, then
/// started again: everything the broker took is stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_nothing() {
    if !mosquitto::present() {
        return;
    }
    let broker = Mosquitto::start("");
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("t{}-kill9-load/", std::process::id());
    let cfg = write_config_for(dir.path(), "kill9-load", &prefix, &sites(), None, broker.addr());
    let http = pin_http_port(&cfg);
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{http}");
    let get = |path: &'static str| {
        let client = client.clone();
        let url = format!("{base}{path}");
        async move {
            client
                .get(url)
                .bearer_auth(VIEW_TOKEN)
                .send()
                .await
                .ok()
                .filter(|r| r.status() == 200)
        }
    };
    let messages = || async {
        let text = get("/metrics").await.unwrap().text().await.unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("mizuban_messages_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let mut child = spawn_deployed(&cfg);
    wait_deployed_up(http).await;
    let pubs = tokio::spawn(publish(broker.addr(), prefix.clone(), 0..6_000));
    // Killed once it is well into the burst.
    for _ in 0..600 {
        if messages().await > 500.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    pubs.await.unwrap();
    let mut child = spawn_deployed(&cfg);
    wait_deployed_up(http).await;
    // Every reading of every site, through the API, exactly once.
    let from = (t0() - Duration::days(60)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let to = t0().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let mut counts = Vec::new();
        for s in 1..=SITES {
            let url = format!("{base}/api/v1/points/B{s:02}.q/readings?from={from}&to={to}");
            let r = client.get(url).bearer_auth(VIEW_TOKEN).send().await.unwrap();
            let v: serde_json::Value = r.json().await.unwrap();
            let mut ts: Vec<String> = v
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x["t"].as_str().unwrap().to_string())
                .collect();
            let n = ts.len();
            ts.dedup();
            assert_eq!(ts.len(), n, "a reading stored twice");
            counts.push(n);
        }
        if counts.iter().all(|&c| c == 600) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "stored {counts:?} of 600 each");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(get("/api/v1/health").await.is_some());
    child.start_kill().unwrap();
    let _ = child.wait().await;
}

/// 500 messages through an intake limited by `setting` (a `[mqtt]` line),
/// with Mosquitto's in-flight window raised to 100: each overflow defers the
/// rest, acknowledges what was taken and reconnects on purpose; the broker
/// redelivers, and every message still arrives, once, with health
/// recovering by itself.
async fn an_overflowing_intake_loses_nothing(name: &str, setting: &str, why: &str) {
    let broker = Mosquitto::start("max_inflight_messages 100\n");
    let h = start(name, &broker, |dir| {
        let p = dir.join("mizuban.toml");
        let cfg = std::fs::read_to_string(&p)
            .unwrap()
            .replacen("[mqtt]\n", &format!("[mqtt]\n{setting}\n"), 1);
        std::fs::write(&p, cfg).unwrap();
    })
    .await;
    publish(broker.addr(), h.prefix.clone(), 0..500).await;
    wait_stored(&h, 500).await;
    assert!(
        h.metric("mizuban_mqtt_forced_reconnects_total{reason=\"intake_full\"}")
            .await
            > 0.0,
        "{why}"
    );
    h.wait_until("health ok again", || async { health(&h).await.0 == 200 })
        .await;
    h.stop().await;
}

/// An intake queue smaller than the broker's in-flight window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overfull_intake_reconnects_on_purpose_and_loses_nothing() {
    if !mosquitto::present() {
        return;
    }
    an_overflowing_intake_loses_nothing(
        "intake-full",
        "intake_queue = 16",
        "the small queue overflowed and the connection was dropped on purpose",
    )
    .await;
}

/// The same by bytes: a budget of a few messages' payloads, far below the
/// queue's count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intake_over_its_byte_budget_reconnects_on_purpose_and_loses_nothing() {
    if !mosquitto::present() {
        return;
    }
    an_overflowing_intake_loses_nothing(
        "intake-bytes",
        "intake_bytes = 4096",
        "the byte budget overflowed and the connection was dropped on purpose",
    )
    .await;
}
