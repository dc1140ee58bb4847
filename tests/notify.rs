//! Alerts to on-call staff against real peers: a real SMTP server (aiosmtpd,
//! tests/peers/smtp_sink.py) and a webhook receiver that checks every
//! signature. Escalation runs in paused time (the harness's manual clock).
//!
//! aiosmtpd: `pip install aiosmtpd`; skipped without it, except under CI=true
//! (.ci/run installs it). E-mails as received: target/notify-mail/.

mod common;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use chrono::Duration;
use common::*;
use hmac::{Hmac, Mac};
use mizuban_sim::Scenario;
use serde_json::Value;
use sha2::Sha256;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

const SECRET: &str = "s3cret-for-tests";

/// A webhook receiver that verifies `X-Mizuban-Signature` and keeps every
/// delivery (bad signatures are answered 401 and counted). It can go down
/// (connections refused) and come back on the same port.
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Value>>>,
    bad: Arc<Mutex<usize>>,
    port: u16,
    stop: Arc<Mutex<Option<CancellationToken>>>,
}

impl Receiver {
    async fn start() -> Self {
        let mut r = Receiver {
            port: free_port(),
            ..Default::default()
        };
        r.up().await;
        r
    }
    async fn up(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        let (got, bad) = (self.got.clone(), self.bad.clone());
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let (got, bad) = (got.clone(), bad.clone());
                async move {
                    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
                    mac.update(&body);
                    let want = format!(
                        "sha256={}",
                        mac.finalize()
                            .into_bytes()
                            .iter()
                            .map(|b| format!("{b:02x}"))
                            .collect::<String>()
                    );
                    let sig = headers.get("x-mizuban-signature").and_then(|v| v.to_str().ok());
                    if sig != Some(want.as_str()) {
                        *bad.lock().unwrap() += 1;
                        return StatusCode::UNAUTHORIZED;
                    }
                    got.lock().unwrap().push(serde_json::from_slice(&body).unwrap());
                    StatusCode::OK
                }
            }),
        );
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { c.cancelled().await })
                .await
                .unwrap();
        });
        *self.stop.lock().unwrap() = Some(cancel);
    }
    fn down(&self) {
        if let Some(c) = self.stop.lock().unwrap().take() {
            c.cancel();
        }
    }
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }
    fn all(&self) -> Vec<Value> {
        self.got.lock().unwrap().clone()
    }
    fn to(&self, who: &str) -> Vec<Value> {
        self.all().into_iter().filter(|m| m["recipient"] == who).collect()
    }
}

/// The SMTP server, or `None` (skip) without aiosmtpd outside CI.
struct Smtp {
    child: tokio::process::Child,
    port: u16,
    dir: PathBuf,
}

async fn smtp(name: &str) -> Option<Smtp> {
    if !peer_present(python_has("aiosmtpd"), "aiosmtpd", "pip install aiosmtpd") {
        return None;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("target/notify-mail").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let mut child = tokio::process::Command::new("python3")
        .arg(root.join("tests/peers/smtp_sink.py"))
        .arg(port.to_string())
        .arg(&dir)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(std::time::Duration::from_secs(20), lines.next_line()).await;
    assert!(
        matches!(first, Ok(Ok(Some(ref l))) if l == "READY"),
        "smtp sink did not start: {first:?}"
    );
    Some(Smtp { child, port, dir })
}

impl Smtp {
    /// Decoded mails received so far, in order: (to, subject, body).
    fn mails(&self) -> Vec<(String, String, String)> {
        let mut files: Vec<_> = std::fs::read_dir(&self.dir)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "txt"))
            .collect();
        files.sort();
        files
            .iter()
            .map(|p| {
                let t = std::fs::read_to_string(p).unwrap();
                let (head, body) = t.split_once("\n\n").unwrap_or((&t, ""));
                let field = |k: &str| {
                    head.lines()
                        .find_map(|l| l.strip_prefix(k))
                        .unwrap_or("")
                        .trim()
                        .to_string()
                };
                (field("To:"), field("Subject:"), body.to_string())
            })
            .collect()
    }
}

/// Turns notifications on for a harness: writes `notify.toml` and restarts.
async fn with_notify(h: &mut Harness, notify: &str) {
    write_notify(&h.config_path, notify);
    h.restart().await;
}

