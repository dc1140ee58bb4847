//! The board in a real browser: headless Chromium (Debian's `chromium`) driven
//! by playwright-core (`tests/browser/board.mjs`). Log in; a simulated HH_LEVEL
//! appears without a reload; acknowledge it with a comment; switch language; a
//! viewer gets no acknowledge button; the "disconnected" banner appears when
//! the service stops. Screenshots: target/browser-screenshots/.
//!
//! Skips when Chromium or playwright-core is missing, except under CI=true
//! (.ci/run installs both).

mod common;
use argon2::password_hash::{PasswordHasher, SaltString};
use chrono::Duration;
use common::*;
use mizuban_sim::Scenario;
use std::path::Path;
use tokio::io::{AsyncBufReadExt, BufReader};

fn hash(pw: &str) -> String {
    let salt = SaltString::from_b64("YnJvd3NlcnRlc3RzYWx0").unwrap();
    argon2::Argon2::default()
        .hash_password(pw.as_bytes(), &salt)
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn board_in_headless_chromium() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let ready = Path::new(&chromium).exists() && root.join("tests/browser/node_modules/playwright-core").exists();
    if !ready {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "Chromium and playwright-core are required under CI=true (.ci/run installs them)"
        );
        eprintln!("SKIPPED: install chromium and `npm install` in tests/browser");
        return;
    }
    let out = root.join("target/browser-screenshots");
    std::fs::create_dir_all(&out).unwrap();

    let mut h = Harness::start("browser", &[mps("MP-0701", "AKT-MPN-0701")]).await;
    let users = format!(
        "\n[[user]]\nname = \"sato\"\npassword_hash = \"{}\"\nrole = \"operator\"\n\n[[user]]\nname = \"kimura\"\npassword_hash = \"{}\"\nrole = \"viewer\"\n",
        hash("sato-pass-2025"),
        hash("kimura-pass-2025")
    );
    let cfg = std::fs::read_to_string(&h.config_path).unwrap() + &users;
    std::fs::write(&h.config_path, cfg).unwrap();
    h.restart().await;
    let sim = h.spawn_mps(quiet_mps("MP-0701", "AKT-MPN-0701"), t0()).await;
    h.run(&[&sim], Duration::minutes(10)).await;

    let mut child = tokio::process::Command::new("node")
        .arg(root.join("tests/browser/board.mjs"))
        .args([&h.base, "sato", "sato-pass-2025", "kimura", "kimura-pass-2025"])
        .arg(&out)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = async || -> String {
        match tokio::time::timeout(std::time::Duration::from_secs(60), lines.next_line()).await {
            Ok(Ok(Some(l))) => l,
            other => panic!("browser script stopped early: {other:?}"),
        }
    };
    assert_eq!(next().await, "READY");
    sim.inject(Scenario::BothPumpsFail).await.unwrap();
    h.run(&[&sim], Duration::minutes(40)).await;
    assert_eq!(next().await, "SEEN");
    let acked = next().await;
    assert!(acked.starts_with("ACKED"), "{acked}");
    // The acknowledgement went through the API as that user, with the comment.
    let hh = h.get("/api/v1/alarms?site=MP-0701").await;
    let hh = hh
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["condition"] == "HH_LEVEL")
        .unwrap()
        .clone();
    assert_eq!(hh["acked_by"], "sato");
    assert_eq!(hh["ack_comment"], "現地確認に向かいます");
    assert_eq!(next().await, "DETAIL");
    assert_eq!(next().await, "ENGLISH");
    assert_eq!(next().await, "SITES");
    assert_eq!(next().await, "JOURNAL");
    assert_eq!(next().await, "VIEWER");
    assert_eq!(next().await, "STOP_SERVICE");
    h.pin_http = h.app.as_ref().map(|a| a.http_addr);
    h.stop_service().await;
    assert_eq!(next().await, "BANNER");
    // Back on the same address: the board reconnects by itself (its session
    // survives the restart) and resynchronises from the snapshot.
    h.start_service().await;
    assert_eq!(next().await, "RESYNCED");
    let status = child.wait().await.unwrap();
    assert!(status.success(), "browser script failed");
    for shot in [
        "board-hh-level.png",
        "board-acked.png",
        "board-en.png",
        "board-viewer-phone.png",
        "board-disconnected.png",
    ] {
        assert!(out.join(shot).exists(), "{shot}");
    }
}
