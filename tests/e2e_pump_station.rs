//! End to end: simulated pump-station notifiers over a real MQTT broker ->
//! mizuban -> the alarms an operator sees, exactly.

mod common;
use chrono::Duration;
use common::*;
use mizuban_sim::Scenario;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_station_raises_nothing_then_both_pumps_fail() {
    let h = Harness::start("mps-both", &[mps("MP-0001", "AKT-MPN-0001")]).await;
    let sim = h.spawn_mps(quiet_mps("MP-0001", "AKT-MPN-0001"), t0()).await;
    h.run(&[&sim], Duration::hours(2)).await;
    assert_eq!(
        h.occurrences().await,
        Vec::<String>::new(),
        "a healthy station raises nothing"
    );
    let level = h
        .get("/api/v1/points/MP-0001.level/readings?from=2025-01-20T00:00:00Z&to=2025-01-22T00:00:00Z")
        .await;
    assert!(level.as_array().unwrap().len() > 5, "levels stored: {level}");

    sim.inject(Scenario::BothPumpsFail).await.unwrap();
    h.run(&[&sim], Duration::minutes(40)).await;
    assert_eq!(
        h.occurrences().await,
        vec![
            "MP-0001/HH_LEVEL",
            "MP-0001/HIGH_LEVEL",
            "MP-0001/P1_FAULT",
            "MP-0001/P2_FAULT",
            "MP-0001/level_hh"
        ]
    );
    for c in ["HH_LEVEL", "HIGH_LEVEL", "P1_FAULT", "P2_FAULT"] {
        assert_eq!(h.actions("MP-0001", c).await, vec!["raise:unack_active"], "{c}");
    }
    let alarms = h.get("/api/v1/alarms").await;
    assert_eq!(alarms[0]["priority"], "critical", "highest priority first: {alarms}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_pump_fails_the_partner_takes_every_cycle() {
    let h = Harness::start("mps-one", &[mps("MP-0002", "AKT-MPN-0002")]).await;
    let sim = h.spawn_mps(quiet_mps("MP-0002", "AKT-MPN-0002"), t0()).await;
    h.run(&[&sim], Duration::minutes(30)).await;
    sim.inject(Scenario::PumpFail { pump: 1 }).await.unwrap();
    h.run(&[&sim], Duration::hours(3)).await;
    // Pump health sees pump 1 idle for 16 of its partner's cycles; the fault
    // explains it, so it is suppressed rather than told.
    assert_eq!(h.occurrences().await, vec!["MP-0002/P1_FAULT", "MP-0002/p1_idle"]);
    assert_eq!(h.actions("MP-0002", "P1_FAULT").await, vec!["raise:unack_active"]);
    assert_eq!(h.actions("MP-0002", "p1_idle").await, vec!["raise:suppressed"]);
    // P2 keeps the well down: its starts keep climbing while P1's stop.
    let p1 = h
        .get("/api/v1/points/MP-0002.p1_starts/readings?from=2025-01-21T01:00:00Z&to=2025-01-21T04:00:00Z")
        .await;
    let p2 = h
        .get("/api/v1/points/MP-0002.p2_starts/readings?from=2025-01-21T01:00:00Z&to=2025-01-21T04:00:00Z")
        .await;
    let span = |v: &serde_json::Value| {
        let a = v.as_array().unwrap();
        a.last().unwrap()["value"].as_f64().unwrap() - a.first().unwrap()["value"].as_f64().unwrap()
    };
    assert_eq!(span(&p1), 0.0);
    assert!(span(&p2) >= 3.0, "P2 cycles: {}", span(&p2));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn area_power_cut_one_alarm_per_station_and_dependents_suppressed() {
    let sites = [
        mps("MP-0011", "AKT-MPN-0011"),
        mps("MP-0012", "AKT-MPN-0012"),
        mps("MP-0013", "AKT-MPN-0013"),
    ];
    let h = Harness::start("mps-power", &sites).await;
    let mut sims = vec![];
    for s in &sites {
        sims.push(h.spawn_mps(quiet_mps(s.id, s.device), t0()).await);
    }
    let refs: Vec<&mizuban_sim::Handle> = sims.iter().collect();
    h.run(&refs, Duration::minutes(20)).await;
    for s in &sims {
        s.inject(Scenario::PowerCut {
            duration: Duration::minutes(4),
        })
        .await
        .unwrap();
    }
    h.run(&refs, Duration::minutes(1)).await;
    // During the cut a pump fault is reported too: a consequence, suppressed.
    sims[0].inject(Scenario::PumpFail { pump: 1 }).await.unwrap();
    h.run(&refs, Duration::minutes(1)).await;
    let open = h.get("/api/v1/alarms?site=MP-0011&all=true").await;
    let fault = open
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["condition"] == "P1_FAULT")
        .expect("P1_FAULT recorded");
    assert_eq!(fault["state"], "suppressed");
    assert_eq!(fault["suppressed_by"], "POWER_FAIL");
    // The default list (what an operator must see) shows the power failures, not the consequence.
    let list: Vec<String> = h
        .get("/api/v1/alarms")
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|a| format!("{}/{}", a["site"].as_str().unwrap(), a["condition"].as_str().unwrap()))
        .collect();
    assert_eq!(list.len(), 3, "{list:?}");
    assert!(list.iter().all(|c| c.ends_with("/POWER_FAIL")));
    for s in &sims {
        s.inject(Scenario::Repair).await.unwrap();
    }
    h.run(&refs, Duration::minutes(30)).await;
    for s in &sites {
        assert_eq!(
            h.actions(s.id, "POWER_FAIL").await,
            vec!["raise:unack_active", "clear:unack_rtn"],
            "{}",
            s.id
        );
    }
    assert_eq!(
        h.occurrences().await,
        vec![
            "MP-0011/P1_FAULT",
            "MP-0011/POWER_FAIL",
            "MP-0012/POWER_FAIL",
            "MP-0013/POWER_FAIL"
        ]
    );
    // The suppressed fault cleared after repair without ever paging anyone.
    let j = h.get("/api/v1/journal?site=MP-0011&condition=P1_FAULT").await;
    assert!(j.as_array().unwrap().iter().all(|r| r["notify"] == false), "{j}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chattering_level_is_one_occurrence_not_a_flood() {
    let h = Harness::start("mps-chatter", &[mps("MP-0021", "AKT-MPN-0021")]).await;
    let sim = h.spawn_mps(quiet_mps("MP-0021", "AKT-MPN-0021"), t0()).await;
    h.run(&[&sim], Duration::minutes(10)).await;
    sim.inject(Scenario::Chattering {
        duration: Duration::minutes(3),
    })
    .await
    .unwrap();
    h.run(&[&sim], Duration::minutes(10)).await;
    assert_eq!(h.occurrences().await, vec!["MP-0021/HIGH_LEVEL"]);
    let j = h.get("/api/v1/journal?site=MP-0021&condition=HIGH_LEVEL").await;
    let rows = j.as_array().unwrap();
    assert!(rows.len() >= 6, "it did chatter: {} transitions", rows.len());
    // Told twice, not once per crossing: the raise, and its first return to normal.
    let mut told: Vec<(i64, &str)> = rows
        .iter()
        .filter(|r| r["notify"] == true)
        .map(|r| (r["seq"].as_i64().unwrap(), r["action"].as_str().unwrap()))
        .collect();
    told.sort();
    assert_eq!(
        told.iter().map(|t| t.1).collect::<Vec<_>>(),
        vec!["raise", "clear"],
        "{j}"
    );
    let a = &h.get("/api/v1/alarms?site=MP-0021").await[0];
    assert!(a["reactivations"].as_u64().unwrap() >= 3, "{a}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lte_outage_comm_loss_then_backlog_is_late_not_paged() {
    let h = Harness::start("mps-lte", &[mps("MP-0031", "AKT-MPN-0031")]).await;
    let sim = h.spawn_mps(quiet_mps("MP-0031", "AKT-MPN-0031"), t0()).await;
    h.run(&[&sim], Duration::minutes(30)).await;
    sim.inject(Scenario::LteOutage {
        duration: Duration::hours(3),
    })
    .await
    .unwrap();
    // A door opened and closed during the outage: only the backlog will tell.
    h.run(&[&sim], Duration::minutes(30)).await;
    sim.inject(Scenario::DoorOpen {
        duration: Duration::minutes(10),
    })
    .await
    .unwrap();
    // Two missed heartbeats plus grace: 2 h 10 min after the last message.
    h.run(&[&sim], Duration::minutes(110)).await;
    h.wait_until("comm loss raised", || async {
        h.occurrences().await == vec!["MP-0031/comm_loss"]
    })
    .await;
    let a = &h.get("/api/v1/alarms?site=MP-0031").await[0];
    assert_eq!(a["state"], "unack_active");
    assert_eq!(a["priority"], "high");
    // Radio back: live data first, then the backlog, oldest first.
    h.run(&[&sim], Duration::minutes(60)).await;
    assert_eq!(h.occurrences().await, vec!["MP-0031/DOOR_OPEN", "MP-0031/comm_loss"]);
    assert_eq!(
        h.actions("MP-0031", "comm_loss").await,
        vec!["raise:unack_active", "clear:unack_rtn"]
    );
    let door = h.get("/api/v1/alarms?site=MP-0031&state=unack_rtn").await;
    let door = door
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["condition"] == "DOOR_OPEN")
        .expect("door for review");
    assert_eq!(door["late"], true, "{door}");
    let j = h.get("/api/v1/journal?site=MP-0031&condition=DOOR_OPEN").await;
    assert!(
        j.as_array().unwrap().iter().all(|r| r["notify"] == false),
        "late data pages nobody: {j}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rain_inflow_lengthens_runs_without_alarms() {
    let h = Harness::start("mps-rain", &[mps("MP-0081", "AKT-MPN-0081")]).await;
    let sim = h.spawn_mps(quiet_mps("MP-0081", "AKT-MPN-0081"), t0()).await;
    h.run(&[&sim], Duration::minutes(10)).await;
    sim.inject(Scenario::RainInflow {
        factor: 3.0,
        duration: Duration::hours(2),
    })
    .await
    .unwrap();
    h.run(&[&sim], Duration::hours(2)).await;
    assert_eq!(
        h.occurrences().await,
        Vec::<String>::new(),
        "two pumps keep up: no alarm"
    );
    // The rain shows as run time: one run of the lead pump far longer than the
    // 3-4 minutes of dry weather (pump health's derived run-time points).
    let range = "from=2025-01-21T00:00:00Z&to=2025-01-21T03:00:00Z";
    let mut longest: f64 = 0.0;
    for p in ["p1_run_s", "p2_run_s"] {
        let r = h.get(&format!("/api/v1/points/MP-0081.{p}/readings?{range}")).await;
        longest = r
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|x| x["value"].as_f64())
            .fold(longest, f64::max);
    }
    assert!(longest > 20.0 * 60.0, "longest run {longest} s");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ragging_pump_draws_more_current_and_raises_nothing_yet() {
    let h = Harness::start("mps-rag", &[mps("MP-0082", "AKT-MPN-0082")]).await;
    let sim = h.spawn_mps(quiet_mps("MP-0082", "AKT-MPN-0082"), t0()).await;
    h.run(&[&sim], Duration::minutes(10)).await;
    sim.inject(Scenario::Ragging { pump: 1 }).await.unwrap();
    h.run(&[&sim], Duration::hours(2)).await;
    // Pump-health alarms (run time, current drift) are issue #3; the notifier itself reports nothing.
    assert_eq!(h.occurrences().await, Vec::<String>::new());
    let cur = h
        .get("/api/v1/points/MP-0082.p1_current/readings?from=2025-01-21T00:10:00Z&to=2025-01-21T02:10:00Z")
        .await;
    let max = cur
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["value"].as_f64())
        .fold(0.0, f64::max);
    assert!(max > 9.0, "ragging current stored: {max}");
    h.stop().await;
}