/// Waits (real time) until `f` holds: the engine works every 100 ms.
async fn eventually(what: &str, f: impl Fn() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Gives the engine time to act on the clock as it is now (it would have sent
/// anything due by then), for checks that something did *not* happen.
async fn settle() {
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
}

fn types(v: &[Value]) -> Vec<String> {
    v.iter().map(|m| m["type"].as_str().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escalates_until_acknowledged_by_link_then_tells_return_to_normal() {
    let Some(mail) = smtp("escalation").await else { return };
    let hook = Receiver::start().await;
    let mut h = Harness::start("notify-esc", &[mps("MP-0061", "AKT-MPN-0061")]).await;
    // t0 is 2025-01-21 09:00 JST: the daily rotation that started 2025-01-20
    // 08:30 has handed over to its second member, tanaka.
    with_notify(
        &mut h,
        &format!(
            r#"
[settings]
group_wait_s = 30
[smtp]
host = "127.0.0.1"
port = {smtp}
from = "mizuban@akita-waterworks.example.jp"
[[webhook]]
name = "ops-chat"
url = "{hook}"
secret = "{SECRET}"
[[person]]
id = "sato"
name = "佐藤 一郎"
language = "ja"
contact = [{{kind = "email", to = "sato@akita-waterworks.example.jp"}}]
[[person]]
id = "tanaka"
name = "Tanaka Jiro"
language = "en"
contact = [{{kind = "email", to = "tanaka@akita-waterworks.example.jp"}}]
[[person]]
id = "chief"
name = "課長"
contact = [{{kind = "webhook", to = "ops-chat"}}]
[[team]]
id = "duty"
rotation = "daily"
handover = "08:30"
start = "2025-01-20"
members = ["sato", "tanaka"]
[[policy]]
id = "standard"
repeat_minutes = 30
level = [{{after_minutes = 0, notify = ["team:duty"]}}, {{after_minutes = 15, notify = ["person:sato"]}}, {{after_minutes = 30, notify = ["person:chief"]}}]
[[route]]
conditions = ["DOOR_OPEN"]
policy = "standard"
"#,
            smtp = mail.port,
            hook = hook.url()
        ),
    )
    .await;
    let oncall = h.get("/api/v1/oncall").await;
    assert_eq!(oncall[0]["person"], "tanaka", "{oncall}");
    let sim = h.spawn_mps(quiet_mps("MP-0061", "AKT-MPN-0061"), t0()).await;
    h.run(&[&sim], Duration::minutes(10)).await;
    sim.inject(Scenario::DoorOpen {
        duration: Duration::minutes(60),
    })
    .await
    .unwrap();
    h.run(&[&sim], Duration::seconds(10)).await;
    settle().await;
    assert!(mail.mails().is_empty(), "nothing before the group wait is over");

    // Level 1 after the group wait: the person on call, in English.
    h.run(&[&sim], Duration::seconds(30)).await;
    eventually("level 1 mail", || mail.mails().len() == 1).await;
    let (to, subject, body) = &mail.mails()[0];
    assert!(to.contains("tanaka@"), "{to}");
    assert!(
        subject.starts_with("[mizuban] Alarm [LOW] MP-0061 Door open"),
        "{subject}"
    );
    assert!(body.contains("Escalation level: 1") && body.contains("/ack/"), "{body}");

    // Not acknowledged: level 2 at 15 minutes, in Japanese; nobody else yet.
    h.run(&[&sim], Duration::minutes(14)).await;
    settle().await;
    assert_eq!(mail.mails().len(), 1, "level 2 is not due before 15 minutes");
    h.run(&[&sim], Duration::minutes(1)).await;
    eventually("level 2 mail", || mail.mails().len() == 2).await;
    let (to, subject, body) = mail.mails()[1].clone();
    assert!(to.contains("sato@"), "{to}");
    assert!(
        subject.starts_with("【水番】警報（未確認のため再通知） [低] MP-0061 扉開"),
        "{subject}"
    );
    assert!(body.contains("通知段階: 2"), "{body}");
    assert!(hook.all().is_empty());

    // sato acknowledges from the mail: the page shows the alarm, the POST acks.
    let url = body.lines().find(|l| l.contains("/ack/")).unwrap().trim().to_string();
    let page = h.http.get(&url).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("MP-0061"));
    let a = h.get("/api/v1/alarms?site=MP-0061").await;
    assert!(a[0]["acked_by"].is_null(), "looking at the link does not acknowledge");
    let r = h
        .http
        .post(&url)
        .form(&[("comment", "向かいます")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let a = h.get("/api/v1/alarms?site=MP-0061").await;
    let alarm = a
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["condition"] == "DOOR_OPEN")
        .unwrap()
        .clone();
    let id = alarm["id"].as_str().unwrap().to_string();
    assert_eq!(alarm["acked_by"], "sato");
    let journal = h.get(&format!("/api/v1/alarms/{id}/journal")).await;
    let ack = journal
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["action"] == "ack")
        .unwrap()
        .clone();
    assert_eq!(ack["who"], "sato");
    assert_eq!(ack["why"], "向かいます (via email link)");
    // Single use.
    let again = h.http.post(&url).send().await.unwrap();
    assert_eq!(again.status(), 409);

    // Escalation stopped: the chief (level 3, due at 30 min) is never told.
    // Both who were told hear it was acknowledged, then that it is over.
    eventually("ack notices", || mail.mails().len() == 4).await;
    h.run(&[&sim], Duration::minutes(20)).await;
    settle().await;
    assert!(hook.all().is_empty(), "level 3 told after the ack: {:?}", hook.all());
    h.run(&[&sim], Duration::minutes(30)).await;
    eventually("return-to-normal mails", || mail.mails().len() == 6).await;
    let mails = mail.mails();
    let subjects: Vec<&str> = mails.iter().map(|m| m.1.as_str()).collect();
    assert!(
        subjects[2..4].iter().any(|s| s.starts_with("[mizuban] Acknowledged")),
        "{subjects:?}"
    );
    assert!(
        subjects[2..4].iter().any(|s| s.starts_with("【水番】確認済")),
        "{subjects:?}"
    );
    assert!(
        subjects[4..6].iter().any(|s| s.starts_with("[mizuban] Back to normal")),
        "{subjects:?}"
    );
    assert!(
        subjects[4..6].iter().any(|s| s.starts_with("【水番】復旧")),
        "{subjects:?}"
    );
    settle().await;
    assert_eq!(mail.mails().len(), 6, "nothing more");

    // The board/API shows who was told, when, through what, and delivery.
    let told = h.get(&format!("/api/v1/alarms/{id}/notifications")).await;
    let told = told.as_array().unwrap();
    assert_eq!(told.len(), 6);
    assert!(told
        .iter()
        .all(|n| n["state"] == "sent" && n["channel"].as_str().unwrap().starts_with("email:")));
    assert_eq!(
        told.iter()
            .map(|n| (n["person"].as_str().unwrap(), n["type"].as_str().unwrap()))
            .take(2)
            .collect::<Vec<_>>(),
        vec![("tanaka", "alarm.raised"), ("sato", "alarm.escalated")]
    );
    drop(mail.child);
    h.stop().await;
}

/// `n` quiet pump stations from MP-`first`, notifications on, 10 minutes of
/// normal running, then `scenario` injected at every one of them.
async fn stations(
    name: &str,
    first: u32,
    n: u32,
    notify: &str,
    scenario: Scenario,
) -> (Harness, Vec<mizuban_sim::Handle>) {
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    let sites: Vec<SiteDef> = (first..first + n)
        .map(|i| mps(leak(format!("MP-{i:04}")), leak(format!("AKT-MPN-{i:04}"))))
        .collect();
    let mut h = Harness::start(name, &sites).await;
    with_notify(&mut h, notify).await;
    let mut sims = Vec::new();
    for s in &sites {
        sims.push(h.spawn_mps(quiet_mps(s.id, s.device), t0()).await);
    }
    let refs: Vec<&mizuban_sim::Handle> = sims.iter().collect();
    h.run(&refs, Duration::minutes(10)).await;
    for s in &sims {
        s.inject(scenario.clone()).await.unwrap();
    }
    (h, sims)
}

fn hook_only(hook: &Receiver, extra: &str) -> String {
    format!(
        r#"
[settings]
group_wait_s = 30
retry_base_s = 5
retry_max_s = 60
retry_max_attempts = 12
{extra}
[[webhook]]
name = "ops"
url = "{url}"
secret = "{SECRET}"
[[person]]
id = "chief"
name = "課長"
contact = [{{kind = "webhook", to = "ops"}}]
[[person]]
id = "suzuki"
name = "鈴木"
contact = [{{kind = "webhook", to = "ops"}}]
[[policy]]
id = "p"
repeat_minutes = 60
level = [{{after_minutes = 0, notify = ["person:chief", "person:suzuki"]}}]
[[route]]
conditions = ["DOOR_OPEN", "POWER_FAIL"]
policy = "p"
"#,
        url = hook.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_down_for_five_minutes_gets_everything_exactly_once() {
    let mut hook = Receiver::start().await;
    let mut h = Harness::start("notify-down", &[mps("MP-0062", "AKT-MPN-0062")]).await;
    with_notify(&mut h, &hook_only(&hook, "")).await;
    let sim = h.spawn_mps(quiet_mps("MP-0062", "AKT-MPN-0062"), t0()).await;
    h.run(&[&sim], Duration::minutes(10)).await;
    hook.down();
    sim.inject(Scenario::DoorOpen {
        duration: Duration::minutes(3),
    })
    .await
    .unwrap();
    // Five minutes down, in 20 s steps: raise (after the group wait) and the
    // clear both fail and are retried with backoff.
    for _ in 0..15 {
        h.run(&[&sim], Duration::seconds(20)).await;
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    }
    assert!(hook.all().is_empty());
    let pending = h.get("/api/v1/notifications?state=pending").await;
    let pending = pending.as_array().unwrap();
    assert_eq!(pending.len(), 4, "raised and cleared, to two people: {pending:?}");
    for n in pending {
        if n["type"] == "alarm.raised" {
            assert!(
                n["attempts"].as_u64().unwrap() >= 2 && !n["last_error"].is_null(),
                "{n}"
            );
        } else {
            assert_eq!(n["attempts"], 0, "the clear waits behind its raise: {n}");
        }
    }
    hook.up().await;
    for _ in 0..6 {
        h.run(&[&sim], Duration::seconds(20)).await;
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    }
    eventually("all delivered", || hook.all().len() >= 4).await;
    settle().await;
    let got = hook.all();
    let mut ids: Vec<&str> = got.iter().map(|m| m["id"].as_str().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), got.len(), "a notification arrived twice");
    assert_eq!(got.len(), 4);
    for who in ["chief", "suzuki"] {
        assert_eq!(types(&hook.to(who)), vec!["alarm.raised", "alarm.cleared"], "{who}");
    }
    // The contract: alarm object, recipient, level, ack link on the raise.
    let raised = &hook.to("chief")[0];
    assert_eq!(raised["alarm"]["condition"], "DOOR_OPEN");
    assert_eq!(raised["escalation_level"], 1);
    assert!(raised["ack_url"].as_str().unwrap().contains("/ack/"));
    assert!(raised["sent_at"].is_string());
    assert_eq!(*hook.bad.lock().unwrap(), 0);
    let sent = h.get("/api/v1/notifications?state=sent").await;
    assert_eq!(sent.as_array().unwrap().len(), 4);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_area_power_cut_is_one_incident_per_recipient() {
    let hook = Receiver::start().await;
    let (h, sims) = stations(
        "notify-cut",
        101,
        30,
        &hook_only(&hook, ""),
        Scenario::PowerCut {
            duration: Duration::minutes(40),
        },
    )
    .await;
    let refs: Vec<&mizuban_sim::Handle> = sims.iter().collect();
    // The cut is seen (clock moves 10 s, the stations report), then the
    // group wait runs out.
    h.run(&refs, Duration::seconds(10)).await;
    settle().await;
    h.run(&refs, Duration::seconds(40)).await;
    eventually("incident messages", || hook.all().len() >= 2).await;
    settle().await;
    for who in ["chief", "suzuki"] {
        let got = hook.to(who);
        assert_eq!(types(&got), vec!["incident.opened"], "{who}: one message, not 30");
        assert_eq!(got[0]["incident"]["count"], 30, "lists every station");
        assert_eq!(got[0]["incident"]["alarms"].as_array().unwrap().len(), 30);
        assert!(got[0]["incident"]["alarms"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["condition"] == "POWER_FAIL"));
    }
    // Power back everywhere: one closing message each.
    h.run(&refs, Duration::minutes(45)).await;
    eventually("incident closed", || hook.all().len() >= 4).await;
    settle().await;
    for who in ["chief", "suzuki"] {
        assert_eq!(
            types(&hook.to(who)),
            vec!["incident.opened", "incident.closed"],
            "{who}"
        );
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_rate_limited_into_a_summary() {
    let hook = Receiver::start().await;
    // Grouped per site, so eight separate door alarms; at most 3 messages per
    // person per 15 minutes.
    let notify = hook_only(
        &hook,
        "rate_limit_per_recipient = 3\nrate_limit_window_minutes = 15\ngroup_by = [\"site\"]",
    )
    .replace("\"person:chief\", ", "");
    let (h, sims) = stations(
        "notify-flood",
        301,
        8,
        &notify,
        Scenario::DoorOpen {
            duration: Duration::hours(3),
        },
    )
    .await;
    let refs: Vec<&mizuban_sim::Handle> = sims.iter().collect();
    h.run(&refs, Duration::seconds(10)).await;
    settle().await;
    h.run(&refs, Duration::seconds(40)).await;
    eventually("first three", || hook.to("suzuki").len() >= 3).await;
    settle().await;
    assert_eq!(types(&hook.to("suzuki")), vec!["alarm.raised"; 3]);
    let held = h.get("/api/v1/notifications?state=held").await;
    assert_eq!(held.as_array().unwrap().len(), 5, "the rest held, not lost");
    // When the window allows, one summary carries the five held ones.
    h.run(&refs, Duration::minutes(16)).await;
    eventually("summary", || hook.to("suzuki").len() >= 4).await;
    settle().await;
    let got = hook.to("suzuki");
    assert_eq!(got.len(), 4);
    assert_eq!(got[3]["type"], "summary");
    assert_eq!(got[3]["messages"].as_array().unwrap().len(), 5);
    // The short code from a message acknowledges as its recipient (for SMS or
    // phone gateways; the caller needs an operator token).
    let code = got[0]["ack_code"].as_str().unwrap();
    let alarm = got[0]["alarm"]["id"].as_str().unwrap();
    let (status, _) = h
        .post("/api/v1/ack-codes", VIEW_TOKEN, serde_json::json!({"code": code}))
        .await;
    assert_eq!(status, 403);
    let (status, body) = h
        .post(
            "/api/v1/ack-codes",
            OP_TOKEN,
            serde_json::json!({"code": code.to_lowercase()}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["acknowledged"][0]["id"], alarm);
    assert_eq!(body["acknowledged"][0]["acked_by"], "suzuki");
    let journal = h.get(&format!("/api/v1/alarms/{alarm}/journal")).await;
    assert!(journal
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["action"] == "ack" && r["why"] == "via ack code"));
    let (status, _) = h
        .post("/api/v1/ack-codes", OP_TOKEN, serde_json::json!({"code": code}))
        .await;
    assert_eq!(status, 409, "single use");
    let (status, _) = h
        .post("/api/v1/ack-codes", OP_TOKEN, serde_json::json!({"code": "ZZZZ9999"}))
        .await;
    assert_eq!(status, 404);
    h.stop().await;
}

/// A device's own connection to the test broker, for publishing by hand.
fn device_client(name: &str) -> rumqttc::AsyncClient {
    let (host, port) = broker();
    let mut o = rumqttc::MqttOptions::new(format!("{name}-{}", std::process::id()), host, port);
    o.set_keep_alive(std::time::Duration::from_secs(30));
    o.set_credentials(MQTT_USER, MQTT_PASSWORD);
    let (dev, mut ev) = rumqttc::AsyncClient::new(o, 10);
    tokio::spawn(async move { while ev.poll().await.is_ok() {} });
    dev
}

/// The deployed binary, killed with SIGKILL between escalation levels and
/// started again: every level reaches the receiver once, none is skipped, none
/// repeated. Real time here (a separate process): levels at 0, 6 and 12 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_escalation_resumes_without_gap_or_duplicate() {
    let hook = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("t{}-kill9/", std::process::id());
    let cfg = write_config(dir.path(), "kill9", &prefix, &[mps("MP-0063", "AKT-MPN-0063")], None);
    let http = pin_http_port(&cfg);
    write_notify(
        &cfg,
        &format!(
            r#"
[settings]
group_wait_s = 1
[[webhook]]
name = "ops"
url = "{url}"
secret = "{SECRET}"
[[person]]
id = "chief"
name = "課長"
contact = [{{kind = "webhook", to = "ops"}}]
[[policy]]
id = "p"
repeat_minutes = 60
level = [{{after_minutes = 0, notify = ["person:chief"]}}, {{after_minutes = 0.1, notify = ["person:chief"]}}, {{after_minutes = 0.2, notify = ["person:chief"]}}]
[[route]]
policy = "p"
"#,
            url = hook.url()
        ),
    );
    let mut child = spawn_deployed(&cfg);
    wait_deployed_up(http).await;

    // The station reports its door open, now.
    let dev = device_client("kill9-dev");
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let body = serde_json::json!({"schema": "mps-event/1", "station_id": "MP-0063", "device_id": "AKT-MPN-0063",
        "boot": 1, "seq": 1, "t": now, "code": "DOOR_OPEN", "bit": 12, "state": "raise", "level_cm": 40});
    dev.publish(
        format!("{prefix}akita/v1/mps/MP-0063/event"),
        rumqttc::QoS::AtLeastOnce,
        false,
        serde_json::to_vec(&body).unwrap(),
    )
    .await
    .unwrap();
    eventually("level 1", || !hook.to("chief").is_empty()).await;
    // Killed between levels: once level 1 is recorded as delivered (killed
    // between the receiver's 200 and that record, it is sent again with the
    // same id, which is the contract's at-least-once, not what this tests).
    let sent = format!("http://127.0.0.1:{http}/api/v1/notifications?state=sent");
    let client = reqwest::Client::new();
    let mut recorded = false;
    for _ in 0..100 {
        let r = client.get(&sent).bearer_auth(VIEW_TOKEN).send().await.unwrap();
        let v: serde_json::Value = r.json().await.unwrap();
        if v.as_array().is_some_and(|a| a.len() == 1) {
            recorded = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(recorded, "level 1 recorded as sent");
    // Killed before level 2 (due 6 s after level 1); level 2 falls due while it is down.
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(8)).await;
    assert_eq!(hook.to("chief").len(), 1);
    let mut child = spawn_deployed(&cfg);
    wait_deployed_up(http).await;
    eventually("levels 2 and 3", || hook.to("chief").len() >= 3).await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let got = hook.to("chief");
    let levels: Vec<u64> = got.iter().map(|m| m["escalation_level"].as_u64().unwrap()).collect();
    assert_eq!(levels, vec![1, 2, 3], "each level once, in order: {got:?}");
    assert_eq!(types(&got), vec!["alarm.raised", "alarm.escalated", "alarm.escalated"]);
    let mut ids: Vec<&str> = got.iter().map(|m| m["id"].as_str().unwrap()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 3);
    child.start_kill().unwrap();
    let _ = child.wait().await;
}

/// A contact that keeps failing: after its retries the person's next contact
/// method gets the message; someone with no working contact at all shows on
/// the board as a `notification_failed` alarm. A shelve that runs out on an
/// active alarm tells again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_contact_falls_over_and_shows_on_the_board() {
    let hook = Receiver::start().await;
    let dead = format!("http://127.0.0.1:{}/hook", free_port());
    let mut h = Harness::start("notify-fail", &[mps("MP-0064", "AKT-MPN-0064")]).await;
    with_notify(
        &mut h,
        &format!(
            r#"
[settings]
group_wait_s = 0
retry_base_s = 5
retry_max_attempts = 2
[[webhook]]
name = "ops"
url = "{ok}"
secret = "{SECRET}"
[[webhook]]
name = "broken"
url = "{dead}"
secret = "{SECRET}"
[[person]]
id = "kato"
name = "加藤"
contact = [{{kind = "webhook", to = "broken"}}, {{kind = "webhook", to = "ops"}}]
[[person]]
id = "ito"
name = "伊藤"
contact = [{{kind = "webhook", to = "broken"}}]
[[policy]]
id = "p"
repeat_minutes = 600
level = [{{after_minutes = 0, notify = ["person:kato", "person:ito"]}}]
[[route]]
policy = "p"
conditions = ["DOOR_OPEN"]
"#,
            ok = hook.url()
        ),
    )
    .await;
    let sim = h.spawn_mps(quiet_mps("MP-0064", "AKT-MPN-0064"), t0()).await;
    h.run(&[&sim], Duration::minutes(10)).await;
    sim.inject(Scenario::DoorOpen {
        duration: Duration::hours(2),
    })
    .await
    .unwrap();
    for _ in 0..4 {
        h.run(&[&sim], Duration::seconds(10)).await;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    eventually("kato over the second contact", || hook.to("kato").len() == 1).await;
    let m = &hook.to("kato")[0];
    assert_eq!(m["type"], "alarm.raised");
    assert!(m["id"].as_str().unwrap().ends_with("-c1"), "{m}");
    let failed = h.get("/api/v1/notifications?state=failed").await;
    assert_eq!(failed.as_array().unwrap().len(), 2, "kato's and ito's first contact");
    h.wait_until("notification_failed on the board", || async {
        h.get("/api/v1/alarms?site=MP-0064")
            .await
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["condition"] == "notification_failed" && a["source"] == "notify:ito")
    })
    .await;

    // Shelved for 10 minutes while still open: kato hears it was shelved, then
    // is told again when the shelve runs out.
    let door = h.get("/api/v1/alarms?site=MP-0064").await;
    let door = door
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["condition"] == "DOOR_OPEN")
        .unwrap()
        .clone();
    let (code, _) = h
        .post(
            &format!("/api/v1/alarms/{}/shelve", door["id"].as_str().unwrap()),
            OP_TOKEN,
            serde_json::json!({"minutes": 10, "reason": "点検中"}),
        )
        .await;
    assert_eq!(code, 200);
    eventually("shelved notice", || hook.to("kato").len() == 2).await;
    assert_eq!(hook.to("kato")[1]["type"], "alarm.shelved");
    h.run(&[&sim], Duration::minutes(11)).await;
    eventually("told again", || hook.to("kato").len() == 3).await;
    assert_eq!(hook.to("kato")[2]["type"], "alarm.raised");
    h.stop().await;
}

/// The alarms of a site as served, by condition: `(state, paged)`.
async fn paged_by_condition(h: &Harness, site: &str) -> Vec<(String, bool)> {
    let mut v: Vec<(String, bool)> = h
        .get(&format!("/api/v1/alarms?all=true&site={site}"))
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["condition"].as_str().unwrap().to_string(), a["paged"] == true))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blip_over_within_the_group_wait_is_one_brief_not_silence() {
    let hook = Receiver::start().await;
    // Five stations lose mains for 20 s: raised and cleared inside the 30 s
    // group wait, so nobody is paged, but on-call hears it happened.
    let (h, sims) = stations(
        "notify-blip",
        401,
        5,
        &hook_only(&hook, ""),
        Scenario::PowerCut {
            duration: Duration::seconds(20),
        },
    )
    .await;
    let refs: Vec<&mizuban_sim::Handle> = sims.iter().collect();
    h.run(&refs, Duration::seconds(10)).await;
    h.run(&refs, Duration::seconds(15)).await;
    h.wait_until("all five over", || async {
        let a = h.get("/api/v1/alarms?all=true").await;
        let a = a.as_array().unwrap();
        a.iter().filter(|a| a["condition"] == "POWER_FAIL").count() == 5 && a.iter().all(|a| a["active"] == false)
    })
    .await;
    settle().await;
    assert!(hook.all().is_empty(), "nothing before the group wait is over");
    assert!(
        paged_by_condition(&h, "MP-0401").await.iter().all(|(_, p)| !p),
        "nothing delivered yet: paged is false"
    );
    h.run(&refs, Duration::seconds(30)).await;
    eventually("briefs", || hook.all().len() >= 2).await;
    settle().await;
    for who in ["chief", "suzuki"] {
        let got = hook.to(who);
        assert_eq!(types(&got), vec!["incident.brief"], "{who}: one brief, no page");
        let m = &got[0];
        assert_eq!(m["incident"]["count"], 5);
        assert_eq!(m["episode"]["sites"], 5);
        assert!(
            m["episode"]["from"].is_string() && m["episode"]["to"].is_string(),
            "{m}"
        );
        assert!(m["episode"]["reported_at"].is_null(), "reported as it happened: {m}");
        assert!(m.get("ack_url").is_none(), "nothing to acknowledge: {m}");
        assert!(m["incident"]["alarms"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["condition"] == "POWER_FAIL" && a["active"] == false));
    }
    // Now a message about it was delivered: paged, on every station.
    for i in 401..406 {
        assert_eq!(
            paged_by_condition(&h, &format!("MP-{i:04}")).await,
            vec![("POWER_FAIL".to_string(), true)],
            "MP-{i:04}"
        );
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_episode_over_before_its_data_arrived_is_reported_as_a_brief() {
    let hook = Receiver::start().await;
    let mut h = Harness::start("notify-late", &[mps("MP-0411", "AKT-MPN-0411")]).await;
    with_notify(&mut h, &hook_only(&hook, "")).await;
    let sim = h.spawn_mps(quiet_mps("MP-0411", "AKT-MPN-0411"), t0()).await;
    h.run(&[&sim], Duration::minutes(30)).await;
    sim.inject(Scenario::LteOutage {
        duration: Duration::hours(1),
    })
    .await
    .unwrap();
    h.run(&[&sim], Duration::minutes(20)).await;
    // The door opens and closes while the radio is down.
    sim.inject(Scenario::DoorOpen {
        duration: Duration::minutes(10),
    })
    .await
    .unwrap();
    h.run(&[&sim], Duration::minutes(20)).await;
    settle().await;
    assert!(hook.all().is_empty(), "nothing known yet");
    // Radio back: the backlog tells of the door, already over.
    h.run(&[&sim], Duration::minutes(40)).await;
    eventually("brief", || hook.all().len() >= 2).await;
    settle().await;
    for who in ["chief", "suzuki"] {
        let got = hook.to(who);
        assert_eq!(types(&got), vec!["alarm.brief"], "{who}");
        let m = &got[0];
        assert_eq!(m["alarm"]["condition"], "DOOR_OPEN");
        assert_eq!(m["alarm"]["late"], true);
        let reported = m["episode"]["reported_at"].as_str().expect("reported late");
        let to = m["episode"]["to"].as_str().unwrap();
        assert!(reported > to, "reported at {reported}, after it was over at {to}");
    }
    let j = h.get("/api/v1/journal?site=MP-0411&condition=DOOR_OPEN").await;
    assert!(
        j.as_array().unwrap().iter().all(|r| r["notify"] == false),
        "the transitions themselves still page nobody: {j}"
    );
    assert_eq!(
        paged_by_condition(&h, "MP-0411").await,
        vec![("DOOR_OPEN".to_string(), true)]
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_without_briefs_sends_nothing_and_nothing_claims_paged() {
    let hook = Receiver::start().await;
    let notify = hook_only(&hook, "").replace("policy = \"p\"\n", "policy = \"p\"\nbriefs = false\n");
    assert!(notify.contains("briefs = false"));
    let (h, sims) = stations(
        "notify-nobrief",
        421,
        2,
        &notify,
        Scenario::PowerCut {
            duration: Duration::seconds(20),
        },
    )
    .await;
    let refs: Vec<&mizuban_sim::Handle> = sims.iter().collect();
    h.run(&refs, Duration::seconds(10)).await;
    h.run(&refs, Duration::seconds(15)).await;
    settle().await;
    h.run(&refs, Duration::seconds(40)).await;
    settle().await;
    settle().await;
    assert!(hook.all().is_empty(), "{:?}", hook.all());
    let all = h.get("/api/v1/notifications").await;
    assert!(all.as_array().unwrap().is_empty(), "{all}");
    for site in ["MP-0421", "MP-0422"] {
        assert_eq!(
            paged_by_condition(&h, site).await,
            vec![("POWER_FAIL".to_string(), false)],
            "{site}: no notification, so not paged"
        );
    }
    h.stop().await;
}

/// mizuban stopped while the loggers go on sending promptly: the broker holds
/// their messages, and they reach mizuban long after they were sent. That is
/// mizuban's delay, not the devices': judged by the devices' own send times
/// (`sent_at`), a dip still going on is paged as current, and a dip that was
/// over is journaled with the devices' timing, not as late data (and, being
/// over by the time mizuban could tell anyone, told as a brief). The
/// deployed binary, real time; `late_after_s` is 2 s so a short stop
/// outlasts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_held_by_the_broker_while_stopped_is_not_late_data() {
    let hook = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("t{}-held/", std::process::id());
    let rules = r#"
[[rule]]
id = "p-limits"
type = "hourly_limits"
applies_to = { kind = "dma" }
point = "p"
condition = "pressure"
unit = "MPa"
en = "Pressure"
ja = "配水圧"
high = [0.74, 0.74, 0.74, 0.74, 0.74, 0.74, 0.74, 0.74, 0.74, 0.74, 0.74, 0.74, 0.74, 0.74, 0.74, 0.74, 0.74, 0.74, 0.74, 0.74, 0.74, 0.74, 0.74, 0.74]
low = [0.15, 0.15, 0.15, 0.15, 0.15, 0.15, 0.15, 0.15, 0.15, 0.15, 0.15, 0.15, 0.15, 0.15, 0.15, 0.15, 0.15, 0.15, 0.15, 0.15, 0.15, 0.15, 0.15, 0.15]
deadband = 0.01
on_delay_s = 0
off_delay_s = 0
priority = "high"
"#;
    let cfg = write_config(
        dir.path(),
        "held",
        &prefix,
        &[dma("B01", "AKT-DMA-001"), dma("B02", "AKT-DMA-002")],
        Some(rules),
    );
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replacen("[service]\n", "[service]\nlate_after_s = 2\n", 1)).unwrap();
    let http = pin_http_port(&cfg);
    write_notify(
        &cfg,
        &format!(
            r#"
[settings]
group_wait_s = 0
group_by = ["site", "condition"]
[[webhook]]
name = "ops"
url = "{url}"
secret = "{SECRET}"
[[person]]
id = "chief"
name = "課長"
contact = [{{kind = "webhook", to = "ops"}}]
[[policy]]
id = "p"
repeat_minutes = 60
level = [{{after_minutes = 0, notify = ["person:chief"]}}]
[[route]]
policy = "p"
"#,
            url = hook.url()
        ),
    );
    // Up once, so the broker keeps a session for it; then stopped.
    let mut child = spawn_deployed(&cfg);
    wait_deployed_up(http).await;
    // Subscribed (the subscription follows the connection by a moment).
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();

    let dev = device_client("held-dev");
    let secs = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    // Each sample sent one second after it was logged.
    let publish = |block: &str, device: &str, seq: u64, t: chrono::DateTime<chrono::Utc>, p: f64| {
        let body = serde_json::json!({"schema": "dma-telemetry/1", "device_id": device, "block_id": block,
            "boot": 1, "seq": seq, "sent_at": secs(t + Duration::seconds(1)), "log_interval_s": 60,
            "upload_interval_s": 60, "backlog": 0, "units": {"q": "m3/h", "p": "MPa", "tot": "m3"},
            "samples": [{"t": secs(t), "q": 40.0, "p": p, "tot": 1000.0 + seq as f64}]});
        let topic = format!("{prefix}akita/v1/dma/{block}/{device}/telemetry");
        let dev = dev.clone();
        async move {
            dev.publish(
                topic,
                rumqttc::QoS::AtLeastOnce,
                false,
                serde_json::to_vec(&body).unwrap(),
            )
            .await
            .unwrap()
        }
    };
    let now = chrono::Timelike::with_nanosecond(&chrono::Utc::now(), 0).unwrap();
    let t1 = now - Duration::seconds(120);
    // B01: a dip from t1, over a minute later.
    publish("B01", "AKT-DMA-001", 1, t1, 0.10).await;
    publish("B01", "AKT-DMA-001", 2, t1 + Duration::seconds(60), 0.40).await;
    // B02: a dip that is still going on.
    let t2 = now - Duration::seconds(30);
    publish("B02", "AKT-DMA-002", 1, t2, 0.10).await;
    // Held for longer than late_after_s.
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    assert!(hook.all().is_empty(), "mizuban is stopped");

    let mut child = spawn_deployed(&cfg);
    wait_deployed_up(http).await;
    for _ in 0..100 {
        if hook.all().len() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        hook.all().len() >= 2,
        "the page for B02 and the brief for B01: {:?}",
        hook.all()
    );
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let got = hook.to("chief");
    let of = |site: &str| -> Vec<&Value> { got.iter().filter(|m| m["alarm"]["site"] == site).collect() };
    let b02 = of("B02");
    assert_eq!(b02.len(), 1, "{got:?}");
    assert_eq!(b02[0]["type"], "alarm.raised", "still active: paged");
    assert_eq!(b02[0]["alarm"]["late"], false);
    assert_eq!(b02[0]["alarm"]["raised_at"].as_str(), Some(secs(t2).as_str()));
    let b01 = of("B01");
    assert_eq!(b01.len(), 1, "{got:?}");
    assert_eq!(b01[0]["type"], "alarm.brief", "over before anyone could be told");
    assert_eq!(b01[0]["alarm"]["late"], false, "the device sent it promptly");

    let client = reqwest::Client::new();
    let j: Value = client
        .get(format!("http://127.0.0.1:{http}/api/v1/journal?site=B01"))
        .bearer_auth(VIEW_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rows = j.as_array().unwrap();
    let action = |a: &str| {
        rows.iter()
            .find(|r| r["action"] == a)
            .unwrap_or_else(|| panic!("{a} in {j}"))
    };
    assert_eq!(action("raise")["event_time"].as_str(), Some(secs(t1).as_str()), "{j}");
    assert_eq!(
        action("clear")["event_time"].as_str(),
        Some(secs(t1 + Duration::seconds(60)).as_str()),
        "{j}"
    );
    assert!(
        rows.iter().all(|r| r["late"] == false && r["action"] != "late"),
        "not late: {j}"
    );
    let health: Value = client
        .get(format!("http://127.0.0.1:{http}/api/v1/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        health["ingest_lag_s"].as_f64().is_some_and(|s| s >= 4.0),
        "mizuban's own lag is reported: {health}"
    );
    child.start_kill().unwrap();
    let _ = child.wait().await;
}
