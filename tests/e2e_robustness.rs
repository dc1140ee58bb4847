//! The outside world misbehaves: broken payloads, redelivered messages,
//! reboots, and a service restart in the middle of alarms.

mod common;
use chrono::Duration;
use common::*;
use mizuban_sim::Scenario;
use serde_json::json;

fn telemetry(seq: u64, samples: serde_json::Value) -> Vec<u8> {
    json!({"schema":"dma-telemetry/1","device_id":"AKT-DMA-001","block_id":"B01","boot":3,"seq":seq,
        "sent_at":"2025-01-21T01:00:07Z","log_interval_s":300,"upload_interval_s":3600,"backlog":0,
        "units":{"q":"m3/h","p":"MPa","tot":"m3"},"samples":samples,
        "diag":{"batt_v":3.52,"batt_pct":71,"rssi_dbm":-87,"temp_c":3.5}})
    .to_string()
    .into_bytes()
}

fn sample(min: i64, q: serde_json::Value, p: serde_json::Value) -> serde_json::Value {
    let t = t0() + Duration::minutes(min);
    json!({"t": t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true), "q": q, "p": p, "tot": 1000.0 + min as f64})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_payloads_are_counted_by_reason_and_never_cost_good_samples() {
    let h = Harness::start("bad-input", &[dma("B01", "AKT-DMA-001"), dma("B02", "AKT-DMA-002")]).await;
    h.clock.advance(Duration::hours(1));
    // The "device" here is a raw MQTT client publishing what the field can send.
    let dev = h.spawn_dma(quiet_dma("B01", "AKT-DMA-001"), t0()).await;
    let tele = "akita/v1/dma/B01/AKT-DMA-001/telemetry";
    let good = |seq: u64, from: i64| {
        telemetry(
            seq,
            json!([
                sample(from, json!(40.0), json!(0.41)),
                sample(from + 5, json!(41.0), json!(0.42))
            ]),
        )
    };
    let oversized = {
        let big: Vec<serde_json::Value> = (0..6000).map(|i| sample(i, json!(40.0), json!(0.41))).collect();
        telemetry(900, json!(big))
    };
    assert!(oversized.len() > 256 * 1024);
    let mut no_boot: serde_json::Value = serde_json::from_slice(&good(901, 0)).unwrap();
    no_boot.as_object_mut().unwrap().remove("boot");
    let corpus: Vec<(&str, Vec<u8>, &str)> = vec![
        (tele, br#"{"schema":"dma-telemetry/1","device_id":"AKT-DMA-001","sam"#.to_vec(), "malformed"),
        (tele, vec![0xff, 0xfe, b'{', b'}'], "malformed"),
        (tele, b"[1,2,3]".to_vec(), "malformed"),
        (tele, br#"{"schema":"dma-telemetry/9","device_id":"AKT-DMA-001","boot":3,"seq":1}"#.to_vec(), "unknown_schema"),
        (tele, oversized, "oversized"),
        ("akita/v1/dma/B01/AKT-DMA-001/status", telemetry(3, json!([])), "unknown_schema"),
        ("akita/v1/dma/B99/AKT-DMA-099/telemetry", telemetry(1, json!([])), "site_mismatch"),
        ("akita/v1/dma/B02/AKT-DMA-002/telemetry", String::from_utf8(telemetry(2, json!([]))).unwrap().replace("\"B01\"", "\"B02\"").into_bytes(), "unknown_device"),
        (tele, serde_json::to_vec(&no_boot).unwrap(), "missing_field"),
        (tele, br#"{"schema":"dma-telemetry/1","device_id":"AKT-DMA-001","block_id":"B01","boot":3,"seq":902,"samples":"none"}"#.to_vec(), "missing_field"),
    ];
    let mut expected_reasons: std::collections::BTreeMap<&str, usize> = Default::default();
    let mut seq = 10;
    let mut good_samples = 0;
    for (i, (topic, payload, reason)) in corpus.iter().enumerate() {
        dev.publish_raw(topic, payload).await.unwrap();
        *expected_reasons.entry(reason).or_default() += 1;
        // A good message right behind every bad one.
        dev.publish_raw(tele, &good(seq, i as i64 * 10)).await.unwrap();
        seq += 1;
        good_samples += 2;
    }
    // Bad samples inside a good message: the good ones beside them are kept.
    let mixed = telemetry(
        seq,
        json!([
            sample(200, json!("NaN"), json!(0.41)),
            sample(205, json!(40.5), json!(null)),
            sample(210, json!(40.7), json!(99.0)),
            {"t": "yesterday", "q": 1.0, "p": 0.4},
            sample(215, json!(true), json!(0.43)),
            sample(220, json!(41.0), json!(0.44)),
        ]),
    );
    dev.publish_raw(tele, &mixed).await.unwrap();
    // Wait until every message has been handled: good ones by the pipeline, bad ones by quarantine.
    let reasons = [
        "malformed",
        "unknown_schema",
        "oversized",
        "unknown_topic",
        "site_mismatch",
        "unknown_device",
        "missing_field",
    ];
    h.wait_until("all handled", || async {
        let mut quarantined = 0.0;
        for r in reasons {
            quarantined += h
                .metric(&format!("mizuban_quarantined_messages_total{{reason=\"{r}\"}}"))
                .await;
        }
        // Good messages + the mixed one + the unknown device (rejected by its shard).
        quarantined >= corpus.len() as f64 && h.metric("mizuban_messages_total").await >= (corpus.len() + 2) as f64
    })
    .await;
    h.app.as_ref().unwrap().store.flush().await.unwrap();
    for (reason, n) in &expected_reasons {
        assert_eq!(
            h.metric(&format!("mizuban_quarantined_messages_total{{reason=\"{reason}\"}}"))
                .await,
            *n as f64,
            "{reason}"
        );
    }
    // Every good sample stored: q from the good messages plus the good ones of the mixed message.
    let q = h
        .get("/api/v1/points/B01.q/readings?from=2025-01-20T00:00:00Z&to=2025-01-22T00:00:00Z")
        .await;
    let q = q.as_array().unwrap();
    let good_q = q.iter().filter(|r| r["quality"] == "good").count();
    assert_eq!(good_q, good_samples + 3, "{q:?}");
    let bad_q: Vec<&serde_json::Value> = q.iter().filter(|r| r["quality"] == "bad").collect();
    assert_eq!(bad_q.len(), 2, "NaN and true are stored as bad q readings: {bad_q:?}");
    let p = h
        .get("/api/v1/points/B01.p/readings?from=2025-01-21T03:00:00Z&to=2025-01-21T04:00:00Z")
        .await;
    let qualities: Vec<&str> = p
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["quality"].as_str().unwrap())
        .collect();
    assert_eq!(
        qualities,
        vec!["good", "bad", "bad", "good", "good"],
        "null and 99 MPa are bad; the rest good"
    );
    for (reason, n) in [
        ("not_a_number", 2.0),
        ("out_of_range", 1.0),
        ("bad_timestamp", 1.0),
        ("wrong_type", 1.0),
    ] {
        assert_eq!(
            h.metric(&format!("mizuban_sample_problems_total{{reason=\"{reason}\"}}"))
                .await,
            n,
            "{reason}"
        );
    }
    // The engineer can see what was rejected and why.
    let qn = h.get("/api/v1/quarantine?limit=100").await;
    let reasons: Vec<&str> = qn
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert!(
        reasons.contains(&"oversized") && reasons.contains(&"unknown_schema"),
        "{reasons:?}"
    );
    let over = qn
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["reason"] == "oversized")
        .unwrap();
    assert!(over["payload"].as_str().unwrap().len() <= 2048);
    assert_eq!(h.occurrences().await, Vec::<String>::new(), "bad data raises no alarm");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_messages_and_a_reboot_in_one_stream() {
    let h = Harness::start("redeliver", &[mps("MP-0041", "AKT-MPN-0041")]).await;
    let sim = h.spawn_mps(quiet_mps("MP-0041", "AKT-MPN-0041"), t0()).await;
    h.run(&[&sim], Duration::minutes(30)).await;
    let before = h.metric("mizuban_duplicate_messages_total").await;
    // Three byte-identical redeliveries, a reboot (boot + 1, seq from 0) and more redeliveries.
    for _ in 0..3 {
        sim.inject(Scenario::Redeliver).await.unwrap();
        h.run(&[&sim], Duration::minutes(1)).await;
    }
    sim.inject(Scenario::Reboot).await.unwrap();
    h.run(&[&sim], Duration::minutes(10)).await;
    sim.inject(Scenario::DoorOpen {
        duration: Duration::minutes(5),
    })
    .await
    .unwrap();
    h.run(&[&sim], Duration::minutes(1)).await;
    sim.inject(Scenario::Redeliver).await.unwrap();
    h.run(&[&sim], Duration::minutes(10)).await;
    h.wait_until("duplicates counted", || async {
        h.metric("mizuban_duplicate_messages_total").await - before >= 4.0
    })
    .await;
    assert_eq!(h.metric("mizuban_duplicate_messages_total").await - before, 4.0);
    // Messages after the reboot (seq 0, 1, ...) were all accepted: the level kept being stored.
    let lvl = h
        .get("/api/v1/points/MP-0041.level/readings?from=2025-01-21T00:35:00Z&to=2025-01-21T01:00:00Z")
        .await;
    assert!(lvl.as_array().unwrap().len() >= 2, "post-reboot data stored: {lvl}");
    let sites = h.get("/api/v1/sites").await;
    assert_eq!(sites[0]["id"], "MP-0041");
    // One door alarm, raised and cleared once, despite the redelivered event.
    assert_eq!(h.occurrences().await, vec!["MP-0041/DOOR_OPEN"]);
    assert_eq!(
        h.actions("MP-0041", "DOOR_OPEN").await,
        vec!["raise:unack_active", "clear:unack_rtn"]
    );
    h.stop().await;
}

const RESTART_RULES: &str = r#"
[[rule]]
id = "p-low"
type = "limits"
applies_to = { kind = "dma" }
point = "p"
condition = "pressure"
unit = "MPa"
en = "Pressure"
ja = "配水圧"
l = 0.18
on_delay_s = 600
priorities = { l = "high" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_alarms_states_and_delay_timers_without_new_pages() {
    let mut h = Harness::start_with_rules(
        "restart",
        &[dma("B01", "AKT-DMA-001"), mps("MP-0051", "AKT-MPN-0051")],
        Some(RESTART_RULES),
    )
    .await;
    let logger = h.spawn_dma(quiet_dma("B01", "AKT-DMA-001"), t0()).await;
    let station = h.spawn_mps(quiet_mps("MP-0051", "AKT-MPN-0051"), t0()).await;
    h.run(&[&logger, &station], Duration::minutes(30)).await;
    station.inject(Scenario::BothPumpsFail).await.unwrap();
    h.run(&[&logger, &station], Duration::minutes(25)).await;
    // The regulator sticks just before the hourly upload: the first low sample
    // (01:00) starts the 10-minute on-delay, which is still running at restart.
    logger.inject(Scenario::RegulatorStuckClosed).await.unwrap();
    h.run(&[&logger, &station], Duration::minutes(5) + Duration::seconds(30))
        .await;
    let ids = open_alarms(&h).await;
    assert!(
        ids.iter().any(|i| i.1 == "HH_LEVEL" && i.2 == "unack_active"),
        "{ids:?}"
    );
    assert!(
        !ids.iter().any(|i| i.1 == "pressure_l"),
        "the delay timer is still running: {ids:?}"
    );
    let pages_before = h
        .get("/api/v1/journal?limit=10000")
        .await
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["notify"] == true)
        .count();

    h.restart().await;
    let after = open_alarms(&h).await;
    assert_eq!(after, ids, "same alarms, same ids, same states");
    // The station keeps reporting the same conditions: nothing is raised again.
    // The logger's next hourly upload (02:00) completes the pressure timer.
    h.run(&[&logger, &station], Duration::minutes(60)).await;
    let journal = h.get("/api/v1/journal?limit=10000").await;
    let new_pages: Vec<String> = journal
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["notify"] == true)
        .map(|r| format!("{}:{}", r["condition"].as_str().unwrap(), r["action"].as_str().unwrap()))
        .collect();
    assert_eq!(
        new_pages.len() - pages_before,
        1,
        "only the pressure alarm whose timer completed: {new_pages:?}"
    );
    assert_eq!(new_pages[0], "pressure_l:raise");
    // The timer resumed: the low started at 01:00, so it is raised at 01:10,
    // not 01:15 as a fresh timer after the restart would give.
    let p = h.get("/api/v1/alarms?site=B01").await;
    let p = p
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["condition"] == "pressure_l")
        .unwrap()
        .clone();
    assert_eq!(p["raised_at"], "2025-01-21T01:10:00Z", "{p}");
    h.stop().await;
}

