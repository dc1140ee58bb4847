//! Replay agrees with the live service: simulated incidents played live
//! through the broker into mizuban, then `export` of that span and `replay`
//! of the capture with the same configuration must find the same alarm
//! occurrences (site, source, condition, raised_at, cleared_at and the
//! sequence of their changes) as the live journal holds. And replay is
//! deterministic, reads hand-written captures, and compares rule sets.

mod common;
use chrono::Duration;
use common::*;
use mizuban::config::Config;
use mizuban::replay::{self, Inputs};
use mizuban::store::InputFilter;
use mizuban_sim::Scenario;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// `(site, source, condition, raised_at)` -> (cleared_at, actions:to-state).
type Episodes = BTreeMap<(String, String, String, String), (Option<String>, Vec<String>)>;

/// Comm loss is raised at the master station's clock when a tick sees the
/// silence: in replay, the first second past the allowance; live, the first
/// tick after it on the harness's clock, which jumps five minutes at a time
/// and may jump again before a tick comes round on a busy machine. So a
/// comm loss is matched without its raise time, and that time is checked on
/// its own (`comm_raises_agree`); every other time is an event time, exact.
fn key_time(condition: &str, t: &str) -> String {
    if condition == "comm_loss" {
        "(station clock)".into()
    } else {
        t.to_string()
    }
}

