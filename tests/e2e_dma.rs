//! End to end: simulated distribution-block loggers (hourly batches) over a
//! real MQTT broker -> mizuban -> exactly the alarms expected.

mod common;
use chrono::Duration;
use common::*;
use mizuban_sim::Scenario;

async fn block(name: &str) -> (Harness, mizuban_sim::Handle) {
    let h = Harness::start(name, &[dma("B01", "AKT-DMA-001")]).await;
    let sim = h.spawn_dma(quiet_dma("B01", "AKT-DMA-001"), t0()).await;
    (h, sim)
}

fn journal_notified(j: &serde_json::Value) -> Vec<String> {
    let mut v: Vec<(i64, String)> = j
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["notify"] == true)
        .map(|r| {
            (
                r["seq"].as_i64().unwrap(),
                format!("{}:{}", r["condition"].as_str().unwrap(), r["action"].as_str().unwrap()),
            )
        })
        .collect();
    v.sort();
    v.into_iter().map(|x| x.1).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_block_for_a_day_raises_nothing() {
    let (h, sim) = block("dma-healthy").await;
    h.run(&[&sim], Duration::hours(24)).await;
    assert_eq!(h.occurrences().await, Vec::<String>::new());
    // 5-minute samples of q, p, tot for 23 uploaded hours, each with event and arrival time.
    let q = h
        .get("/api/v1/points/B01.q/readings?from=2025-01-20T00:00:00Z&to=2025-01-23T00:00:00Z")
        .await;
    let q = q.as_array().unwrap();
    assert_eq!(q.len(), 24 * 12, "one reading per 5 minutes");
    assert!(q.iter().all(|r| r["quality"] == "good"));

    // The same span in pages of 100: each page names the next in a `Link`
    // header until the span is exhausted, and together they are the whole
    // span in order, nothing twice, nothing silently cut off.
    let mut next =
        Some("/api/v1/points/B01.q/readings?from=2025-01-20T00:00:00Z&to=2025-01-23T00:00:00Z&limit=100".to_string());
    let (mut paged, mut sizes) = (Vec::new(), Vec::new());
    while let Some(path) = next.take() {
        let r = h.get_response(&path).await;
        next = r.headers().get("link").map(|l| {
            let l = l.to_str().unwrap();
            assert!(l.ends_with(">; rel=\"next\""), "{l}");
            l.trim_start_matches('<').split_once('>').unwrap().0.to_string()
        });
        let page: Vec<serde_json::Value> = r.json().await.unwrap();
        sizes.push(page.len());
        paged.extend(page);
        assert!(sizes.len() < 10, "paging ends");
    }
    assert_eq!(sizes, vec![100, 100, 88]);
    assert_eq!(&paged, q, "the pages are the span, in order");
    let whole = h
        .get_response("/api/v1/points/B01.q/readings?from=2025-01-20T00:00:00Z&to=2025-01-23T00:00:00Z")
        .await;
    assert!(whole.headers().get("link").is_none(), "one page holds it all: no next");

    // The hourly trend of the same day: one bucket per hour, each the mean,
    // min, max and count of that hour's readings as served raw, and it pages
    // at its own resolution.
    let raw: Vec<(String, f64)> = q
        .iter()
        .map(|r| (r["t"].as_str().unwrap().to_string(), r["value"].as_f64().unwrap()))
        .collect();
    let hours = h
        .get("/api/v1/points/B01.q/readings?from=2025-01-20T00:00:00Z&to=2025-01-23T00:00:00Z&resolution=1h")
        .await;
    let hours = hours.as_array().unwrap();
    let mut distinct: Vec<&str> = raw.iter().map(|(t, _)| &t[..13]).collect();
    distinct.dedup();
    assert_eq!(hours.len(), distinct.len(), "one bucket per hour with readings");
    assert!(hours.len() >= 24);
    for b in hours {
        let hour = &b["t"].as_str().unwrap()[..13];
        let vals: Vec<f64> = raw
            .iter()
            .filter(|(t, _)| t.starts_with(hour))
            .map(|(_, v)| *v)
            .collect();
        assert_eq!(b["count"], vals.len(), "{b}");
        let mean = vals.iter().sum::<f64>() / vals.len() as f64;
        assert!((b["value"].as_f64().unwrap() - mean).abs() < 1e-9, "{b} vs {mean}");
        assert_eq!(
            b["min"].as_f64().unwrap(),
            vals.iter().cloned().fold(f64::INFINITY, f64::min)
        );
        assert_eq!(
            b["max"].as_f64().unwrap(),
            vals.iter().cloned().fold(f64::NEG_INFINITY, f64::max)
        );
    }
    let first = h
        .get_response(
            "/api/v1/points/B01.q/readings?from=2025-01-20T00:00:00Z&to=2025-01-23T00:00:00Z&resolution=1h&limit=10",
        )
        .await;
    let link = first.headers().get("link").unwrap().to_str().unwrap().to_string();
    assert!(link.contains("&resolution=1h>"), "{link}");
    let minutes = h
        .get("/api/v1/points/B01.q/readings?from=2025-01-20T00:00:00Z&to=2025-01-23T00:00:00Z&resolution=1m")
        .await;
    assert_eq!(
        minutes.as_array().unwrap().len(),
        24 * 12,
        "a 5-minute reading is alone in its minute"
    );
    let (status, _) = h
        .request(
            reqwest::Method::GET,
            "/api/v1/points/B01.q/readings?resolution=5m",
            Some(VIEW_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 400, "an unknown resolution is refused, not read as raw");

    let sites = h.get("/api/v1/sites").await;
    assert_eq!(sites[0]["status"], "ok");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipe_burst_pages_high_flow_and_keeps_the_jump_for_review() {
    let (h, sim) = block("dma-burst").await;
    h.run(&[&sim], Duration::minutes(62)).await;
    sim.inject(Scenario::PipeBurst {
        extra_m3h: 80.0,
        pressure_drop_mpa: 0.12,
        duration: Duration::hours(2),
    })
    .await
    .unwrap();
    h.run(&[&sim], Duration::hours(4)).await;
    assert_eq!(h.occurrences().await, vec!["B01/flow_high", "B01/flow_jump_rise"]);
    assert_eq!(
        h.actions("B01", "flow_high").await,
        vec!["raise:unack_active", "clear:unack_rtn"]
    );
    // The jump was over within the hourly batch that reported it: late, for review.
    assert_eq!(
        h.actions("B01", "flow_jump_rise").await,
        vec!["raise:unack_active", "clear:unack_rtn", "late:unack_rtn"]
    );
    let j = h.get("/api/v1/journal?site=B01").await;
    assert_eq!(journal_notified(&j), vec!["flow_high:raise", "flow_high:clear"]);
    let a = h.get("/api/v1/alarms?site=B01").await;
    let high = a
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["condition"] == "flow_high")
        .unwrap();
    assert_eq!(high["source"], "B01.q");
    assert_eq!(high["priority"], "high");
    assert!(high["limit"].as_f64().unwrap() > 100.0, "{high}");
    // raised_at is the sample's event time; detected_at when the batch arrived.
    let raised = chrono::DateTime::parse_from_rfc3339(high["raised_at"].as_str().unwrap()).unwrap();
    let detected = chrono::DateTime::parse_from_rfc3339(high["detected_at"].as_str().unwrap()).unwrap();
    assert!(detected > raised, "{high}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regulator_stuck_closed_low_and_low_low_pressure() {
    let (h, sim) = block("dma-closed").await;
    h.run(&[&sim], Duration::minutes(5)).await;
    sim.inject(Scenario::RegulatorStuckClosed).await.unwrap();
    h.run(&[&sim], Duration::minutes(56)).await;
    assert_eq!(
        h.occurrences().await,
        vec!["B01/pressure_l", "B01/pressure_ll", "B01/pressure_low"]
    );
    let a = h.get("/api/v1/alarms?site=B01").await;
    let prios: Vec<(&str, &str)> = a
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["condition"].as_str().unwrap(), a["priority"].as_str().unwrap()))
        .collect();
    assert_eq!(
        prios[0],
        ("pressure_ll", "critical"),
        "highest priority first: {prios:?}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regulator_stuck_open_high_pressure() {
    let (h, sim) = block("dma-open").await;
    h.run(&[&sim], Duration::minutes(5)).await;
    sim.inject(Scenario::RegulatorStuckOpen).await.unwrap();
    h.run(&[&sim], Duration::minutes(56)).await;
    assert_eq!(h.occurrences().await, vec!["B01/pressure_h"]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_snap_thaw_raises_night_flow_once_per_night() {
    let (h, sim) = block("dma-thaw").await;
    // From 12:00 JST: the night's flow is 2.5x; daytime unchanged.
    h.run(&[&sim], Duration::hours(3)).await;
    sim.inject(Scenario::ColdSnapThaw {
        factor: 2.5,
        duration: Duration::hours(30),
    })
    .await
    .unwrap();
    h.run(&[&sim], Duration::hours(24)).await;
    assert_eq!(h.occurrences().await, vec!["B01/flow_high"]);
    assert_eq!(
        h.actions("B01", "flow_high").await,
        vec!["raise:unack_active", "clear:unack_rtn"]
    );
    let a = &h.get("/api/v1/alarms?site=B01").await[0];
    let raised = chrono::DateTime::parse_from_rfc3339(a["raised_at"].as_str().unwrap()).unwrap();
    let jst_hour = (raised + Duration::hours(9)).format("%H").to_string();
    assert!(
        ["22", "23", "00"].contains(&jst_hour.as_str()),
        "raised at night: {raised}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chattering_pressure_is_one_occurrence_per_condition() {
    let (h, sim) = block("dma-chatter").await;
    h.run(&[&sim], Duration::minutes(5)).await;
    sim.inject(Scenario::Chattering {
        duration: Duration::minutes(40),
    })
    .await
    .unwrap();
    h.run(&[&sim], Duration::minutes(56)).await;
    assert_eq!(h.occurrences().await, vec!["B01/pressure_l", "B01/pressure_low"]);
    let a = h.get("/api/v1/alarms?site=B01").await;
    let dev = a
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["condition"] == "pressure_low")
        .unwrap();
    assert!(
        dev["reactivations"].as_u64().unwrap() >= 3,
        "the device chattered: {dev}"
    );
    let j = h.get("/api/v1/journal?site=B01&condition=pressure_low").await;
    assert!(journal_notified(&j).len() <= 2, "{j}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logger_sudden_death_is_one_comm_loss() {
    let (h, sim) = block("dma-dead").await;
    h.run(&[&sim], Duration::minutes(61)).await;
    sim.inject(Scenario::SuddenDeath).await.unwrap();
    // Lost after 2 x 3600 s + 600 s grace from the last message (at 01:00).
    h.run(&[&sim], Duration::minutes(125)).await;
    assert_eq!(
        h.occurrences().await,
        Vec::<String>::new(),
        "not yet: 2 h 5 min of silence"
    );
    h.run(&[&sim], Duration::minutes(10)).await;
    h.wait_until("comm loss", || async { h.occurrences().await == vec!["B01/comm_loss"] })
        .await;
    let s = h.get("/api/v1/sites").await;
    assert_eq!(s[0]["status"], "comm_loss");
    h.run(&[&sim], Duration::hours(3)).await;
    assert_eq!(
        h.actions("B01", "comm_loss").await,
        vec!["raise:unack_active"],
        "one alarm, not one per check"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_reset_samples_are_counted_not_stored_and_raise_nothing() {
    let (h, sim) = block("dma-clock").await;
    h.run(&[&sim], Duration::minutes(61)).await;
    sim.inject(Scenario::ClockReset).await.unwrap();
    h.run(&[&sim], Duration::minutes(60)).await;
    assert_eq!(h.occurrences().await, Vec::<String>::new());
    assert!(
        h.metric("mizuban_sample_problems_total{reason=\"implausible_time\"}")
            .await
            >= 12.0
    );
    let q = h
        .get("/api/v1/points/B01.q/readings?from=1999-01-01T00:00:00Z&to=2001-01-01T00:00:00Z")
        .await;
    assert_eq!(q.as_array().unwrap().len(), 0, "nothing stored at 2000-01-01");
    let quarantine = h.get("/api/v1/quarantine").await;
    assert!(quarantine
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["reason"] == "implausible_time" && e["whole"] == false));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regulator_hunting_and_clock_steps_raise_nothing() {
    let (h, sim) = block("dma-hunt").await;
    h.run(&[&sim], Duration::minutes(61)).await;
    sim.inject(Scenario::RegulatorHunting).await.unwrap();
    sim.inject(Scenario::ClockStep { secs: 300 }).await.unwrap();
    h.run(&[&sim], Duration::hours(1)).await;
    sim.inject(Scenario::ClockStep { secs: -600 }).await.unwrap();
    sim.inject(Scenario::ClockDrift { s_per_day: 30.0 }).await.unwrap();
    h.run(&[&sim], Duration::hours(2)).await;
    assert_eq!(
        h.occurrences().await,
        Vec::<String>::new(),
        "±0.05 MPa hunting stays inside the limits"
    );
    // The step back put samples on times already stored (dropped as duplicate
    // samples by (point, time)) or behind the newest (history, not live rules).
    let dup = h.metric("mizuban_duplicate_samples_total").await;
    let late = h.metric("mizuban_late_samples_total").await;
    assert!(dup + late > 0.0, "dup {dup} late {late}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn battery_drain_stretches_uploads_then_the_logger_goes_quiet() {
    let h = Harness::start("dma-batt", &[dma("B01", "AKT-DMA-001")]).await;
    let mut o = quiet_dma("B01", "AKT-DMA-001");
    o.battery_pct = 40.0;
    let sim = h.spawn_dma(o, t0()).await;
    h.run(&[&sim], Duration::minutes(61)).await;
    sim.inject(Scenario::BatteryDrain { pct_per_hour: 5.0 }).await.unwrap();
    h.run(&[&sim], Duration::hours(20)).await;
    // Battery low from the rule (3.3 V) and from the logger itself, then silence:
    // one comm loss, which suppresses the battery alarms of that logger.
    assert_eq!(
        h.occurrences().await,
        vec!["B01/batt_low", "B01/battery_l", "B01/comm_loss"]
    );
    let a = h.get("/api/v1/alarms?site=B01&all=true").await;
    let states: std::collections::BTreeMap<String, String> = a
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["condition"].as_str().unwrap().to_string(),
                a["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(states["comm_loss"], "unack_active");
    assert_eq!(states["battery_l"], "suppressed");
    // The logger told the station it would report less often; comm loss waited for that.
    let j = h.get("/api/v1/journal?site=B01&condition=comm_loss").await;
    let raised = j.as_array().unwrap().iter().find(|r| r["action"] == "raise").unwrap()["at"]
        .as_str()
        .unwrap()
        .to_string();
    let last_upload = h
        .get("/api/v1/points/B01.batt_v/readings?from=2025-01-20T00:00:00Z&to=2025-01-23T00:00:00Z")
        .await;
    let last = last_upload.as_array().unwrap().last().unwrap()["t"]
        .as_str()
        .unwrap()
        .to_string();
    let gap =
        chrono::DateTime::parse_from_rfc3339(&raised).unwrap() - chrono::DateTime::parse_from_rfc3339(&last).unwrap();
    assert!(
        gap > Duration::hours(4),
        "stretched interval honoured: last upload {last}, comm loss {raised}"
    );
    h.stop().await;
}