/// `(id, condition, state)` of every alarm operators must see.
async fn open_alarms(h: &Harness) -> Vec<(String, String, String)> {
    let v = h.get("/api/v1/alarms").await;
    v.as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let f = |k: &str| a[k].as_str().unwrap().to_string();
            (f("id"), f("condition"), f("state"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_sent_while_the_service_is_down_are_delivered_after() {
    // A persistent session: the broker keeps QoS 1 messages for mizuban while
    // it is stopped, and mizuban acknowledges nothing it has not stored.
    let mut h = Harness::start("downtime", &[mps("MP-0071", "AKT-MPN-0071")]).await;
    let sim = h.spawn_mps(quiet_mps("MP-0071", "AKT-MPN-0071"), t0()).await;
    h.run(&[&sim], Duration::minutes(10)).await;
    h.stop_service().await;
    let sent_before = sim.sent();
    h.clock.advance(Duration::minutes(30));
    sim.advance(Duration::minutes(20)).await.unwrap();
    sim.inject(Scenario::DoorOpen {
        duration: Duration::hours(2),
    })
    .await
    .unwrap();
    sim.advance(Duration::minutes(10)).await.unwrap();
    assert!(sim.sent() > sent_before + 2, "the station reported while we were down");
    h.start_service().await;
    h.wait_messages(sim.sent() as f64).await;
    assert_eq!(h.occurrences().await, vec!["MP-0071/DOOR_OPEN"]);
    let lvl = h
        .get("/api/v1/points/MP-0071.level/readings?from=2025-01-21T00:10:30Z&to=2025-01-21T00:41:00Z")
        .await;
    assert!(lvl.as_array().unwrap().len() >= 3, "readings from the downtime: {lvl}");
    h.stop().await;
}
