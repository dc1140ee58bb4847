//! Device identity on MQTT, against a real Mosquitto configured with the files
//! `mizuban mqtt-credentials` writes from the sites configuration: a device
//! publishes on its own topics only (a spoofed alarm on another site's topic
//! never reaches the service), nobody can take over the service's client id,
//! anonymous clients are refused. Also: the embedded broker of the demo and
//! the tests refuses clients without credentials, and the collector reaches
//! a broker over TLS (verified against a CA, with a client certificate).

mod common;
use chrono::Duration;
use common::mosquitto::{self, Mosquitto};
use common::*;
use rumqttc::{AsyncClient, ConnectionError, Event, MqttOptions, Packet, QoS};
use serde_json::json;

fn telemetry(block: &str, device: &str, seq: u64) -> Vec<u8> {
    let t = (t0() - Duration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    json!({"schema":"dma-telemetry/1","device_id":device,"block_id":block,"boot":1,"seq":seq,
        "sent_at":t,"log_interval_s":300,"upload_interval_s":3600,"backlog":0,
        "units":{"q":"m3/h","p":"MPa","tot":"m3"},
        "samples":[{"t":t,"q":40.0 + seq as f64,"p":0.4,"tot":1000.0}]})
    .to_string()
    .into_bytes()
}

/// Connects as `user` (client id `id`); returns the CONNACK outcome and, if
/// accepted, a client whose publishes are confirmed by the broker.
async fn connect(
    port: u16,
    id: &str,
    creds: Option<(&str, &str)>,
) -> Result<(AsyncClient, tokio::task::JoinHandle<()>), String> {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(std::time::Duration::from_secs(30));
    if let Some((u, p)) = creds {
        o.set_credentials(u, p);
    }
    let (c, mut el) = AsyncClient::new(o, 10);
    match el.poll().await {
        Ok(Event::Incoming(Packet::ConnAck(_))) => {}
        Ok(other) => return Err(format!("unexpected {other:?}")),
        Err(ConnectionError::ConnectionRefused(code)) => return Err(format!("refused: {code:?}")),
        Err(e) => return Err(format!("error: {e}")),
    }
    let task = tokio::spawn(async move { while el.poll().await.is_ok() {} });
    Ok((c, task))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_publishes_only_on_its_own_topics_and_nobody_takes_over_the_service() {
    if !mosquitto::present() {
        return;
    }
    let port = free_port();
    let broker = std::cell::RefCell::new(None);
    let h = Harness::start_custom_with(
        "identity",
        &[dma("B01", "AKT-DMA-001"), dma("B02", "AKT-DMA-002")],
        None,
        ("127.0.0.1".into(), port),
        |dir| {
            let out = dir.join("mosquitto");
            let st = std::process::Command::new(env!("CARGO_BIN_EXE_mizuban"))
                .args(["mqtt-credentials", "--config"])
                .arg(dir.join("mizuban.toml"))
                .arg("--out")
                .arg(&out)
                .status()
                .unwrap();
            assert!(st.success());
            // The deployment's own lines, with the files where they were written.
            let conf = std::fs::read_to_string(out.join("mosquitto.conf"))
                .unwrap()
                .replace(
                    "/etc/mosquitto/mizuban/passwd",
                    &out.join("passwd").display().to_string(),
                )
                .replace("/etc/mosquitto/mizuban/acl", &out.join("acl").display().to_string());
            *broker.borrow_mut() = Some(Mosquitto::start_on(port, &conf));
        },
        false,
    )
    .await;
    // Kept to the end of the test: the broker runs while it lives.
    let _broker = broker.into_inner().unwrap();
    let csv = std::fs::read_to_string(h.dir.path().join("mosquitto/devices.csv")).unwrap();
    let pw: std::collections::BTreeMap<String, String> = mizuban::collect::mqtt::credentials::known_passwords(&csv);
    let topic = |site: &str, dev: &str| format!("{}akita/v1/dma/{site}/{dev}/telemetry", h.prefix);

    // B01 with its own credentials: its own topic works; B02's is refused by
    // the broker's ACL, so the spoof never reaches the service.
    let (b01, _t1) = connect(port, "b01", Some(("AKT-DMA-001", &pw["AKT-DMA-001"])))
        .await
        .unwrap();
    // Until the service's subscription is live (a SUBACK after its CONNACK).
    let mut seq = 0;
    while h.metric("mizuban_messages_total").await < 1.0 {
        seq += 1;
        assert!(seq < 500, "the service never received B01");
        b01.publish(
            topic("B01", "AKT-DMA-001"),
            QoS::AtLeastOnce,
            false,
            telemetry("B01", "AKT-DMA-001", seq),
        )
        .await
        .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let base = h.metric("mizuban_messages_total").await;
    b01.publish(
        topic("B02", "AKT-DMA-002"),
        QoS::AtLeastOnce,
        false,
        telemetry("B02", "AKT-DMA-002", 1),
    )
    .await
    .unwrap();
    // Sent after the spoof: once it is in, the spoof would have been too.
    b01.publish(
        topic("B01", "AKT-DMA-001"),
        QoS::AtLeastOnce,
        false,
        telemetry("B01", "AKT-DMA-001", 1000),
    )
    .await
    .unwrap();
    h.wait_until("B01's message after the spoof", || async {
        h.metric("mizuban_messages_total").await >= base + 1.0
    })
    .await;
    h.app.as_ref().unwrap().store.flush().await.unwrap();
    let site = h.get("/api/v1/sites/B02").await;
    assert!(
        site["last_seen"].is_null(),
        "a spoofed message for B02 got through: {site}"
    );
    assert_eq!(
        h.metric("mizuban_messages_total").await,
        base + 1.0,
        "only B01's own messages"
    );

    // Another device using the service's client id gets its own user name as
    // client id instead; a wrong password for the service's user is refused;
    // so is an anonymous client.
    let (_b02, _t2) = connect(port, "mizuban-test-identity", Some(("AKT-DMA-002", &pw["AKT-DMA-002"])))
        .await
        .unwrap();
    let wrong = connect(port, "mizuban-test-identity", Some((MQTT_USER, "not-the-password"))).await;
    assert!(
        wrong.is_err_and(|e| e.contains("refused")),
        "a wrong password is refused"
    );
    let anon = connect(port, "anon", None).await;
    assert!(
        anon.is_err_and(|e| e.contains("refused")),
        "anonymous clients are refused"
    );
    // The service kept its connection through all of it.
    b01.publish(
        topic("B01", "AKT-DMA-001"),
        QoS::AtLeastOnce,
        false,
        telemetry("B01", "AKT-DMA-001", 1001),
    )
    .await
    .unwrap();
    h.wait_until("B01's last message", || async {
        h.metric("mizuban_messages_total").await >= base + 2.0
    })
    .await;
    assert_eq!(
        h.metric("mizuban_mqtt_reconnects_total").await,
        0.0,
        "the service was never kicked off"
    );
    assert_eq!(
        h.request(reqwest::Method::GET, "/api/v1/health", None, None).await.0,
        200
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_broker_refuses_clients_without_credentials() {
    if std::env::var("MIZUBAN_TEST_MQTT").is_ok() {
        return; // an external broker: its own policy
    }
    let (_, port) = broker();
    assert!(connect(port, "nobody", None).await.is_err(), "anonymous");
    assert!(
        connect(port, "guess", Some((MQTT_USER, "guess"))).await.is_err(),
        "wrong password"
    );
    assert!(connect(port, "ok", Some((MQTT_USER, MQTT_PASSWORD))).await.is_ok());
}

/// A CA, a broker certificate for 127.0.0.1 and a client certificate, made
/// with openssl in `dir`.
fn make_pki(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let ok = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl runs");
        assert!(ok.success(), "openssl {args:?}");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
    ]);
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    for name in ["broker", "client"] {
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={name}"),
        ]);
        run(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collector_reaches_a_broker_over_tls_with_a_client_certificate() {
    if !mosquitto::present()
        || !peer_present(
            std::process::Command::new("openssl").arg("version").output().is_ok(),
            "openssl",
            "apt-get install openssl",
        )
    {
        return;
    }
    let pki = tempfile::tempdir().unwrap();
    make_pki(pki.path());
    let p = |n: &str| pki.path().join(n).display().to_string();
    let port = free_port();
    let broker = Mosquitto::start_on(
        port,
        &format!(
            "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
            p("ca.pem"),
            p("broker.pem"),
            p("broker.key")
        ),
    );
    let h = Harness::start_custom_with(
        "tls",
        &[dma("B01", "AKT-DMA-001")],
        None,
        ("127.0.0.1".into(), port),
        |dir| {
            let path = dir.join("mizuban.toml");
            let cfg = std::fs::read_to_string(&path).unwrap().replacen(
                "[store]",
                &format!(
                    "[mqtt.tls]\nca_file = \"{}\"\nclient_cert_file = \"{}\"\nclient_key_file = \"{}\"\n\n[store]",
                    p("ca.pem"),
                    p("client.pem"),
                    p("client.key")
                ),
                1,
            );
            std::fs::write(&path, cfg).unwrap();
        },
        false,
    )
    .await;
    // Connected over TLS (the broker requires a client certificate signed by
    // the CA, and the collector verified the broker's).
    h.wait_until("connected over TLS", || async {
        h.metric("mizuban_mqtt_connected").await == 1.0
    })
    .await;
    assert_eq!(
        h.request(reqwest::Method::GET, "/api/v1/health", None, None).await.0,
        200
    );
    drop(broker);
    h.stop().await;
}
