//! Deployment configuration: `config/*.toml` (service, sites, rules, access) plus
//! the device profiles in `devices/`. Raw serde structs deny unknown fields; the
//! validated `Config` is what the service runs on. Every problem is reported at
//! load with file, line and field, all at once, never at 3 a.m.

mod error;
mod rules;

pub use error::SourceError;
pub use rules::{LimitSet, RuleKind, RuleSpec, SiteSelector};

use crate::device::{Priority, Profile};
use crate::model::{DeviceId, SiteId, SiteKind};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use toml::Spanned;

/// Roles, each including the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Operator,
    Engineer,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Engineer => "engineer",
            Role::Admin => "admin",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSection {
    /// Shown on the board and in logs.
    pub name: String,
    /// Local time for hour-of-day rules ("night"): Asia/Tokyo is +9, no DST.
    #[serde(default = "default_tz")]
    pub utc_offset_hours: i32,
    /// Default board language: `ja` or `en`.
    #[serde(default = "default_lang")]
    pub language: String,
    /// Directory of device profiles, relative to this file.
    pub devices_dir: String,
    /// Site list, relative to this file.
    pub sites_file: String,
    /// Rule list, relative to this file.
    pub rules_file: String,
    /// Added to a device's expected silence before comm loss is raised.
    #[serde(default = "default_grace")]
    pub comm_grace_s: u32,
    /// A message whose event time is this much older than its arrival is late
    /// data: alarms it raises are journaled for review and only told to anyone
    /// if still active once the device's data is current again.
    #[serde(default = "default_late_after")]
    pub late_after_s: u32,
    /// Number of pipeline workers; sites are hashed onto them.
    #[serde(default = "default_shards")]
    pub shards: usize,
    /// Capacity of each pipeline worker's queue (messages).
    #[serde(default = "default_queue")]
    pub shard_queue: usize,
    /// Alert routing, on-call rosters and escalation, relative to this file
    /// (unset: alarms are for the board only).
    #[serde(default)]
    pub notify_file: Option<String>,
    /// Messages kept in the quarantine for engineers to inspect.
    #[serde(default = "default_quarantine")]
    pub quarantine_capacity: usize,
}

fn default_tz() -> i32 {
    9
}
fn default_lang() -> String {
    "ja".into()
}
fn default_grace() -> u32 {
    600
}
fn default_late_after() -> u32 {
    900
}
fn default_shards() -> usize {
    4
}
fn default_queue() -> usize {
    1024
}
fn default_quarantine() -> usize {
    500
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSection {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default = "default_keep_alive")]
    pub keep_alive_s: u16,
    /// Prepended to every device topic: for a shared broker where this
    /// utility's devices publish under a namespace (e.g. `region/akita/`).
    #[serde(default)]
    pub topic_prefix: String,
    /// A persistent session lets the broker keep QoS 1 messages for us while we
    /// are down; turn off only for throw-away test brokers.
    #[serde(default = "yes")]
    pub persistent_session: bool,
    #[serde(default = "default_max_payload")]
    pub max_payload_bytes: usize,
    /// Reconnect backoff bounds.
    #[serde(default = "default_backoff_min")]
    pub backoff_min_ms: u64,
    #[serde(default = "default_backoff_max")]
    pub backoff_max_ms: u64,
    /// Messages taken from the connection and waiting to be decoded. Larger
    /// than any broker's in-flight window; a broker that ignores its window
    /// and fills it has the connection dropped so it redelivers.
    #[serde(default = "default_intake_queue")]
    pub intake_queue: usize,
    /// Payload bytes taken from the connection and not yet acknowledged: the
    /// same policy as a full intake queue once passed. A count alone let a
    /// broker that ignores its in-flight window hand over 13,000 uploads of
    /// 3 KB (RSS 210 MiB, docs/PERFORMANCE.md).
    #[serde(default = "default_intake_bytes")]
    pub intake_bytes: usize,
    /// Messages owed to the broker and none acknowledged for this long: the
    /// intake is stalled (health 503, `mizuban_mqtt_stalled`).
    #[serde(default = "default_stall_after")]
    pub stall_after_s: u64,
    /// TLS to the broker (port 8883 usually); absent: plain TCP.
    #[serde(default)]
    pub tls: Option<MqttTls>,
}

/// `[mqtt.tls]`: files relative to the configuration's directory.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MqttTls {
    /// PEM file of the CA(s) the broker's certificate must chain to.
    pub ca_file: PathBuf,
    /// PEM client certificate and key, for brokers that require one.
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
}

