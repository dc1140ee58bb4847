//! End to end over Modbus TCP: the pump-station controller simulator (a real
//! tokio-modbus server on loopback) polled by mizuban's collector.

mod common;
use chrono::Duration;
use common::*;
use mizuban_sim::modbus::{Controllers, Fault};
use mizuban_sim::Scenario;
use tokio_modbus::prelude::ExceptionCode;

async fn polls(h: &Harness, device: &str) -> f64 {
    h.metric(&format!("mizuban_modbus_polls_total{{device=\"{device}\"}}"))
        .await
        - h.metric(&format!(
            "mizuban_modbus_poll_errors_total{{device=\"{device}\",kind=\"timeout\"}}"
        ))
        .await
}

/// Moves the station physics and the master clock in 20 s steps, each
/// followed by fresh polls of `devices` (so the master never runs ahead of
/// what it has polled: the profile declares a controller lost after 30 s).
async fn run(h: &Harness, c: &Controllers, devices: &[&str], d: Duration) {
    let step = Duration::seconds(20);
    let mut left = d;
    while left > Duration::zero() {
        let s = left.min(step);
        h.clock.advance(s);
        c.step_to(h.clock.now_for_test());
        left -= s;
        for dev in devices {
            let before = polls(h, dev).await;
            h.wait_until("fresh polls", || async { polls(h, dev).await >= before + 2.0 })
                .await;
        }
    }
    h.app.as_ref().unwrap().store.flush().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_is_polled_decoded_and_alarms_from_its_inputs() {
    let c = Controllers::start(0, vec![(1, quiet_mps("MP-0101", "AKT-MPC-0101"))], t0())
        .await
        .unwrap();
    let h = Harness::start(
        "mb-basic",
        &[controller("MP-0101", "AKT-MPC-0101", c.addr.port(), 1, 50, 500)],
    )
    .await;
    run(&h, &c, &["AKT-MPC-0101"], Duration::minutes(20)).await;
    assert_eq!(h.occurrences().await, Vec::<String>::new());
    let s = h.get("/api/v1/sites/MP-0101").await;
    let v = &s["status"]["values"];
    assert!(v["level"]["value"].as_f64().unwrap() > 0.0, "{v}");
    assert!(
        v["p1_run_min"]["value"].as_f64().unwrap() > 65_536.0,
        "u32 high word first: {v}"
    );
    assert_eq!(v["panel_temp"]["value"], 12.5);
    c.inject(1, Scenario::BothPumpsFail);
    run(&h, &c, &["AKT-MPC-0101"], Duration::minutes(40)).await;
    assert_eq!(
        h.occurrences().await,
        vec![
            "MP-0101/HH_LEVEL",
            "MP-0101/HIGH_LEVEL",
            "MP-0101/P1_FAULT",
            "MP-0101/P2_FAULT",
            "MP-0101/level_hh"
        ]
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_slow_unit_costs_the_others_no_more_than_its_timeout() {
    let units: Vec<(u8, mizuban_sim::mps::MpsOptions)> = (1..=4)
        .map(|u| (u, quiet_mps(&format!("MP-02{u:02}"), &format!("AKT-MPC-02{u:02}"))))
        .collect();
    let c = Controllers::start(0, units, t0()).await.unwrap();
    c.set_fault(3, Fault::NoAnswer);
    c.set_fault(2, Fault::Slow(std::time::Duration::from_millis(30)));
    let p = c.addr.port();
    let sites = [
        controller("MP-0201", "AKT-MPC-0201", p, 1, 50, 200),
        controller("MP-0202", "AKT-MPC-0202", p, 2, 50, 200),
        controller("MP-0203", "AKT-MPC-0203", p, 3, 50, 200),
        controller("MP-0204", "AKT-MPC-0204", p, 4, 50, 200),
    ];
    let h = Harness::start("mb-gateway", &sites).await;
    run(
        &h,
        &c,
        &["AKT-MPC-0201", "AKT-MPC-0202", "AKT-MPC-0204"],
        Duration::minutes(1),
    )
    .await;
    // The silent unit times out; the others keep being polled.
    let t3 = h
        .metric("mizuban_modbus_poll_errors_total{device=\"AKT-MPC-0203\",kind=\"timeout\"}")
        .await;
    assert!(t3 >= 1.0, "timeouts counted for the silent unit");
    for d in ["AKT-MPC-0201", "AKT-MPC-0202", "AKT-MPC-0204"] {
        assert_eq!(
            h.metric(&format!(
                "mizuban_modbus_poll_errors_total{{device=\"{d}\",kind=\"timeout\"}}"
            ))
            .await,
            0.0,
            "{d}"
        );
    }
    // Master-station time passes: the silent controller is lost; the rest are not.
    run(
        &h,
        &c,
        &["AKT-MPC-0201", "AKT-MPC-0202", "AKT-MPC-0204"],
        Duration::seconds(40),
    )
    .await;
    h.wait_until("comm loss of unit 3", || async {
        h.occurrences().await == vec!["MP-0203/comm_loss"]
    })
    .await;
    c.set_fault(3, Fault::None);
    h.wait_until("unit 3 back", || async {
        h.get("/api/v1/alarms?site=MP-0203&state=unack_rtn")
            .await
            .as_array()
            .unwrap()
            .len()
            == 1
    })
    .await;
    assert_eq!(
        h.actions("MP-0203", "comm_loss").await,
        vec!["raise:unack_active", "clear:unack_rtn"]
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_are_told_apart_and_a_hung_connection_is_replaced() {
    let c = Controllers::start(0, vec![(1, quiet_mps("MP-0301", "AKT-MPC-0301"))], t0())
        .await
        .unwrap();
    let dead_port = free_port();
    let sites = [
        controller("MP-0301", "AKT-MPC-0301", c.addr.port(), 1, 50, 300),
        controller("MP-0302", "AKT-MPC-0302", dead_port, 1, 50, 300),
    ];
    let h = Harness::start("mb-faults", &sites).await;
    run(&h, &c, &["AKT-MPC-0301"], Duration::seconds(20)).await;
    let metric = |kind: &str| format!("mizuban_modbus_poll_errors_total{{device=\"AKT-MPC-0301\",kind=\"{kind}\"}}");
    // Exceptions: the device answered; counted by code, the link stays up.
    c.set_fault(1, Fault::Exception(ExceptionCode::IllegalDataAddress));
    h.wait_until("exception 02", || async {
        h.metric(&metric("exception_02")).await >= 2.0
    })
    .await;
    c.set_fault(1, Fault::Exception(ExceptionCode::ServerDeviceBusy));
    h.wait_until("exception 06", || async {
        h.metric(&metric("exception_06")).await >= 1.0
    })
    .await;
    // Half-open: the connection stays up but nothing answers; detected by deadline.
    c.set_fault(1, Fault::Hang);
    h.wait_until("hang detected", || async { h.metric(&metric("timeout")).await >= 2.0 })
        .await;
    c.set_fault(1, Fault::None);
    run(&h, &c, &["AKT-MPC-0301"], Duration::seconds(20)).await;
    // Nobody listening: refused, with backoff.
    h.wait_until("refused", || async {
        h.metric("mizuban_modbus_poll_errors_total{device=\"AKT-MPC-0302\",kind=\"refused\"}")
            .await
            >= 1.0
    })
    .await;
    assert_eq!(h.metric(&metric("refused")).await, 0.0);
    // The alarms: the controller nobody answers for is lost after 3 x 10 s of
    // station time; exceptions and the brief hang raised nothing at MP-0301.
    h.wait_until("comm loss of the dead one", || async {
        h.occurrences().await == vec!["MP-0302/comm_loss"]
    })
    .await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_confirmed_by_read_back_journaled_and_refused_when_unreachable() {
    let c = Controllers::start(0, vec![(1, quiet_mps("MP-0501", "AKT-MPC-0501"))], t0())
        .await
        .unwrap();
    let dead_port = free_port();
    let sites = [
        controller("MP-0501", "AKT-MPC-0501", c.addr.port(), 1, 50, 300),
        controller("MP-0502", "AKT-MPC-0502", dead_port, 1, 50, 300),
        mps("MP-0503", "AKT-MPN-0503"),
    ];
    let h = Harness::start("mb-commands", &sites).await;
    let cmd = |site: &str| format!("/api/v1/sites/{site}/commands");
    let body = |c: &str, v: bool| serde_json::json!({"command": c, "value": v, "reason": "pump 1 pulled for overhaul"});
    // Role engineer.
    let (code, _) = h.post(&cmd("MP-0501"), OP_TOKEN, body("p1_inhibit", true)).await;
    assert_eq!(code, 403);
    let (code, r) = h.post(&cmd("MP-0501"), ENG_TOKEN, body("p1_inhibit", true)).await;
    assert_eq!((code, r["result"].as_str()), (200, Some("confirmed")), "{r}");
    assert_eq!(c.coil(1, 1), Some(true), "the controller's coil is set");
    // The controller obeys: with pump 1 inhibited only pump 2 starts.
    let starts =
        |v: &serde_json::Value, n: u8| v["status"]["values"][format!("p{n}_starts")]["value"].as_f64().unwrap();
    run(&h, &c, &["AKT-MPC-0501"], Duration::minutes(2)).await;
    let before = h.get("/api/v1/sites/MP-0501").await;
    run(&h, &c, &["AKT-MPC-0501"], Duration::minutes(40)).await;
    let after = h.get("/api/v1/sites/MP-0501").await;
    assert_eq!(starts(&after, 1), starts(&before, 1), "pump 1 held off");
    assert!(starts(&after, 2) >= starts(&before, 2) + 2.0, "pump 2 does the work");
    assert_eq!(
        after["status"]["values"]["start_cm"]["value"], 90.0,
        "setpoints (holding registers) are read too"
    );
    let (code, _) = h.post(&cmd("MP-0501"), ENG_TOKEN, body("p1_inhibit", false)).await;
    assert_eq!(code, 200);
    assert_eq!(c.coil(1, 1), Some(false));
    // A pulse command (rising edge) leaves the coil low again.
    let (code, _) = h.post(&cmd("MP-0501"), ENG_TOKEN, body("alarm_reset", true)).await;
    assert_eq!(code, 200);
    assert_eq!(c.coil(1, 0), Some(false));
    // Refused clearly.
    let (code, e) = h.post(&cmd("MP-0502"), ENG_TOKEN, body("p1_inhibit", true)).await;
    assert_eq!(code, 503, "{e}");
    assert!(e["error"].as_str().unwrap().contains("unreachable"), "{e}");
    let (code, _) = h.post(&cmd("MP-0503"), ENG_TOKEN, body("p1_inhibit", true)).await;
    assert_eq!(code, 409, "an MQTT notifier takes no commands");
    let (code, e) = h.post(&cmd("MP-0501"), ENG_TOKEN, body("self_destruct", true)).await;
    assert_eq!(code, 422);
    assert!(
        e["error"].as_str().unwrap().contains("p1_inhibit"),
        "lists what it takes: {e}"
    );
    let (code, _) = h
        .post(&cmd("MP-0501"), ENG_TOKEN, serde_json::json!({"command": "p1_inhibit"}))
        .await;
    assert_eq!(code, 422, "a command needs a reason");
    c.set_fault(1, Fault::Exception(ExceptionCode::IllegalDataAddress));
    let (code, e) = h.post(&cmd("MP-0501"), ENG_TOKEN, body("p2_inhibit", true)).await;
    assert_eq!(code, 409, "{e}");
    // Journaled with who, why and the outcome.
    let j = h.get("/api/v1/journal?site=MP-0501").await;
    let rows: Vec<(String, String, String, String)> = j
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "command")
        .map(|r| {
            (
                r["condition"].as_str().unwrap().into(),
                r["who"].as_str().unwrap().into(),
                r["why"].as_str().unwrap().into(),
                r["to"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert!(rows.iter().all(|r| r.1 == "eng" && r.2 == "pump 1 pulled for overhaul"));
    assert!(rows.iter().any(|r| r.0 == "p2_inhibit" && r.3.starts_with("failed")));
    let j2 = h.get("/api/v1/journal?site=MP-0502").await;
    assert!(j2
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["action"] == "command" && r["to"].as_str().unwrap().contains("unreachable")));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_stops_polling_is_itself_an_alarm() {
    let c = Controllers::start(0, vec![(1, quiet_mps("MP-0601", "AKT-MPC-0601"))], t0())
        .await
        .unwrap();
    let h = Harness::start(
        "mb-stall",
        &[controller("MP-0601", "AKT-MPC-0601", c.addr.port(), 1, 50, 300)],
    )
    .await;
    run(&h, &c, &["AKT-MPC-0601"], Duration::seconds(20)).await;
    assert_eq!(h.occurrences().await, Vec::<String>::new());
    // Hold the endpoint's task (as a hung task would): after its budget
    // (1.5 x (50 ms + 3 reads x 2 tries x 300 ms) + 1 s, about 3.8 s) the watchdog raises.
    let app = h.app.as_ref().unwrap();
    let commander = app.commander.clone();
    let pause = tokio::spawn(async move { commander.pause("MP-0601", std::time::Duration::from_secs(6)).await });
    h.wait_until("stall raised", || async {
        h.occurrences().await == vec!["MP-0601/collector_stalled"]
    })
    .await;
    assert_eq!(h.metric("mizuban_modbus_stalled_endpoints").await, 1.0);
    pause.await.unwrap().unwrap();
    h.wait_until("stall cleared", || async {
        h.actions("MP-0601", "collector_stalled").await.len() == 2
    })
    .await;
    assert_eq!(
        h.actions("MP-0601", "collector_stalled").await,
        vec!["raise:unack_active", "clear:unack_rtn"]
    );
    h.stop().await;
}
