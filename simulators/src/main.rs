//! `mizuban-sim`: run simulated Akita field devices against an MQTT broker.
//!
//! mizuban-sim [--host 127.0.0.1] [--port 1883] [--blocks 41] [--stations 200] [--username U --password P]
//!             [--log-interval-s 300] [--upload-interval-s 3600] [--incident-every-s 0]

use mizuban_sim::fleet::{Fleet, FleetOptions};
use mizuban_sim::Mode;
use std::time::Duration;

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> Result<T, String> {
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{name} needs a valid value")),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("mizuban-sim [--host H] [--port P] [--blocks N] [--stations N] [--log-interval-s S] [--upload-interval-s S] [--incident-every-s S] [--username U --password P]");
        return std::process::ExitCode::SUCCESS;
    }
    let parsed = (|| -> Result<(FleetOptions, u64), String> {
        Ok((
            FleetOptions {
                host: arg(&args, "--host", "127.0.0.1".to_string())?,
                port: arg(&args, "--port", 1883)?,
                blocks: arg(&args, "--blocks", 41)?,
                stations: arg(&args, "--stations", 200)?,
                log_interval_s: arg(&args, "--log-interval-s", 300)?,
                upload_interval_s: arg(&args, "--upload-interval-s", 3600)?,
                mode: Mode::Realtime {
                    step: Duration::from_secs(5),
                },
                topic_prefix: arg(&args, "--topic-prefix", String::new())?,
                credentials: match (
                    arg(&args, "--username", String::new())?,
                    arg(&args, "--password", String::new())?,
                ) {
                    (u, p) if !u.is_empty() => Some((u, p)),
                    _ => None,
                },
            },
            arg(&args, "--incident-every-s", 0)?,
        ))
    })();
    let (opts, every) = match parsed {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    let fleet = match Fleet::spawn(opts).await {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(1);
        }
    };
    println!(
        "fleet running: {} loggers, {} stations",
        fleet.loggers.len(),
        fleet.stations.len()
    );
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tokio::time::sleep(Duration::from_secs(every.max(1))), if every > 0 => {
                match fleet.random_incident().await {
                    Ok(what) => println!("incident: {what}"),
                    Err(e) => eprintln!("{e}"),
                }
            }
        }
    }
    fleet.stop().await;
    std::process::ExitCode::SUCCESS
}