fn default_intake_queue() -> usize {
    8192
}
fn default_intake_bytes() -> usize {
    8 * 1024 * 1024
}
fn default_stall_after() -> u64 {
    30
}

fn default_keep_alive() -> u16 {
    30
}
fn yes() -> bool {
    true
}
fn default_max_payload() -> usize {
    256 * 1024
}
fn default_backoff_min() -> u64 {
    200
}
fn default_backoff_max() -> u64 {
    30_000
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// `sqlite` (the embedded default) or `postgres` (deployments).
    #[serde(default)]
    pub kind: StoreKind,
    /// SQLite file, relative to this file unless absolute (`kind = "sqlite"`;
    /// with `postgres` it only places the board's replay scratch files).
    pub path: String,
    /// PostgreSQL connection URL (`postgres://user:password@host:5432/db`),
    /// for `kind = "postgres"`; `url_env` names an environment variable that
    /// holds it instead (keeps the password out of the file).
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub url_env: Option<String>,
    /// Days every received input (MQTT payloads, Modbus polls and their
    /// failures) is kept for `mizuban export` and `mizuban replay`.
    #[serde(default = "default_inputs_retention")]
    pub inputs_retention_days: u32,
    /// Days raw readings are kept (by event time); 0 keeps them for ever.
    /// Trends beyond this come from the rollups.
    #[serde(default = "default_readings_retention")]
    pub readings_retention_days: u32,
    /// Days 1-minute rollups are kept; 0 keeps them for ever.
    #[serde(default = "default_readings_retention")]
    pub rollup_1m_retention_days: u32,
    /// Days 1-hour rollups are kept; 0 (the default) keeps them for ever:
    /// a point-year is 8,760 rows.
    #[serde(default)]
    pub rollup_1h_retention_days: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    #[default]
    Sqlite,
    Postgres,
}

impl StoreSection {
    /// The PostgreSQL URL, from `url_env` when set.
    pub fn postgres_url(&self) -> Option<String> {
        match &self.url_env {
            Some(var) => std::env::var(var).ok(),
            None => self.url.clone(),
        }
    }
}

/// The InfluxDB 2 sink (`[influx]`): every committed reading and alarm
/// transition is also written to an InfluxDB 2 bucket (or a server speaking
/// its write API), from the store's export feed, never on the ingest path.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InfluxSection {
    /// Base URL of the server (`http://host:8086`).
    pub url: String,
    pub org: String,
    pub bucket: String,
    /// API token; empty sends none. `token_env` names an environment
    /// variable to read it from instead (kept out of the file).
    #[serde(default)]
    pub token: String,
    #[serde(default)]
    pub token_env: Option<String>,
    /// Lines per write request (InfluxDB's guidance: 5,000).
    #[serde(default = "default_influx_batch")]
    pub batch_lines: usize,
    /// Gzip the request bodies.
    #[serde(default = "default_true")]
    pub gzip: bool,
    /// Seconds a write may take before it is abandoned and retried.
    #[serde(default = "default_influx_timeout")]
    pub timeout_s: u64,
    /// The longest wait between retries while the server is unreachable.
    #[serde(default = "default_influx_backoff")]
    pub max_backoff_s: u64,
}

fn default_influx_batch() -> usize {
    5000
}
fn default_true() -> bool {
    true
}
fn default_influx_timeout() -> u64 {
    10
}
fn default_influx_backoff() -> u64 {
    30
}

impl InfluxSection {
    /// The token, from `token_env` when set.
    pub fn token(&self) -> String {
        match &self.token_env {
            Some(var) => std::env::var(var).unwrap_or_default(),
            None => self.token.clone(),
        }
    }
}

fn default_inputs_retention() -> u32 {
    35
}

