//! Interop with an independent Modbus implementation: mizuban polls a pymodbus
//! server (tests/peers/pymodbus_controller.py) serving the spec's register map
//! with known values. Skips when pymodbus is not installed, except under
//! CI=true where a missing peer is a failure (.ci/run installs it).

mod common;
use chrono::Duration;
use common::*;
use std::process::{Child, Command, Stdio};

struct Peer(Child);
impl Drop for Peer {
    fn drop(&mut self) {
        // Best effort: the process may have exited already.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_a_pymodbus_controller() {
    if !peer_present(python_has("pymodbus"), "pymodbus", "pip install pymodbus==3.8.6") {
        return;
    }
    let port = free_port();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/pymodbus_controller.py");
    let _peer = Peer(
        Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Ready when it accepts a TCP handshake (bounded).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "pymodbus server did not start");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let h = Harness::start(
        "mb-pymodbus",
        &[controller("MP-0401", "AKT-MPC-0401", port, 1, 100, 1000)],
    )
    .await;
    // Let the level hold above high-high for the rule's on-delay in event time.
    for _ in 0..5 {
        let before = h.metric("mizuban_modbus_polls_total{device=\"AKT-MPC-0401\"}").await;
        h.wait_until("polled", || async {
            h.metric("mizuban_modbus_polls_total{device=\"AKT-MPC-0401\"}").await >= before + 2.0
        })
        .await;
        h.clock.advance(Duration::seconds(20));
    }
    h.wait_until("alarms", || async { h.occurrences().await.len() == 3 })
        .await;
    let s = h.get("/api/v1/sites/MP-0401").await;
    let v = &s["status"]["values"];
    let val = |n: &str| v[n]["value"].as_f64();
    assert_eq!(val("level"), Some(165.0));
    assert_eq!(val("p1_current"), Some(6.4));
    assert_eq!(v["p2_current"]["quality"], "bad", "0xFFFF is not available: {v}");
    assert_eq!(val("p2_current"), None);
    assert_eq!(val("p1_run_min"), Some(184233.0));
    assert_eq!(val("p2_starts"), Some(61105.0));
    assert_eq!(val("panel_temp"), Some(-3.5));
    assert_eq!(val("p1_run"), Some(1.0));
    assert_eq!(val("p2_run"), Some(0.0));
    assert_eq!(val("inflow_est"), Some(7.2));
    assert_eq!(val("controller_utc"), Some(1735689600.0));
    assert_eq!(
        h.occurrences().await,
        vec!["MP-0401/HH_LEVEL", "MP-0401/HIGH_LEVEL", "MP-0401/level_hh"]
    );
    assert_eq!(
        h.metric("mizuban_modbus_poll_errors_total{device=\"AKT-MPC-0401\",kind=\"timeout\"}")
            .await,
        0.0
    );
    h.stop().await;
}
