//! Shared harness for the end-to-end tests: a real MQTT broker (the embedded
//! rumqttd on an ephemeral port, or the one named by `MIZUBAN_TEST_MQTT`, e.g.
//! Mosquitto at 127.0.0.1:1883 under CI), the service on an ephemeral HTTP port
//! with a manual clock, and simulated devices in stepped time. Each test gets
//! its own topic prefix and MQTT client id, so tests can share one broker.
//! Readiness is by handshake or by polling the API for a condition, never by
//! sleeping a fixed time.

#![allow(dead_code)]

use chrono::{DateTime, Duration, Utc};
use mizuban::app::{Options, Running};
use mizuban::collect::broker::EmbeddedBroker;
use mizuban::config::Config;
use mizuban::model::ManualClock;
use mizuban_sim::dma::{DmaLogger, DmaOptions};
use mizuban_sim::mps::{MpsNotifier, MpsOptions};
use mizuban_sim::{Handle, Mode, SpawnOptions};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;

pub const OP_TOKEN: &str = "test-operator-token-0001";
pub const VIEW_TOKEN: &str = "test-viewer-token-00001";
pub const ENG_TOKEN: &str = "test-engineer-token-0001";
pub const ADMIN_TOKEN: &str = "test-admin-token-000001";

pub fn t0() -> DateTime<Utc> {
    // 09:00 JST: daytime demand, so night-flow limits are not in play unless a test wants them.
    DateTime::parse_from_rfc3339("2025-01-21T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

/// The credentials every test client uses on the embedded broker (which
/// refuses clients without them); an external test broker may ignore them.
pub const MQTT_USER: &str = "mizuban-test";
pub const MQTT_PASSWORD: &str = "test-broker-password-01";

pub fn mqtt_credentials() -> Option<(String, String)> {
    Some((MQTT_USER.to_string(), MQTT_PASSWORD.to_string()))
}

/// Where the broker is: `MIZUBAN_TEST_MQTT=host:port` for an external one.
pub fn broker() -> (String, u16) {
    if let Ok(addr) = std::env::var("MIZUBAN_TEST_MQTT") {
        let (h, p) = addr.rsplit_once(':').expect("MIZUBAN_TEST_MQTT is host:port");
        return (h.to_string(), p.parse().expect("port"));
    }
    static BROKER: std::sync::OnceLock<(String, u16)> = std::sync::OnceLock::new();
    BROKER
        .get_or_init(|| {
            let b = EmbeddedBroker::start(None, &[(MQTT_USER.into(), MQTT_PASSWORD.into())]).expect("embedded broker");
            (b.addr.ip().to_string(), b.addr.port())
        })
        .clone()
}

pub struct SiteDef {
    pub id: &'static str,
    pub kind: &'static str,
    pub device: &'static str,
    /// `(port, unit, poll_ms, timeout_ms)` for a controller polled over Modbus.
    pub modbus: Option<(u16, u8, u64, u64)>,
}

pub fn dma(id: &'static str, device: &'static str) -> SiteDef {
    SiteDef {
        id,
        kind: "dma",
        device,
        modbus: None,
    }
}
pub fn mps(id: &'static str, device: &'static str) -> SiteDef {
    SiteDef {
        id,
        kind: "pump_station",
        device,
        modbus: None,
    }
}

/// A pump station whose controller is polled over Modbus TCP.
pub fn controller(
    id: &'static str,
    device: &'static str,
    port: u16,
    unit: u8,
    poll_ms: u64,
    timeout_ms: u64,
) -> SiteDef {
    SiteDef {
        id,
        kind: "pump_station",
        device,
        modbus: Some((port, unit, poll_ms, timeout_ms)),
    }
}

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub app: Option<Running>,
    pub clock: Arc<ManualClock>,
    pub http: reqwest::Client,
    pub base: String,
    pub prefix: String,
    pub host: String,
    pub port: u16,
    /// Messages handled that did not come from the `run` sims (raw publishes,
    /// or sims of a previous service life), for `run`'s wait.
    pub extra: std::sync::atomic::AtomicUsize,
    /// Distinct messages handled by earlier lives of the service (restarts
    /// reset its counters).
    pub offset: std::sync::atomic::AtomicUsize,
    /// Set to keep the HTTP address across restarts (browsers reconnect to it).
    pub pin_http: Option<std::net::SocketAddr>,
    /// Prove the subscriptions live with a probe publish at each start.
    pub probe: bool,
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn write_config(
    dir: &std::path::Path,
    name: &str,
    prefix: &str,
    sites: &[SiteDef],
    rules: Option<&str>,
) -> PathBuf {
    write_config_for(dir, name, prefix, sites, rules, broker())
}

/// As `write_config`, for a broker of the test's own.
pub fn write_config_for(
    dir: &std::path::Path,
    name: &str,
    prefix: &str,
    sites: &[SiteDef],
    rules: Option<&str>,
    (host, port): (String, u16),
) -> PathBuf {
    let mut s = String::new();
    for d in sites {
        let profile = match (d.kind, d.modbus) {
            ("dma", _) => "akita-dma-logger",
            (_, Some(_)) => "akita-mps-controller",
            _ => "akita-mps-notifier",
        };
        let modbus = d
            .modbus
            .map(|(port, unit, poll, timeout)| {
                format!("modbus = {{ host = \"127.0.0.1\", port = {port}, unit = {unit}, poll_interval_ms = {poll}, timeout_ms = {timeout}, retries = 1 }}\n")
            })
            .unwrap_or_default();
        s.push_str(&format!(
            "[[site]]\nid = \"{}\"\nkind = \"{}\"\nname = \"{} (test)\"\narea = \"test\"\nlat = 39.7\nlon = 140.1\ndevice = \"{}\"\nprofile = \"{profile}\"\nattrs = {{ mean_flow = 100.0 }}\n{modbus}\n",
            d.id, d.kind, d.id, d.device
        ));
    }
    std::fs::write(dir.join("sites.toml"), s).unwrap();
    let rules_file = match rules {
        Some(r) => {
            std::fs::write(dir.join("rules.toml"), r).unwrap();
            dir.join("rules.toml")
        }
        None => repo().join("config/akita-rules.toml"),
    };
    let store = store_section();
    let main = format!(
        r#"[service]
name = "test"
devices_dir = "{devices}"
sites_file = "sites.toml"
rules_file = "{rules}"
comm_grace_s = 600
shards = 2

[mqtt]
host = "{host}"
port = {port}
client_id = "mizuban-test-{name}"
username = "{MQTT_USER}"
password = "{MQTT_PASSWORD}"
topic_prefix = "{prefix}"
backoff_min_ms = 50
backoff_max_ms = 500

{store}
[http]
listen = "127.0.0.1:0"

[[token]]
name = "op"
token = "{OP_TOKEN}"
role = "operator"

[[token]]
name = "viewer"
token = "{VIEW_TOKEN}"
role = "viewer"

[[token]]
name = "eng"
token = "{ENG_TOKEN}"
role = "engineer"

[[token]]
name = "admin"
token = "{ADMIN_TOKEN}"
role = "admin"
"#,
        devices = repo().join("devices").display(),
        rules = rules_file.display(),
    );
    let p = dir.join("mizuban.toml");
    std::fs::write(&p, main).unwrap();
    p
}

/// The `[store]` section: SQLite in the test's directory, or with
/// `MIZUBAN_TEST_STORE=postgres` a PostgreSQL database made for this test on
/// the server `MIZUBAN_TEST_POSTGRES` names (default
/// `postgres://root@127.0.0.1:5432/postgres`). `.ci/run` runs the end-to-end
/// suites both ways and drops the `mizuban_e2e_*` databases afterwards.
fn store_section() -> String {
    if std::env::var("MIZUBAN_TEST_STORE").as_deref() != Ok("postgres") {
        return "[store]\npath = \"data/test.db\"\n".into();
    }
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let admin =
        std::env::var("MIZUBAN_TEST_POSTGRES").unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/postgres".into());
    let name = format!(
        "mizuban_e2e_{}_{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    );
    // The blocking client on a thread of its own (tests call this from async code).
    let made = std::thread::scope(|s| {
        s.spawn(|| {
            let mut c = postgres::Client::connect(&admin, postgres::NoTls)?;
            c.batch_execute(&format!("CREATE DATABASE {name}"))
        })
        .join()
        .unwrap()
    });
    if let Err(e) = made {
        panic!("MIZUBAN_TEST_STORE=postgres, but PostgreSQL at {admin} cannot make a database: {e}");
    }
    let (base, _) = admin.rsplit_once('/').unwrap();
    format!("[store]\nkind = \"postgres\"\nurl = \"{base}/{name}\"\npath = \"data/test.db\"\n")
}

/// One number from a query on the service's store, whichever it is.
pub fn store_count(cfg: &mizuban::config::Config, sql: &str) -> i64 {
    match cfg.store_location() {
        mizuban::store::Location::Sqlite(p) => rusqlite::Connection::open(p)
            .unwrap()
            .query_row(sql, [], |r| r.get(0))
            .unwrap(),
        mizuban::store::Location::Postgres(url) => std::thread::scope(|s| {
            s.spawn(|| {
                let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
                c.query_one(sql, &[]).unwrap().get(0)
            })
            .join()
            .unwrap()
        }),
    }
}

/// Whether a test's outside peer is here. Missing, the test is skipped with
/// `how` to install it — except under `CI=true`, where that is a failure.
pub fn peer_present(present: bool, what: &str, how: &str) -> bool {
    if !present {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{what} is required under CI=true (.ci/run installs it)"
        );
        eprintln!("SKIPPED: {what} missing; {how}");
    }
    present
}

/// Whether `python3 -c "import MODULE"` works.
pub fn python_has(module: &str) -> bool {
    std::process::Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Turns alerts on in a written configuration: `notify.toml` beside it and
/// `service.notify_file` pointing at it (takes effect at the next start).
pub fn write_notify(config_path: &std::path::Path, notify: &str) {
    let dir = config_path.parent().expect("config has a directory");
    std::fs::write(dir.join("notify.toml"), notify).unwrap();
    let cfg = std::fs::read_to_string(config_path).unwrap().replacen(
        "[service]\n",
        "[service]\nnotify_file = \"notify.toml\"\n",
        1,
    );
    std::fs::write(config_path, cfg).unwrap();
}

impl Harness {
    pub async fn start(name: &str, sites: &[SiteDef]) -> Self {
        Self::start_with_rules(name, sites, None).await
    }

    pub async fn start_with_rules(name: &str, sites: &[SiteDef], rules: Option<&str>) -> Self {
        Self::start_custom(name, sites, rules, broker(), |_| {}).await
    }

    /// The service against `broker`, with `prepare` given the configuration
    /// directory before the first start (to edit the files, mount a disk...).
    pub async fn start_custom(
        name: &str,
        sites: &[SiteDef],
        rules: Option<&str>,
        broker: (String, u16),
        prepare: impl FnOnce(&std::path::Path),
    ) -> Self {
        Self::start_custom_with(name, sites, rules, broker, prepare, true).await
    }

    /// As `start_custom`; without `probe` the start waits for health only (a
    /// broker whose ACL or TLS the harness's probe client cannot pass).
    pub async fn start_custom_with(
        name: &str,
        sites: &[SiteDef],
        rules: Option<&str>,
        (host, port): (String, u16),
        prepare: impl FnOnce(&std::path::Path),
        probe: bool,
    ) -> Self {
        mizuban::telemetry::init_tracing_default("error,rumqttd=off");
        let dir = tempfile::tempdir().unwrap();
        let prefix = format!("t{}-{}/", std::process::id(), name);
        let config_path = write_config_for(dir.path(), name, &prefix, sites, rules, (host.clone(), port));
        prepare(dir.path());
        let clock = Arc::new(ManualClock::new(t0()));
        let mut h = Self {
            dir,
            config_path,
            app: None,
            clock,
            http: reqwest::Client::new(),
            base: String::new(),
            prefix,
            host,
            port,
            extra: Default::default(),
            offset: Default::default(),
            pin_http: None,
            probe,
        };
        h.boot().await;
        h
    }

    /// Starts the service without waiting for the collector (for a test whose
    /// configuration moves `/metrics`, which the wait reads).
    pub async fn start_service_unchecked(&mut self) {
        self.boot_only().await;
    }

    async fn boot(&mut self) {
        self.boot_only().await;
        self.wait_connected().await;
    }

    async fn boot_only(&mut self) {
        let cfg = Config::load(&self.config_path).unwrap_or_else(|e| panic!("{e:#?}"));
        let app = mizuban::app::start(
            cfg,
            Options {
                clock: self.clock.clone(),
                tick: std::time::Duration::from_millis(20),
                http: self.pin_http,
                ..Default::default()
            },
        )
        .await
        .expect("service starts");
        self.base = format!("http://{}", app.http_addr);
        self.app = Some(app);
    }

    /// Ready when the collector reports connected and subscribed (health ok).
    pub async fn wait_connected(&self) {
        self.wait_until("collector connected", || async {
            self.http
                .get(format!("{}/api/v1/health", self.base))
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false)
        })
        .await;
        // Subscriptions are requested right after CONNACK; a SUBACK round trip
        // later they are active. Prove it end to end with a probe publish.
        if self.probe {
            self.probe_subscription().await;
        }
    }

    /// Publishes a message for a site that does not exist on a subscribed
    /// topic until the collector quarantines one: then the subscriptions are
    /// live. (Costs one `unknown_site` count per probe that got through.)
    async fn probe_subscription(&self) {
        use rumqttc::{AsyncClient, MqttOptions, QoS};
        let mut o = MqttOptions::new(format!("probe-{}", rand_id()), &self.host, self.port);
        o.set_keep_alive(std::time::Duration::from_secs(5));
        o.set_credentials(MQTT_USER, MQTT_PASSWORD);
        let (c, mut el) = AsyncClient::new(o, 10);
        let task = tokio::spawn(async move { while el.poll().await.is_ok() {} });
        let name = "mizuban_quarantined_messages_total{reason=\"unknown_site\"}";
        let before = self.metric(name).await;
        for _ in 0..500 {
            let topic = format!("{}akita/v1/mps/PROBE/will", self.prefix);
            c.publish(topic, QoS::AtMostOnce, false, r#"{"online":false}"#)
                .await
                .unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            if self.metric(name).await > before {
                task.abort();
                return;
            }
        }
        panic!("the collector never received a probe: subscriptions not live");
    }

    pub async fn wait_until<F, Fut>(&self, what: &str, f: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !f().await {
            if std::time::Instant::now() > deadline {
                let m = self.metrics_text().await;
                let m: Vec<&str> = m
                    .lines()
                    .filter(|l| !l.starts_with('#') && !l.contains("_bucket"))
                    .collect();
                panic!("timed out waiting for: {what}\nmetrics:\n{}", m.join("\n"));
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    pub async fn metrics_text(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics_text().await;
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|r| r.trim().strip_prefix(|c: char| c == ' ').or(Some(r.trim())))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0.0)
    }

    /// Waits until the service has taken in `n` more messages (accepted or not)
    /// than `before`, then until everything is committed.
    pub async fn wait_messages(&self, at_least: f64) {
        // Distinct messages: a QoS 1 redelivery is handled (and counted as a
        // duplicate) but is not a message of its own.
        self.wait_until(&format!("{at_least} messages processed"), || async {
            let m = self.metric("mizuban_messages_total").await - self.metric("mizuban_duplicate_messages_total").await
                + self.offset.load(std::sync::atomic::Ordering::SeqCst) as f64;
            m >= at_least
        })
        .await;
        self.app.as_ref().unwrap().store.flush().await.unwrap();
    }

    pub async fn get(&self, path: &str) -> Value {
        self.get_response(path).await.json().await.unwrap()
    }

    /// A successful GET as a viewer, headers and all.
    pub async fn get_response(&self, path: &str) -> reqwest::Response {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(VIEW_TOKEN)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut rq = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            rq = rq.bearer_auth(t);
        }
        if let Some(b) = body {
            rq = rq.json(&b);
        }
        let r = rq.send().await.unwrap();
        let code = r.status().as_u16();
        let text = r.text().await.unwrap();
        (code, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        self.request(reqwest::Method::POST, path, Some(token), Some(body)).await
    }

    /// All alarm occurrences (open and closed) as (site, condition, state).
    pub async fn alarms_all(&self) -> Vec<Value> {
        self.get("/api/v1/alarms?all=true").await.as_array().unwrap().clone()
    }

    /// `site/condition` of every occurrence, sorted, for exact comparisons.
    pub async fn occurrences(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .alarms_all()
            .await
            .iter()
            .map(|a| format!("{}/{}", a["site"].as_str().unwrap(), a["condition"].as_str().unwrap()))
            .collect();
        v.sort();
        v
    }

    /// The journal's actions for one site/condition, oldest first.
    pub async fn actions(&self, site: &str, condition: &str) -> Vec<String> {
        let rows = self
            .get(&format!("/api/v1/journal?site={site}&condition={condition}&limit=1000"))
            .await;
        let mut v: Vec<(i64, String)> = rows
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["seq"].as_i64().unwrap(),
                    format!("{}:{}", r["action"].as_str().unwrap(), r["to"].as_str().unwrap()),
                )
            })
            .collect();
        v.sort();
        v.into_iter().map(|(_, s)| s).collect()
    }

    pub fn sim_opts(&self, start: DateTime<Utc>, step_s: i64) -> SpawnOptions {
        SpawnOptions {
            host: self.host.clone(),
            port: self.port,
            mode: Mode::Stepped {
                start,
                step: Duration::seconds(step_s),
            },
            topic_prefix: self.prefix.clone(),
            credentials: mqtt_credentials(),
        }
    }

    pub async fn spawn_dma(&self, o: DmaOptions, start: DateTime<Utc>) -> Handle {
        mizuban_sim::spawn(Box::new(DmaLogger::new(o)), self.sim_opts(start, 30))
            .await
            .unwrap()
    }

    pub async fn spawn_mps(&self, o: MpsOptions, start: DateTime<Utc>) -> Handle {
        mizuban_sim::spawn(Box::new(MpsNotifier::new(o)), self.sim_opts(start, 10))
            .await
            .unwrap()
    }

    /// Moves simulated devices and the master station's clock forward together,
    /// five minutes at a time, as if the devices' clocks were right and the
    /// network fast. Returns once everything sent has been processed.
    pub async fn run(&self, sims: &[&Handle], d: Duration) {
        let chunk = Duration::minutes(5);
        let mut left = d;
        while left > Duration::zero() {
            let step = left.min(chunk);
            self.clock.advance(step);
            for s in sims {
                s.advance(step).await.unwrap();
            }
            left -= step;
            // Processed before the clock moves on, so arrival times stay true.
            let total: usize = sims.iter().map(|s| s.sent()).sum();
            self.wait_messages((self.baseline_messages() + total) as f64).await;
            // And looked at by a supervision tick (comm loss is stamped with
            // the clock of the tick that sees the silence): on a loaded
            // machine a tick can otherwise miss a whole step.
            if let Some(app) = &self.app {
                let now = mizuban::model::Clock::now(&*self.clock);
                for _ in 0..500 {
                    if app.pipeline.ticked_through(now) {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
            }
        }
    }

    /// Messages from devices not driven by `run` (set by tests that publish raw).
    pub fn baseline_messages(&self) -> usize {
        self.extra.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stops the service only (the broker and the devices go on).
    pub async fn stop_service(&mut self) {
        let handled =
            self.metric("mizuban_messages_total").await - self.metric("mizuban_duplicate_messages_total").await;
        self.offset
            .fetch_add(handled as usize, std::sync::atomic::Ordering::SeqCst);
        self.app.take().unwrap().shutdown().await;
    }

    pub async fn start_service(&mut self) {
        self.boot().await;
    }

    pub async fn restart(&mut self) {
        self.stop_service().await;
        self.start_service().await;
    }

    pub async fn stop(mut self) {
        if let Some(app) = self.app.take() {
            app.shutdown().await;
        }
    }
}

pub trait NowForTest {
    fn now_for_test(&self) -> DateTime<Utc>;
}

impl NowForTest for ManualClock {
    fn now_for_test(&self) -> DateTime<Utc> {
        use mizuban::model::Clock;
        self.now()
    }
}

/// Gives a written configuration a fixed HTTP port (a separate process of
/// the deployed binary is reached there across its restarts); returns it.
pub fn pin_http_port(config: &std::path::Path) -> u16 {
    let http = free_port();
    let text = std::fs::read_to_string(config)
        .unwrap()
        .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"127.0.0.1:{http}\""));
    std::fs::write(config, text).unwrap();
    http
}

/// `mizuban run --config CONFIG` as its own process (killed when dropped),
/// for the kill -9 tests.
pub fn spawn_deployed(config: &std::path::Path) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_mizuban"))
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("mizuban runs")
}

/// Waits (bounded) until the deployed service on `port` answers health 200.
pub async fn wait_deployed_up(port: u16) {
    let client = reqwest::Client::new();
    let health = format!("http://127.0.0.1:{port}/api/v1/health");
    for _ in 0..300 {
        if client.get(&health).send().await.is_ok_and(|r| r.status() == 200) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("service did not come up");
}

/// A loopback port nobody listens on (bound, read, released).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

pub fn rand_id() -> String {
    format!("{:08x}", rand::random::<u32>())
}

pub fn quiet_dma(block: &str, device: &str) -> DmaOptions {
    let mut o = DmaOptions::new(block, device);
    o.noise = false;
    o
}

pub mod mosquitto;

pub fn quiet_mps(station: &str, device: &str) -> MpsOptions {
    let mut o = MpsOptions::new(station, device);
    o.noise = false;
    o
}