/// Two years: this year's data beside last year's at full resolution.
fn default_readings_retention() -> u32 {
    730
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    pub listen: String,
    /// The address people reach the board at (e.g. `https://mizuban.example.jp`),
    /// behind a TLS-terminating proxy; used in links sent out in alerts.
    #[serde(default)]
    pub public_url: Option<String>,
    /// Mark session cookies `Secure`. Unset: when `public_url` is https or the
    /// request came through a proxy that says `X-Forwarded-Proto: https`.
    #[serde(default)]
    pub secure_cookies: Option<bool>,
    /// Proxies whose `X-Forwarded-For` names the real client (for login
    /// throttling). Empty: the peer address is the client.
    #[serde(default)]
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Serve `/metrics` on this address only (e.g. an internal interface for
    /// Prometheus) instead of beside the board and API.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// Require `Authorization: Bearer <this>` for `/metrics`.
    #[serde(default)]
    pub metrics_token: Option<String>,
    /// Open event streams (`/api/v1/events`) in all; more are refused with 503.
    #[serde(default = "default_max_streams")]
    pub max_event_streams: usize,
    /// Open event streams per token or user; more are refused with 429.
    #[serde(default = "default_max_streams_per_caller")]
    pub max_event_streams_per_caller: usize,
}

fn default_max_streams() -> usize {
    512
}
fn default_max_streams_per_caller() -> usize {
    16
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSpec {
    pub name: String,
    pub token: String,
    pub role: Role,
}

/// A board user. Passwords are stored only as argon2 PHC strings
/// (`mizuban hash-password` makes one).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserSpec {
    pub name: String,
    pub password_hash: String,
    pub role: Role,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawMain {
    service: ServiceSection,
    mqtt: MqttSection,
    store: StoreSection,
    http: HttpSection,
    #[serde(default)]
    influx: Option<InfluxSection>,
    #[serde(default, rename = "token")]
    tokens: Vec<Spanned<TokenSpec>>,
    #[serde(default, rename = "user")]
    users: Vec<Spanned<UserSpec>>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawSite {
    pub id: Spanned<String>,
    pub kind: SiteKind,
    pub name: String,
    #[serde(default)]
    pub name_en: String,
    pub area: String,
    pub lat: f64,
    pub lon: f64,
    pub device: Spanned<String>,
    pub profile: Spanned<String>,
    /// Numbers rules can scale by (e.g. `mean_flow` for hourly flow limits).
    #[serde(default)]
    pub attrs: BTreeMap<String, f64>,
    /// For a device polled over Modbus TCP: where, and which unit id.
    #[serde(default)]
    pub modbus: Option<ModbusEndpoint>,
}

/// A controller's address: its own router (unit 1) or a gateway exposing
/// many stations as unit ids on one connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusEndpoint {
    pub host: String,
    #[serde(default = "default_modbus_port")]
    pub port: u16,
    #[serde(default = "default_unit")]
    pub unit: u8,
    /// Overrides of the profile's poll schedule for this controller.
    #[serde(default)]
    pub poll_interval_ms: Option<u64>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub retries: Option<u32>,
}

fn default_modbus_port() -> u16 {
    502
}
fn default_unit() -> u8 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSites {
    #[serde(rename = "site")]
    sites: Vec<RawSite>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRules {
    #[serde(default, rename = "rule")]
    rules: Vec<Spanned<rules::RawRule>>,
}

/// One monitored site with its device.
#[derive(Debug, Clone, Serialize)]
pub struct Site {
    pub id: SiteId,
    pub kind: SiteKind,
    pub name: String,
    pub name_en: String,
    pub area: String,
    pub lat: f64,
    pub lon: f64,
    pub device: DeviceId,
    pub profile: String,
    pub attrs: BTreeMap<String, f64>,
    pub modbus: Option<ModbusEndpoint>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    pub service: ServiceSection,
    pub mqtt: MqttSection,
    pub store_path: PathBuf,
    pub store: StoreSection,
    pub http_listen: SocketAddr,
    pub http: HttpSection,
    pub influx: Option<InfluxSection>,
    pub tokens: Vec<TokenSpec>,
    pub users: Vec<UserSpec>,
    pub profiles: HashMap<String, Arc<Profile>>,
    pub sites: Vec<Arc<Site>>,
    pub rules: Vec<Arc<RuleSpec>>,
    pub notify: Option<Arc<crate::notify::config::NotifyConfig>>,
    /// Position of each site in `sites` by id: every received message looks
    /// its site up, and a scan of 241 ids was a tenth of a replay's time.
    site_index: HashMap<String, usize>,
}

/// Where configuration text comes from: the file system, or the copy built into
/// the binary for `mizuban demo`.
pub trait Source {
    fn read(&self, path: &Path) -> Result<String, SourceError>;
    fn list_toml(&self, dir: &Path) -> Result<Vec<PathBuf>, SourceError>;
}

pub struct FileSource;

impl Source for FileSource {
    fn read(&self, path: &Path) -> Result<String, SourceError> {
        std::fs::read_to_string(path).map_err(|e| SourceError::io(path, &e))
    }
    fn list_toml(&self, dir: &Path) -> Result<Vec<PathBuf>, SourceError> {
        let rd = std::fs::read_dir(dir).map_err(|e| SourceError::io(dir, &e))?;
        let mut v: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        v.sort();
        Ok(v)
    }
}

/// The Akita configuration and device profiles compiled into the binary.
pub struct EmbeddedSource;

pub const EMBEDDED: &[(&str, &str)] = &[
    ("config/akita.toml", include_str!("../../config/akita.toml")),
    ("config/akita-sites.toml", include_str!("../../config/akita-sites.toml")),
    ("config/akita-rules.toml", include_str!("../../config/akita-rules.toml")),
    (
        "devices/akita-dma-logger.toml",
        include_str!("../../devices/akita-dma-logger.toml"),
    ),
    (
        "devices/akita-mps-notifier.toml",
        include_str!("../../devices/akita-mps-notifier.toml"),
    ),
    (
        "devices/akita-mps-controller.toml",
        include_str!("../../devices/akita-mps-controller.toml"),
    ),
];

fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

impl Source for EmbeddedSource {
    fn read(&self, path: &Path) -> Result<String, SourceError> {
        let p = normalize(path);
        EMBEDDED
            .iter()
            .find(|(n, _)| Path::new(n) == p)
            .map(|(_, t)| t.to_string())
            .ok_or_else(|| SourceError {
                file: p,
                line: None,
                field: "(file)".into(),
                message: "not embedded".into(),
            })
    }
    fn list_toml(&self, dir: &Path) -> Result<Vec<PathBuf>, SourceError> {
        let d = normalize(dir);
        Ok(EMBEDDED
            .iter()
            .map(|(n, _)| PathBuf::from(n))
            .filter(|p| p.parent() == Some(d.as_path()))
            .collect())
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, Vec<SourceError>> {
        Self::load_from(&FileSource, path)
    }

    /// The configuration at `path` with its rules taken from `rules` instead
    /// of the file it names (a candidate rule set for replay); everything
    /// else, sites and profiles included, is the configured one.
    pub fn load_with_rules(path: &Path, rules: &Path) -> Result<Self, Vec<SourceError>> {
        let text = FileSource.read(path).map_err(|e| vec![e])?;
        let named = Files::lenient(&text)
            .map(|f| path.parent().unwrap_or(Path::new("")).join(f.rules_file))
            .ok_or_else(|| vec![SourceError::io(path, &std::io::Error::other("no [service] rules_file"))])?;
        struct Candidate<'a> {
            named: PathBuf,
            rules: &'a Path,
        }
        impl Source for Candidate<'_> {
            fn read(&self, p: &Path) -> Result<String, SourceError> {
                FileSource.read(if p == self.named { self.rules } else { p })
            }
            fn list_toml(&self, dir: &Path) -> Result<Vec<PathBuf>, SourceError> {
                FileSource.list_toml(dir)
            }
        }
        Self::load_from(&Candidate { named, rules }, path)
    }

    pub fn load_embedded() -> Result<Self, Vec<SourceError>> {
        Self::load_from(&EmbeddedSource, Path::new("config/akita.toml"))
    }

    pub fn load_from(src: &dyn Source, path: &Path) -> Result<Self, Vec<SourceError>> {
        let text = src.read(path).map_err(|e| vec![e])?;
        let mut errors = Vec::new();
        let raw: Option<RawMain> = match toml::from_str(&text) {
            Ok(r) => Some(r),
            Err(e) => {
                // Every broken section, not just the first; then go on to the
                // other files if their names can still be read.
                errors.extend(section_errors(path, &text, e));
                None
            }
        };
        let files = match &raw {
            Some(r) => Files {
                devices_dir: r.service.devices_dir.clone(),
                sites_file: r.service.sites_file.clone(),
                rules_file: r.service.rules_file.clone(),
                notify_file: r.service.notify_file.clone(),
            },
            None => match Files::lenient(&text) {
                Some(f) => f,
                None => return Err(errors),
            },
        };
        let base = path.parent().unwrap_or(Path::new("")).to_path_buf();
        let fe = |needle: &str, msg: String| SourceError::field(path, &text, needle, msg);
        let http_listen = match &raw {
            Some(raw) => main_checks(raw, path, &text, &mut errors),
            None => SocketAddr::from(([127, 0, 0, 1], 8080)),
        };

        // Device profiles.
        let mut profiles = HashMap::new();
        let dev_dir = base.join(&files.devices_dir);
        match src.list_toml(&dev_dir) {
            Ok(files) => {
                if files.is_empty() {
                    errors.push(fe(
                        "devices_dir",
                        format!("no profiles (*.toml) in {}", dev_dir.display()),
                    ));
                }
                for f in files {
                    match src.read(&f) {
                        Ok(t) => match Profile::parse(&f, &t) {
                            Ok(p) => {
                                if profiles.contains_key(&p.device.model) {
                                    errors.push(SourceError::field(
                                        &f,
                                        &t,
                                        "model",
                                        format!("profile {:?} defined twice", p.device.model),
                                    ));
                                }
                                profiles.insert(p.device.model.clone(), Arc::new(p));
                            }
                            Err(es) => errors.extend(es),
                        },
                        Err(e) => errors.push(e),
                    }
                }
            }
            Err(e) => errors.push(e),
        }

        // Profiles that borrow another's alarm table.
        let borrowed: Vec<(String, String)> = profiles
            .values()
            .filter_map(|p| p.conditions_from.clone().map(|f| (p.device.model.clone(), f)))
            .collect();
        for (model, from) in borrowed {
            match profiles.get(&from).map(|p| p.conditions.clone()) {
                Some(conds) => {
                    if let Some(p) = profiles.get_mut(&model) {
                        let p = Arc::make_mut(p);
                        let mut all = conds;
                        all.append(&mut p.conditions);
                        p.conditions = all;
                    }
                }
                None => errors.push(SourceError {
                    file: dev_dir.clone(),
                    line: None,
                    field: "conditions_from".into(),
                    message: format!("profile {model:?}: conditions_from names unknown profile {from:?}"),
                }),
            }
        }

        // Sites.
        let sites_path = base.join(&files.sites_file);
        let mut sites = Vec::new();
        match src.read(&sites_path) {
            Ok(st) => {
                let (raw_sites, es) = parse_entries(&sites_path, &st, "site", |w: RawSites| w.sites);
                errors.extend(es);
                {
                    let mut ids = HashSet::new();
                    let mut devs = HashSet::new();
                    for s in raw_sites {
                        let se = |sp: std::ops::Range<usize>, field: &str, msg: String| {
                            SourceError::spanned(&sites_path, &st, sp, field, msg)
                        };
                        let id = match SiteId::new(s.id.get_ref()) {
                            Ok(i) => i,
                            Err(e) => {
                                errors.push(se(s.id.span(), "id", e.to_string()));
                                continue;
                            }
                        };
                        if !ids.insert(id.clone()) {
                            errors.push(se(s.id.span(), "id", format!("site {id} defined twice")));
                        }
                        let device = match DeviceId::new(s.device.get_ref()) {
                            Ok(d) => d,
                            Err(e) => {
                                errors.push(se(s.device.span(), "device", e.to_string()));
                                continue;
                            }
                        };
                        if !devs.insert(device.clone()) {
                            errors.push(se(
                                s.device.span(),
                                "device",
                                format!("device {device} is used by two sites"),
                            ));
                        }
                        match profiles.get(s.profile.get_ref()) {
                            None => errors.push(se(
                                s.profile.span(),
                                "profile",
                                format!(
                                    "site {id}: unknown device profile {:?} (known: {})",
                                    s.profile.get_ref(),
                                    {
                                        let mut k: Vec<_> = profiles.keys().cloned().collect();
                                        k.sort();
                                        k.join(", ")
                                    }
                                ),
                            )),
                            Some(p) if p.modbus.is_some() != s.modbus.is_some() => errors.push(se(
                                s.profile.span(),
                                "modbus",
                                format!(
                                    "site {id}: profile {:?} {} a Modbus register map but the site {} a `modbus` endpoint",
                                    s.profile.get_ref(),
                                    if p.modbus.is_some() { "has" } else { "has no" },
                                    if s.modbus.is_some() { "has" } else { "has no" }
                                ),
                            )),
                            Some(p) if p.device.kind != s.kind => errors.push(se(
                                s.profile.span(),
                                "profile",
                                format!(
                                    "site {id} is {:?} but profile {:?} is for {:?}",
                                    s.kind,
                                    s.profile.get_ref(),
                                    p.device.kind
                                ),
                            )),
                            _ => {}
                        }
                        if !(-90.0..=90.0).contains(&s.lat) || !(-180.0..=180.0).contains(&s.lon) {
                            errors.push(se(s.id.span(), "lat/lon", format!("site {id}: lat/lon out of range")));
                        }
                        sites.push(Arc::new(Site {
                            id,
                            kind: s.kind,
                            name: s.name,
                            name_en: s.name_en,
                            area: s.area,
                            lat: s.lat,
                            lon: s.lon,
                            device,
                            profile: s.profile.into_inner(),
                            attrs: s.attrs,
                            modbus: s.modbus,
                        }));
                    }
                }
            }
            Err(e) => errors.push(e),
        }

        // Rules.
        let rules_path = base.join(&files.rules_file);
        let mut rules = Vec::new();
        match src.read(&rules_path) {
            Ok(rt) => {
                let (raw_rules, es) = parse_entries(&rules_path, &rt, "rule", |w: RawRules| w.rules);
                errors.extend(es);
                {
                    let mut ids = HashSet::new();
                    for r in raw_rules {
                        let span = r.span();
                        match rules::validate(r.into_inner(), &profiles, &sites) {
                            Ok(spec) => {
                                if !ids.insert(spec.id.clone()) {
                                    errors.push(SourceError::spanned(
                                        &rules_path,
                                        &rt,
                                        span,
                                        "id",
                                        format!("rule {:?} defined twice", spec.id),
                                    ));
                                }
                                rules.push(Arc::new(spec));
                            }
                            Err(problems) => {
                                for (field, msg) in problems {
                                    errors.push(SourceError::in_span(&rules_path, &rt, span.clone(), &field, msg));
                                }
                            }
                        }
                    }
                }
            }
            Err(e) => errors.push(e),
        }

        // Alerts.
        let mut notify = None;
        if let Some(f) = &files.notify_file {
            let np = base.join(f);
            match src.read(&np) {
                Ok(nt) => match toml::from_str::<crate::notify::config::NotifyConfig>(&nt) {
                    Ok(n) => {
                        for p in n.validate(&sites) {
                            errors.push(SourceError::in_entry(&np, &nt, p.table, p.index, &p.field, p.message));
                        }
                        notify = Some(Arc::new(n));
                    }
                    Err(e) => errors.push(SourceError::toml(&np, &nt, &e)),
                },
                Err(e) => errors.push(e),
            }
        }

        if let Some(raw) = &raw {
            let fe = |needle: &str, msg: String| SourceError::field(path, &text, needle, msg);
            if raw.store.kind == StoreKind::Postgres {
                match raw.store.postgres_url() {
                    Some(u) if crate::store::is_postgres_url(&u) => {}
                    Some(_) => errors.push(fe("url", "store url is not a PostgreSQL connection URL".into())),
                    None => errors.push(fe(
                        "kind",
                        match &raw.store.url_env {
                            Some(v) => format!("kind = \"postgres\" needs a URL: environment variable {v} is not set"),
                            None => "kind = \"postgres\" needs `url` (or `url_env`)".into(),
                        },
                    )),
                }
            }
        }
        let Some(raw) = raw.filter(|_| errors.is_empty()) else {
            return Err(errors);
        };
        let store_path = {
            let p = PathBuf::from(&raw.store.path);
            if p.is_absolute() {
                p
            } else {
                base.join(p)
            }
        };
        Ok(Config {
            file: path.to_path_buf(),
            service: raw.service,
            mqtt: raw.mqtt,
            store_path,
            store: raw.store.clone(),
            http_listen,
            http: raw.http.clone(),
            influx: raw.influx.clone(),
            tokens: raw.tokens.into_iter().map(Spanned::into_inner).collect(),
            users: raw.users.into_iter().map(Spanned::into_inner).collect(),
            profiles,
            site_index: sites.iter().enumerate().map(|(i, s)| (s.id.to_string(), i)).collect(),
            sites,
            rules,
            notify,
        })
    }

    /// Where the store is, by `[store] kind`.
    pub fn store_location(&self) -> crate::store::Location {
        match self.store.kind {
            StoreKind::Sqlite => crate::store::Location::Sqlite(self.store_path.clone()),
            StoreKind::Postgres => crate::store::Location::Postgres(self.store.postgres_url().unwrap_or_default()),
        }
    }

    /// Whether the store can be written where configured (for check-config;
    /// creates and removes a probe file, nothing else): the database file if
    /// it exists, else the nearest existing directory above it.
    pub fn store_problem(&self) -> Option<SourceError> {
        let problem = |message: String| {
            let text = std::fs::read_to_string(&self.file).unwrap_or_default();
            let at = text.find("[store]").unwrap_or(0);
            let span = error::section_spans(&text)
                .into_iter()
                .find(|s| s.contains(&at))
                .unwrap_or(0..text.len());
            Some(SourceError::in_span(&self.file, &text, span, "path", message))
        };
        if let crate::store::Location::Postgres(url) = self.store_location() {
            return crate::store::reachable(&url)
                .err()
                .and_then(|e| problem(format!("store: cannot reach PostgreSQL: {e}")));
        }
        let p = &self.store_path;
        if p.exists() {
            return match std::fs::OpenOptions::new().append(true).open(p) {
                Ok(_) => None,
                Err(e) => problem(format!("store {} cannot be written: {e}", p.display())),
            };
        }
        let mut dir = p.parent().map(Path::to_path_buf).unwrap_or_default();
        while !dir.as_os_str().is_empty() && !dir.exists() {
            dir = dir.parent().map(Path::to_path_buf).unwrap_or_default();
        }
        if dir.as_os_str().is_empty() {
            dir = PathBuf::from(".");
        }
        if !dir.is_dir() {
            return problem(format!("store {}: {} is not a directory", p.display(), dir.display()));
        }
        let probe = dir.join(format!(".mizuban-write-probe-{}", std::process::id()));
        match std::fs::File::create(&probe) {
            Ok(_) => {
                let _ = std::fs::remove_file(&probe);
                None
            }
            Err(e) => problem(format!(
                "store {} cannot be created: {} is not writable: {e}",
                p.display(),
                dir.display()
            )),
        }
    }

    pub fn site(&self, id: &str) -> Option<&Arc<Site>> {
        // `sites` is public; should someone have changed it since loading,
        // the index no longer agrees and the scan answers instead.
        match self.site_index.get(id).and_then(|&i| self.sites.get(i)) {
            Some(s) if s.id.as_str() == id => Some(s),
            _ => self.sites.iter().find(|s| s.id.as_str() == id),
        }
    }

    /// Priority of a device condition per its profile, `medium` when unknown.
    pub fn condition_priority(&self, profile: &str, code: &str) -> Priority {
        self.profiles
            .get(profile)
            .and_then(|p| p.condition(code))
            .map(|c| c.priority)
            .unwrap_or(Priority::Medium)
    }
}

/// The file names the main configuration points at.
struct Files {
    devices_dir: String,
    sites_file: String,
    rules_file: String,
    notify_file: Option<String>,
}

impl Files {
    /// From a main file that does not deserialize but is valid TOML.
    fn lenient(text: &str) -> Option<Self> {
        let t: toml::Table = toml::from_str(text).ok()?;
        let s = t.get("service")?.as_table()?;
        let get = |k: &str| s.get(k).and_then(|v| v.as_str()).map(str::to_string);
        Some(Self {
            devices_dir: get("devices_dir")?,
            sites_file: get("sites_file")?,
            rules_file: get("rules_file")?,
            notify_file: get("notify_file"),
        })
    }
}

/// The main file's sections, each optional, to parse one section at a time.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // parsed for its errors only
struct RawMainParts {
    service: Option<ServiceSection>,
    mqtt: Option<MqttSection>,
    store: Option<StoreSection>,
    http: Option<HttpSection>,
    influx: Option<InfluxSection>,
    #[serde(default, rename = "token")]
    tokens: Vec<Spanned<TokenSpec>>,
    #[serde(default, rename = "user")]
    users: Vec<Spanned<UserSpec>>,
}

/// Every section's error in a main file that does not deserialize (serde
/// stops at the first), each at its own line.
fn section_errors(path: &Path, text: &str, whole: toml::de::Error) -> Vec<SourceError> {
    let mut out: Vec<SourceError> = Vec::new();
    for span in error::section_spans(text) {
        if let Err(e) = toml::from_str::<RawMainParts>(&error::only(text, span)) {
            let se = SourceError::toml(path, text, &e);
            if !out.contains(&se) {
                out.push(se);
            }
        }
    }
    if out.is_empty() {
        // Not inside one section (a missing section, a syntax error).
        out.push(SourceError::toml(path, text, &whole));
    }
    out
}

/// Parses a file of `[[table]]` entries. When the whole file does not
/// deserialize, each entry is parsed alone (the rest blanked, lines kept), so
/// every broken entry is reported and the good ones are still checked
/// against the rest of the configuration.
fn parse_entries<W: serde::de::DeserializeOwned, T>(
    path: &Path,
    text: &str,
    table: &str,
    items: impl Fn(W) -> Vec<T>,
) -> (Vec<T>, Vec<SourceError>) {
    let whole = match toml::from_str::<W>(text) {
        Ok(w) => return (items(w), Vec::new()),
        Err(e) => e,
    };
    if toml::from_str::<toml::Table>(text).is_err() {
        return (Vec::new(), vec![SourceError::toml(path, text, &whole)]);
    }
    let mut got = Vec::new();
    let mut errs: Vec<SourceError> = Vec::new();
    for span in error::entry_spans(text, table) {
        match toml::from_str::<W>(&error::only(text, span)) {
            Ok(w) => got.extend(items(w)),
            Err(e) => {
                let se = SourceError::toml(path, text, &e);
                if !errs.contains(&se) {
                    errs.push(se);
                }
            }
        }
    }
    if errs.is_empty() {
        errs.push(SourceError::toml(path, text, &whole));
    }
    (got, errs)
}

/// The main file's own checks; returns the HTTP address.
fn main_checks(raw: &RawMain, path: &Path, text: &str, errors: &mut Vec<SourceError>) -> SocketAddr {
    let fe = |needle: &str, msg: String| SourceError::field(path, text, needle, msg);
    let http_listen = match raw.http.listen.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(e) => {
            errors.push(fe(
                "listen",
                format!("{:?} is not an address:port: {e}", raw.http.listen),
            ));
            SocketAddr::from(([127, 0, 0, 1], 8080))
        }
    };
    if raw.service.shards == 0 || raw.service.shards > 256 {
        errors.push(fe("shards", "shards must be 1..=256".into()));
    }
    if let Some(i) = &raw.influx {
        match reqwest::Url::parse(&i.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            Ok(u) => errors.push(fe(
                "url",
                format!("influx url {:?}: scheme {} is not http or https", i.url, u.scheme()),
            )),
            Err(e) => errors.push(fe("url", format!("influx url {:?} is not a URL: {e}", i.url))),
        }
        if i.org.is_empty() {
            errors.push(fe("org", "influx org must not be empty".into()));
        }
        if i.bucket.is_empty() {
            errors.push(fe("bucket", "influx bucket must not be empty".into()));
        }
        if !(1..=5000).contains(&i.batch_lines) {
            errors.push(fe("batch_lines", "influx batch_lines must be 1..=5000".into()));
        }
        if i.timeout_s == 0 || i.max_backoff_s == 0 {
            errors.push(fe(
                "timeout_s",
                "influx timeout_s and max_backoff_s must be above 0".into(),
            ));
        }
    }
    if raw.service.shard_queue == 0 {
        errors.push(fe("shard_queue", "shard_queue must be above 0".into()));
    }
    if !matches!(raw.service.language.as_str(), "ja" | "en") {
        errors.push(fe(
            "language",
            format!("language {:?} is not `ja` or `en`", raw.service.language),
        ));
    }
    if raw.mqtt.topic_prefix.contains(['+', '#'])
        || (!raw.mqtt.topic_prefix.is_empty() && !raw.mqtt.topic_prefix.ends_with('/'))
    {
        errors.push(fe(
            "topic_prefix",
            "topic_prefix must end with '/' and hold no wildcards".into(),
        ));
    }
    if let Some(t) = &raw.mqtt.tls {
        let base = path.parent().unwrap_or(Path::new(""));
        if t.client_cert_file.is_some() != t.client_key_file.is_some() {
            errors.push(fe(
                "client_cert_file",
                "client_cert_file and client_key_file go together".into(),
            ));
        }
        if let Err(e) = crate::collect::mqtt::tls::client_config(t, base) {
            errors.push(fe("ca_file", format!("mqtt TLS: {e}")));
        }
    }
    if raw.mqtt.backoff_min_ms == 0 || raw.mqtt.backoff_min_ms > raw.mqtt.backoff_max_ms {
        errors.push(fe("backoff_min_ms", "need 0 < backoff_min_ms <= backoff_max_ms".into()));
    }
    let mut seen_tokens = HashSet::new();
    for t in &raw.tokens {
        let tk = t.get_ref();
        if tk.token.len() < 16 {
            errors.push(SourceError::spanned(
                path,
                text,
                t.span(),
                "token",
                format!("token {:?} is shorter than 16 characters", tk.name),
            ));
        }
        if !seen_tokens.insert(tk.token.clone()) {
            errors.push(SourceError::spanned(
                path,
                text,
                t.span(),
                "token",
                format!("token of {:?} is used twice", tk.name),
            ));
        }
    }

    for u in &raw.users {
        if argon2::password_hash::PasswordHash::new(&u.get_ref().password_hash).is_err() {
            errors.push(SourceError::spanned(
                path,
                text,
                u.span(),
                "password_hash",
                format!("user {:?}: password_hash is not an argon2 PHC string", u.get_ref().name),
            ));
        }
    }

    http_listen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_config_is_valid() {
        let c = Config::load_embedded().unwrap_or_else(|e| panic!("{e:#?}"));
        assert_eq!(c.sites.iter().filter(|s| s.kind == SiteKind::Dma).count(), 41);
        assert_eq!(c.sites.iter().filter(|s| s.kind == SiteKind::PumpStation).count(), 200);
        assert!(c.profiles.contains_key("akita-dma-logger"));
        assert!(!c.rules.is_empty());
    }
}
