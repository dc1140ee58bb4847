//! `mizuban demo`: embedded broker + simulated Akita fleet + the service, on
//! the configuration built into the binary. Nothing to install.

use mizuban::collect::broker::EmbeddedBroker;
use mizuban::config::{Config, Role, TokenSpec, UserSpec};
use mizuban_sim::fleet::{Fleet, FleetOptions};
use mizuban_sim::Mode;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub fn hash_password(pw: &str) -> anyhow::Result<String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    argon2::Argon2::default()
        .hash_password(pw.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("cannot hash password: {e}"))
}

pub async fn run(http: SocketAddr, data_dir: Option<PathBuf>, incident_every_s: u64) -> anyhow::Result<()> {
    // The embedded broker needs credentials too: one for the service, one for
    // the simulated fleet, made fresh each run.
    let service_mqtt = ("mizuban".to_string(), mizuban::model::secret::random_hex(16));
    let fleet_mqtt = ("akita-fleet".to_string(), mizuban::model::secret::random_hex(16));
    let broker = EmbeddedBroker::start(Some(1883), &[service_mqtt.clone(), fleet_mqtt.clone()])?;
    let mut cfg = Config::load_embedded().map_err(|errs| {
        anyhow::anyhow!(
            "embedded configuration is invalid:\n{}",
            errs.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n")
        )
    })?;
    cfg.mqtt.host = broker.addr.ip().to_string();
    cfg.mqtt.port = broker.addr.port();
    cfg.mqtt.username = Some(service_mqtt.0.clone());
    cfg.mqtt.password = Some(service_mqtt.1.clone());
    // A throw-away broker: no session to keep.
    cfg.mqtt.persistent_session = false;
    let tmp;
    let dir = match data_dir {
        Some(d) => d,
        None => {
            tmp = std::env::temp_dir().join(format!("mizuban-demo-{}", std::process::id()));
            tmp
        }
    };
    cfg.store_path = dir.join("mizuban.db");
    // The demo's credentials are made fresh each run, never the shipped ones.
    let password = mizuban::api::random_password();
    let token = format!("demo-op-{}", mizuban::model::secret::random_hex(16));
    cfg.tokens = vec![TokenSpec {
        name: "demo-operator-token".into(),
        token: token.clone(),
        role: Role::Operator,
    }];
    cfg.users = vec![UserSpec {
        name: "operator".into(),
        password_hash: hash_password(&password)?,
        role: Role::Engineer,
    }];

    // Stations 181-200 are reached by polling their controllers over Modbus
    // TCP, all behind one simulated gateway (unit ids 1-20).
    let polled: Vec<(u8, String, String)> = (181..=200u32)
        .map(|n| ((n - 180) as u8, format!("MP-{n:04}"), format!("AKT-MPC-{n:04}")))
        .collect();
    let gateway = mizuban_sim::modbus::Controllers::start(
        0,
        polled
            .iter()
            .map(|(unit, site, dev)| {
                let mut o = mizuban_sim::mps::MpsOptions::new(site, dev);
                o.seed = 1000 + *unit as u64;
                (*unit, o)
            })
            .collect(),
        chrono::Utc::now(),
    )
    .await?;
    // One slow station on the gateway, as over LTE.
    gateway.set_fault(
        7,
        mizuban_sim::modbus::Fault::SlowRange(Duration::from_millis(100), Duration::from_millis(800)),
    );
    gateway.run_realtime(Duration::from_secs(2));
    for (unit, site_id, dev) in &polled {
        if let Some(site) = cfg.sites.iter_mut().find(|s| s.id.as_str() == site_id) {
            let s = std::sync::Arc::make_mut(site);
            s.profile = "akita-mps-controller".into();
            s.device = mizuban::model::DeviceId::new(dev)?;
            s.modbus = Some(mizuban::config::ModbusEndpoint {
                host: "127.0.0.1".into(),
                port: gateway.addr.port(),
                unit: *unit,
                poll_interval_ms: Some(5_000),
                timeout_ms: Some(1_500),
                retries: Some(2),
            });
        }
    }

    let running = mizuban::app::start(
        cfg,
        mizuban::app::Options {
            http: Some(http),
            ..Default::default()
        },
    )
    .await?;
    let fleet = Fleet::spawn(FleetOptions {
        host: broker.addr.ip().to_string(),
        port: broker.addr.port(),
        blocks: 41,
        stations: 180,
        // Demo cadence: samples every minute, uploads every two, so the board
        // moves within a minute of starting (field default: 300 s / 3600 s).
        log_interval_s: 60,
        upload_interval_s: 120,
        mode: Mode::Realtime {
            step: Duration::from_secs(2),
        },
        topic_prefix: String::new(),
        credentials: Some(fleet_mqtt.clone()),
    })
    .await?;
    println!("Board: http://{}/", running.http_addr);
    println!("Login: operator / {password}");
    println!("Token: {token}");
    println!("MQTT broker: {} (embedded)   data: {}", broker.addr, dir.display());
    println!(
        "Fleet: {} distribution-block loggers and {} pump-station notifiers over MQTT; {} pump controllers polled over Modbus TCP behind gateway {}. Ctrl-C to stop.",
        fleet.loggers.len(),
        fleet.stations.len(),
        polled.len(),
        gateway.addr
    );
    let mut every = tokio::time::interval(Duration::from_secs(incident_every_s.max(10)));
    every.tick().await;
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = every.tick() => {
                n += 1;
                // Every fourth round the field crews repair what broke.
                let r = if n % 4 == 0 { fleet.repair_all().await.map(|_| "field crews repaired all devices".to_string()) } else { fleet.random_incident().await };
                match r {
                    Ok(what) => tracing::info!(incident = %what, "demo"),
                    Err(e) => tracing::warn!(error = %e, "demo incident failed"),
                }
            }
        }
    }
    fleet.stop().await;
    running.shutdown().await;
    Ok(())
}
