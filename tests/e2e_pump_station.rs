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
    sim.advance(Duration::hours(2)).await.unwrap();
    h.wait_messages(sim.sent() as f64).await;
    assert_eq!(h.occurrences().await, Vec::<String>::new(), "a healthy station raises nothing");
    let level = h.get("/api/v1/points/MP-0001.level/readings?from=2025-01-20T00:00:00Z&to=2025-01-22T00:00:00Z").await;
    assert!(level.as_array().unwrap().len() > 5, "levels stored: {level}");

    sim.inject(Scenario::BothPumpsFail).await.unwrap();
    sim.advance(Duration::minutes(40)).await.unwrap();
    h.wait_messages(sim.sent() as f64).await;
    assert_eq!(
        h.occurrences().await,
        vec!["MP-0001/HH_LEVEL", "MP-0001/HIGH_LEVEL", "MP-0001/P1_FAULT", "MP-0001/P2_FAULT", "MP-0001/level_hh"]
    );
    for c in ["HH_LEVEL", "HIGH_LEVEL", "P1_FAULT", "P2_FAULT"] {
        assert_eq!(h.actions("MP-0001", c).await, vec!["raise:unack_active"], "{c}");
    }
    let alarms = h.get("/api/v1/alarms").await;
    assert_eq!(alarms[0]["priority"], "critical", "highest priority first: {alarms}");
    h.stop().await;
}