/// Live comm-loss raises come at or after the replay's, by at most two
/// clock steps (the step that crossed the allowance, and one more if the
/// tick came late).
fn comm_raises_agree(live: &Value, replayed: &Value) {
    let raises = |alarms: &[Value]| -> Vec<(String, chrono::DateTime<chrono::FixedOffset>)> {
        let mut v: Vec<_> = alarms
            .iter()
            .filter(|a| a["condition"] == "comm_loss")
            .map(|a| {
                (
                    a["site"].as_str().unwrap().to_string(),
                    chrono::DateTime::parse_from_rfc3339(a["raised_at"].as_str().unwrap()).unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let (l, r) = (raises(live.as_array().unwrap()), raises(replayed.as_array().unwrap()));
    assert_eq!(l.len(), r.len(), "{l:?} {r:?}");
    assert!(!l.is_empty(), "the scenario raises comm loss");
    for ((ls, lt), (rs, rt)) in l.iter().zip(&r) {
        assert_eq!(ls, rs);
        let lag = (*lt - *rt).num_seconds();
        assert!((0..=600).contains(&lag), "{ls}: live {lt}, replay {rt}");
    }
}

async fn live_episodes(h: &Harness) -> Episodes {
    let j = h.get("/api/v1/journal?limit=10000").await;
    let mut rows: Vec<&Value> = j.as_array().unwrap().iter().filter(|r| r["alarm_id"] != "").collect();
    rows.sort_by_key(|r| r["seq"].as_i64().unwrap());
    let mut by_id: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for r in rows {
        by_id.entry(r["alarm_id"].as_str().unwrap().into()).or_default().push(r);
    }
    let mut out = Episodes::new();
    for (id, rows) in by_id {
        let a = h.get(&format!("/api/v1/alarms/{id}")).await;
        let a = if a.get("alarm").is_some() {
            a["alarm"].clone()
        } else {
            a
        };
        let cond = a["condition"].as_str().unwrap().to_string();
        out.insert(
            (
                a["site"].as_str().unwrap().into(),
                a["source"].as_str().unwrap().into(),
                cond.clone(),
                key_time(&cond, a["raised_at"].as_str().unwrap()),
            ),
            (
                a["cleared_at"].as_str().map(|c| key_time(&cond, c)),
                rows.iter()
                    .map(|r| format!("{}:{}", r["action"].as_str().unwrap(), r["to"].as_str().unwrap()))
                    .collect(),
            ),
        );
    }
    out
}

fn replayed_episodes(out: &Value, run: usize) -> Episodes {
    let mut e = Episodes::new();
    for a in out["runs"][run]["alarms"].as_array().unwrap() {
        let cond = a["condition"].as_str().unwrap().to_string();
        e.insert(
            (
                a["site"].as_str().unwrap().into(),
                a["source"].as_str().unwrap().into(),
                cond.clone(),
                key_time(&cond, a["raised_at"].as_str().unwrap()),
            ),
            (
                a["cleared_at"].as_str().map(|c| key_time(&cond, c)),
                a["changes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| format!("{}:{}", c["action"].as_str().unwrap(), c["to"].as_str().unwrap()))
                    .collect(),
            ),
        );
    }
    e
}

fn replay_json(cfg: &Arc<Config>, candidate: Option<Arc<Config>>, inputs: &Inputs) -> Value {
    let out = replay::replay(cfg.clone(), candidate, inputs, &()).expect("replay completes");
    serde_json::to_value(&out).unwrap()
}

fn export(cfg: &Config, from: chrono::DateTime<chrono::Utc>, to: chrono::DateTime<chrono::Utc>, out: &Path) -> u64 {
    replay::export(
        cfg,
        &InputFilter {
            from,
            to,
            sites: vec![],
        },
        out,
        to,
    )
    .expect("export")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_of_an_exported_span_finds_what_the_live_service_found() {
    let h = Harness::start(
        "replay-agree",
        &[
            dma("B01", "AKT-DMA-001"),
            mps("MP-0001", "AKT-MPN-0001"),
            mps("MP-0002", "AKT-MPN-0002"),
        ],
    )
    .await;
    let start = t0();
    let b01 = h.spawn_dma(quiet_dma("B01", "AKT-DMA-001"), start).await;
    let mp1 = h.spawn_mps(quiet_mps("MP-0001", "AKT-MPN-0001"), start).await;
    let mp2 = h.spawn_mps(quiet_mps("MP-0002", "AKT-MPN-0002"), start).await;
    let all = [&b01, &mp1, &mp2];
    h.run(&all, Duration::minutes(65)).await;
    // A burst in the block (reported in the next hourly upload: partly late).
    b01.inject(Scenario::PipeBurst {
        extra_m3h: 80.0,
        pressure_drop_mpa: 0.12,
        duration: Duration::hours(2),
    })
    .await
    .unwrap();
    // A pump failure, a power cut and an open door at the stations.
    mp1.inject(Scenario::PumpFail { pump: 1 }).await.unwrap();
    mp2.inject(Scenario::PowerCut {
        duration: Duration::minutes(20),
    })
    .await
    .unwrap();
    h.run(&all, Duration::minutes(30)).await;
    mp2.inject(Scenario::DoorOpen {
        duration: Duration::minutes(10),
    })
    .await
    .unwrap();
    mp1.inject(Scenario::Repair).await.unwrap();
    // Chattering level at MP-0001, a redelivered message, then a station
    // off the air long enough for comm loss, back with its backlog.
    mp1.inject(Scenario::Chattering {
        duration: Duration::minutes(15),
    })
    .await
    .unwrap();
    mp2.inject(Scenario::Redeliver).await.unwrap();
    h.run(&all, Duration::minutes(30)).await;
    // Off the air for longer than two missed hourly heartbeats and the grace.
    mp2.inject(Scenario::LteOutage {
        duration: Duration::hours(3),
    })
    .await
    .unwrap();
    h.run(&all, Duration::hours(4)).await;
    let end = start + Duration::hours(7);

    let live = live_episodes(&h).await;
    let conditions: std::collections::BTreeSet<&str> = live.keys().map(|k| k.2.as_str()).collect();
    for c in ["flow_high", "comm_loss", "POWER_FAIL"] {
        assert!(conditions.contains(c), "the scenarios raise {c} live: {conditions:?}");
    }
    assert!(live.len() >= 6, "{live:#?}");

    let cfg = Arc::new(Config::load(&h.config_path).unwrap());
    let capture = h.dir.path().join("span.jsonl.gz");
    let n = export(&cfg, start - Duration::minutes(1), end, &capture);
    assert!(n > 100, "{n} inputs exported");
    let out = replay_json(&cfg, None, &Inputs::Capture(capture.clone()));
    let replayed = replayed_episodes(&out, 0);
    assert_eq!(
        replayed, live,
        "replay of the exported span equals the live journal, occurrence for occurrence"
    );
    comm_raises_agree(&h.get("/api/v1/alarms?all=true").await, &out["runs"][0]["alarms"]);
    assert_eq!(out["capture"]["inputs"], n);
    // The readings the live service stored are the ones the replay counted.
    h.app.as_ref().unwrap().store.flush().await.unwrap();
    let stored = store_count(&cfg, "SELECT count(*) FROM readings");
    assert_eq!(out["runs"][0]["readings"], stored, "every stored reading, replayed");

    // The KPIs: the same computation over the live journal and the replay.
    let span = format!(
        "from={}&to={}",
        (start - Duration::minutes(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        end.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    let live_k = h.get(&format!("/api/v1/kpis?{span}")).await;
    let k = &out["runs"][0]["kpis"];
    assert!(live_k["annunciations"].as_u64().unwrap() >= 5, "{live_k:#}");
    for f in [
        "annunciations",
        "per_10min_peak",
        "flood_periods",
        "stale",
        "chattering",
        "priorities",
    ] {
        assert_eq!(live_k[f], k[f], "KPI {f}: live {live_k:#} replay {k:#}");
    }
    let actors = |v: &Value| {
        v["bad_actors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| format!("{}/{}={}", a["site"], a["condition"], a["count"]))
            .collect::<Vec<_>>()
    };
    assert_eq!(actors(&live_k), actors(k));
    let backwards = format!(
        "/api/v1/kpis?from={}&to={}",
        end.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    let (code, body) = h
        .request(reqwest::Method::GET, &backwards, Some(VIEW_TOKEN), None)
        .await;
    assert_eq!(
        (code, &body["annunciations"]),
        (200, &serde_json::json!(0)),
        "an inverted span has no alarms: {body}"
    );

    // Started through the API (as the board does), the same replay.
    let (code, started) = h
        .request(
            reqwest::Method::POST,
            "/api/v1/replays",
            Some(ENG_TOKEN),
            Some(serde_json::json!({"from": start - Duration::minutes(1), "to": end})),
        )
        .await;
    assert_eq!(code, 202, "{started}");
    let id = started["id"].as_str().unwrap().to_string();
    let mut job = started;
    for _ in 0..600 {
        if job["state"] != "running" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        job = h
            .request(
                reqwest::Method::GET,
                &format!("/api/v1/replays/{id}"),
                Some(ENG_TOKEN),
                None,
            )
            .await
            .1;
    }
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["progress"], 1.0);
    let (code, result) = h
        .request(
            reqwest::Method::GET,
            &format!("/api/v1/replays/{id}/result"),
            Some(ENG_TOKEN),
            None,
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(replayed_episodes(&result, 0), live, "the board's replay finds the same");

    // The service's own record gives the same, straight from its store.
    let own = replay_json(
        &cfg,
        None,
        &Inputs::Record {
            from: start - Duration::minutes(1),
            to: end,
        },
    );
    assert_eq!(replayed_episodes(&own, 0), live);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_capture_replays_to_the_same_bytes_and_a_wider_deadband_is_measured() {
    let h = Harness::start("replay-det", &[mps("MP-0001", "AKT-MPN-0001")]).await;
    let start = t0();
    let mp = h.spawn_mps(quiet_mps("MP-0001", "AKT-MPN-0001"), start).await;
    h.run(&[&mp], Duration::minutes(20)).await;
    mp.inject(Scenario::Chattering {
        duration: Duration::minutes(40),
    })
    .await
    .unwrap();
    h.run(&[&mp], Duration::hours(1)).await;
    // Someone on call for everything, so the replays page (nothing here is
    // sent: the live service runs on without it).
    write_notify(
        &h.config_path,
        r#"
[settings]
group_wait_s = 0
[[webhook]]
name = "ops"
url = "http://127.0.0.1:9/hook"
secret = "s3cret-for-tests"
[[person]]
id = "tanaka"
name = "Tanaka Jiro"
contact = [{kind = "webhook", to = "ops"}]
[[policy]]
id = "standard"
repeat_minutes = 120
level = [{after_minutes = 0, notify = ["person:tanaka"]}]
[[route]]
policy = "standard"
"#,
    );
    let cfg = Arc::new(Config::load(&h.config_path).unwrap());
    assert!(cfg.notify.is_some());
    let capture = h.dir.path().join("chatter.jsonl");
    export(&cfg, start - Duration::minutes(1), start + Duration::hours(2), &capture);

    let bytes = |inputs: &Inputs, cand: Option<Arc<Config>>| {
        serde_json::to_vec(&replay::replay(cfg.clone(), cand, inputs, &()).unwrap()).unwrap()
    };
    let inputs = Inputs::Capture(capture.clone());
    assert_eq!(bytes(&inputs, None), bytes(&inputs, None), "byte-identical JSON");

    // A candidate rules file: the configured rules plus a level rule with a
    // deadband too narrow, against the same with a wide one.
    let dir = h.dir.path();
    let rules = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/akita-rules.toml")).unwrap();
    let level = |deadband: f64, delay: u32| {
        format!(
            "{rules}\n[[rule]]\nid = \"wet-well-level\"\ntype = \"limits\"\napplies_to = {{ kind = \"pump_station\" }}\npoint = \"level\"\ncondition = \"level\"\nunit = \"cm\"\nen = \"Wet well level\"\nja = \"水位\"\nh = 130.0\ndeadband = {deadband}\non_delay_s = {delay}\noff_delay_s = {delay}\npriority = \"high\"\n"
        )
    };
    let narrow = dir.join("narrow.toml");
    let wide = dir.join("wide.toml");
    std::fs::write(&narrow, level(0.5, 0)).unwrap();
    std::fs::write(&wide, level(40.0, 120)).unwrap();
    let configured = Arc::new(Config::load_with_rules(&h.config_path, &narrow).unwrap());
    let candidate = Arc::new(Config::load_with_rules(&h.config_path, &wide).unwrap());
    let out = replay::replay(configured, Some(candidate), &inputs, &()).unwrap();
    let out = serde_json::to_value(&out).unwrap();
    let count = |run: usize| {
        out["runs"][run]["alarms"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["condition"].as_str().unwrap().starts_with("level"))
            .map(|a| 1 + a["reactivations"].as_u64().unwrap())
            .sum::<u64>()
    };
    let (narrow_n, wide_n) = (count(0), count(1));
    let ann = |run: usize| out["runs"][run]["kpis"]["annunciations"].as_u64().unwrap();
    assert!(ann(1) < ann(0), "the KPIs say by how much: {} vs {}", ann(1), ann(0));
    assert!(narrow_n >= 3, "the narrow deadband chatters: {narrow_n} activations");
    assert!(
        wide_n < narrow_n,
        "the wide deadband raises less: {wide_n} vs {narrow_n}"
    );
    let d = &out["diff"];
    assert!(
        !d["removed"].as_array().unwrap().is_empty() || !d["changed"].as_array().unwrap().is_empty(),
        "the diff shows the change: {d:#}"
    );
    // And fewer pages: the messages each run would have sent, and the KPI.
    let level_pages = |run: usize| {
        let r = &out["runs"][run];
        let level_ids: Vec<&str> = r["alarms"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["condition"].as_str().unwrap().starts_with("level"))
            .map(|a| a["id"].as_str().unwrap())
            .collect();
        r["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["alarm"].as_str().is_some_and(|id| level_ids.contains(&id)))
            .count()
    };
    let pages = |run: usize| out["runs"][run]["kpis"]["pages"].as_u64().unwrap();
    eprintln!(
        "level pages {} -> {}, all pages {} -> {}, activations {narrow_n} -> {wide_n}",
        level_pages(0),
        level_pages(1),
        pages(0),
        pages(1)
    );
    assert!(level_pages(0) >= 2, "the narrow deadband pages: {}", level_pages(0));
    assert!(
        level_pages(1) < level_pages(0),
        "the wide deadband pages less: {} vs {}",
        level_pages(1),
        level_pages(0)
    );
    assert!(pages(1) < pages(0), "the KPIs say so too: {} vs {}", pages(1), pages(0));
    h.stop().await;
}

#[tokio::test]
async fn a_hand_written_capture_replays_as_the_spec_says_with_malformed_payloads_counted() {
    // Not written by mizuban: the lines of interfaces.md, by hand.
    let dir = tempfile::tempdir().unwrap();
    let config_path = write_config_for(
        dir.path(),
        "replay-hand",
        "",
        &[dma("B17", "AKT-DMA-017")],
        None,
        ("127.0.0.1".into(), 1),
    );
    let cfg = Arc::new(Config::load(&config_path).unwrap());
    let b64 = |s: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(s)
    };
    let upload = |seq: u32, t0: &str, p: [f64; 3]| {
        format!(
            r#"{{"schema":"dma-telemetry/1","device_id":"AKT-DMA-017","block_id":"B17","boot":1,"seq":{seq},"sent_at":"{t0}","log_interval_s":300,"upload_interval_s":3600,"backlog":0,"units":{{"q":"m3/h","p":"MPa","tot":"m3"}},"samples":[{{"t":"{t0}","q":40,"p":{},"tot":1}},{{"t":"{}","q":40,"p":{},"tot":2}},{{"t":"{}","q":40,"p":{},"tot":3}}]}}"#,
            p[0],
            t0.replace(":00:00Z", ":05:00Z"),
            p[1],
            t0.replace(":00:00Z", ":10:00Z"),
            p[2]
        )
    };
    let topic = "akita/v1/dma/B17/AKT-DMA-017/telemetry";
    let lines = [
        r#"{"capture":"mizuban/1","from":"2026-12-01T03:00:00Z","to":"2026-12-01T08:00:00Z","created_at":"2026-12-01T08:00:00Z"}"#.to_string(),
        format!(r#"{{"arrived":"2026-12-01T03:10:02.125Z","source":"mqtt","topic":"{topic}","payload_b64":"{}"}}"#, b64(&upload(1, "2026-12-01T03:00:00Z", [0.40, 0.10, 0.10]))),
        // Malformed JSON, and a topic no profile knows: counted, not fatal.
        format!(r#"{{"arrived":"2026-12-01T03:20:00Z","source":"mqtt","topic":"{topic}","payload_b64":"{}"}}"#, b64("{\"schema\":")),
        format!(r#"{{"arrived":"2026-12-01T03:21:00Z","source":"mqtt","topic":"elsewhere/x","payload_b64":"{}"}}"#, b64("{}")),
        // The same upload again (a QoS 1 redelivery): a duplicate.
        format!(r#"{{"arrived":"2026-12-01T03:22:00Z","source":"mqtt","topic":"{topic}","payload_b64":"{}"}}"#, b64(&upload(1, "2026-12-01T03:00:00Z", [0.40, 0.10, 0.10]))),
        format!(r#"{{"arrived":"2026-12-01T04:10:02Z","source":"mqtt","topic":"{topic}","payload_b64":"{}"}}"#, b64(&upload(2, "2026-12-01T04:00:00Z", [0.40, 0.40, 0.40]))),
    ];
    let path = dir.path().join("hand.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let out = replay_json(&cfg, None, &Inputs::Capture(path));
    assert_eq!(out["capture"]["inputs"], 5);
    assert_eq!(out["capture"]["rejected"]["malformed"], 1, "{:#}", out["capture"]);
    assert_eq!(out["capture"]["rejected"]["unknown_topic"], 1);
    assert_eq!(out["runs"][0]["duplicate_messages"], 1);
    assert_eq!(
        out["runs"][0]["readings"], 18,
        "two uploads of three samples of q, p, tot"
    );
    let alarms = out["runs"][0]["alarms"].as_array().unwrap();
    let ll = alarms
        .iter()
        .find(|a| a["condition"] == "pressure_ll")
        .unwrap_or_else(|| panic!("{alarms:#?}"));
    assert_eq!(ll["site"], "B17");
    // The on-delay of 240 s runs in event time: from 03:05 the raise is at 03:10.
    assert_eq!(ll["raised_at"], "2026-12-01T03:10:00Z");
    assert!(ll["cleared_at"].is_string(), "back to normal by the second upload");
    // Nearly four hours without a message after 04:10: comm loss before the span ends.
    assert!(alarms.iter().any(|a| a["condition"] == "comm_loss"), "{alarms:#?}");
}

/// A webhook receiver that accepts everything (the live side's deliveries).
async fn accepting_hook() -> String {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().route("/hook", axum::routing::post(|| async { "ok" }));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://127.0.0.1:{port}/hook")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_runs_notification_routing_dry_and_pages_whom_live_paged() {
    let mut h = Harness::start("replay-notify", &[mps("MP-0005", "AKT-MPN-0005")]).await;
    let hook = accepting_hook().await;
    write_notify(
        &h.config_path,
        &format!(
            r#"
[settings]
group_wait_s = 30
[[webhook]]
name = "ops"
url = "{hook}"
secret = "s3cret-for-tests"
[[person]]
id = "tanaka"
name = "Tanaka Jiro"
contact = [{{kind = "webhook", to = "ops"}}]
[[person]]
id = "sato"
name = "佐藤 一郎"
contact = [{{kind = "webhook", to = "ops"}}]
[[policy]]
id = "standard"
repeat_minutes = 120
level = [{{after_minutes = 0, notify = ["person:tanaka"]}}, {{after_minutes = 15, notify = ["person:sato"]}}]
[[route]]
conditions = ["DOOR_OPEN"]
policy = "standard"
"#
        ),
    );
    h.restart().await;
    let start = t0();
    let mp = h.spawn_mps(quiet_mps("MP-0005", "AKT-MPN-0005"), start).await;
    h.run(&[&mp], Duration::minutes(10)).await;
    mp.inject(Scenario::DoorOpen {
        duration: Duration::minutes(40),
    })
    .await
    .unwrap();
    // Minute steps, so the live engine's timers fire close to their times.
    for _ in 0..50 {
        h.run(&[&mp], Duration::minutes(1)).await;
        tokio::time::sleep(std::time::Duration::from_millis(120)).await;
    }
    let live_sent = || async {
        let mut v: Vec<(String, String, u64)> = h
            .get("/api/v1/notifications?state=sent")
            .await
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .map(|n| {
                (
                    n["type"].as_str().unwrap().to_string(),
                    n["person"].as_str().unwrap().to_string(),
                    n["level"].as_u64().unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    };
    h.wait_until("live: raised, escalated, cleared to both", || async {
        live_sent().await.len() == 4
    })
    .await;
    let live = live_sent().await;
    assert!(live.contains(&("alarm.escalated".into(), "sato".into(), 2)), "{live:?}");

    let cfg = Arc::new(Config::load(&h.config_path).unwrap());
    assert!(cfg.notify.is_some());
    let capture = h.dir.path().join("door.jsonl");
    export(&cfg, start - Duration::minutes(1), start + Duration::hours(1), &capture);
    let out = replay::replay(cfg.clone(), None, &Inputs::Capture(capture), &()).unwrap();
    let run = &out.runs[0].run;
    let mut dry: Vec<(String, String, u64)> = run
        .notifications
        .iter()
        .map(|m| {
            (
                m.kind.to_string(),
                m.recipient.clone(),
                m.escalation_level.unwrap_or(0) as u64,
            )
        })
        .collect();
    dry.sort();
    assert_eq!(dry, live, "the dry run would have sent what the live service sent");
    // In time order: tanaka first, sato 15 minutes later.
    let raised = &run.notifications[0];
    let escalated = &run.notifications[1];
    assert_eq!(
        (raised.kind.as_str(), raised.recipient.as_str()),
        ("alarm.raised", "tanaka")
    );
    assert_eq!(escalated.kind.as_str(), "alarm.escalated");
    assert_eq!(escalated.at - raised.at, Duration::minutes(15));
    let said = replay::describe(raised, &run.alarms, cfg.service.utc_offset_hours);
    assert!(said.starts_with("would have paged tanaka by webhook at "), "{said}");
    assert!(said.contains("MP-0005 DOOR_OPEN"), "{said}");
    let said = replay::describe(escalated, &run.alarms, cfg.service.utc_offset_hours);
    assert!(said.starts_with("would have escalated to sato by webhook"), "{said}");
    // `paged` and the pages per night agree with the live service's.
    let door = run.alarms.iter().find(|o| o.alarm.condition == "DOOR_OPEN").unwrap();
    assert!(door.alarm.paged);
    let live_door = h.get("/api/v1/alarms?all=true&site=MP-0005").await;
    assert!(live_door
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["condition"] == "DOOR_OPEN" && a["paged"] == true));
    let k = serde_json::to_value(&out.runs[0].kpis).unwrap();
    assert_eq!(k["pages"], 4, "{k:#}");
    h.stop().await;
}
