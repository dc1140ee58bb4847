//! How many controllers one Modbus collector polls at a 10 s interval without
//! falling behind, with 100-800 ms simulated answer times (per request).
//! `cargo bench --bench modbus_poll`; results in docs/PERFORMANCE.md.
//!
//! Two shapes: controllers each behind their own router (one connection each,
//! polled concurrently), and stations behind one gateway (one connection,
//! requests serialized). Each configuration runs for 35 s of wall time.

use mizuban::config::Config;
use mizuban_sim::modbus::{Controllers, Fault};
use mizuban_sim::mps::MpsOptions;
use std::time::Duration;

const RUN: Duration = Duration::from_secs(35);

fn config(dir: &std::path::Path, sites: &[(String, u16, u8)]) -> Config {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut s = String::new();
    for (i, (id, port, unit)) in sites.iter().enumerate() {
        s.push_str(&format!(
            "[[site]]\nid = \"{id}\"\nkind = \"pump_station\"\nname = \"{id}\"\narea = \"bench\"\nlat = 39.7\nlon = 140.1\n\
             device = \"AKT-MPC-{i:05}\"\nprofile = \"akita-mps-controller\"\n\
             modbus = {{ host = \"127.0.0.1\", port = {port}, unit = {unit}, poll_interval_ms = 10000, timeout_ms = 1500, retries = 1 }}\n\n"
        ));
    }
    std::fs::write(dir.join("sites.toml"), s).unwrap();
    std::fs::write(
        dir.join("main.toml"),
        format!(
            "[service]\nname = \"bench\"\ndevices_dir = \"{}\"\nsites_file = \"sites.toml\"\nrules_file = \"{}\"\n\n\
             [mqtt]\nhost = \"127.0.0.1\"\nport = 1\nclient_id = \"bench\"\n\n[store]\npath = \"bench.db\"\n\n[http]\nlisten = \"127.0.0.1:0\"\n",
            repo.join("devices").display(),
            repo.join("config/akita-rules.toml").display()
        ),
    )
    .unwrap();
    Config::load(&dir.join("main.toml")).unwrap()
}

struct Outcome {
    polls_ok: f64,
    timeouts: f64,
    overruns: f64,
    mean_poll_s: f64,
}

fn scrape(text: &str) -> Outcome {
    let sum = |prefix: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let count = sum("mizuban_modbus_poll_seconds_count");
    Outcome {
        polls_ok: count,
        timeouts: sum("mizuban_modbus_poll_errors_total"),
        overruns: sum("mizuban_modbus_overruns_total"),
        mean_poll_s: if count > 0.0 {
            sum("mizuban_modbus_poll_seconds_sum") / count
        } else {
            0.0
        },
    }
}

async fn run(label: &str, servers: Vec<Controllers>, sites: Vec<(String, u16, u8)>) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &sites);
    let n = sites.len();
    let app = mizuban::app::start(
        cfg,
        mizuban::app::Options {
            mqtt: false,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    tokio::time::sleep(RUN).await;
    let text = reqwest::get(format!("http://{}/metrics", app.http_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let o = scrape(&text);
    // Polls due in RUN at 10 s: at 0, 10, 20, 30 s = 4 per controller.
    let due = 4.0 * n as f64;
    println!(
        "{label:<34} controllers {n:>5}  polls ok {:>6} of {:>6} due ({:>5.1} %)  errors {:>4}  overruns {:>5}  mean poll {:>5.2} s",
        o.polls_ok,
        due,
        100.0 * o.polls_ok / due,
        o.timeouts.abs(),
        o.overruns,
        o.mean_poll_s
    );
    app.shutdown().await;
    drop(servers);
}

fn lte(o: &Controllers, units: impl Iterator<Item = u8>) {
    for u in units {
        o.set_fault(
            u,
            Fault::SlowRange(Duration::from_millis(100), Duration::from_millis(800)),
        );
    }
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // cargo bench probing for tests
    }
    let t0 = chrono::Utc::now();
    let opts = |i: usize| MpsOptions::new(&format!("MP-{i:05}"), &format!("AKT-MPC-{i:05}"));
    // Controllers each behind their own LTE router: one connection each.
    for n in [100usize, 500, 1000] {
        let mut servers = Vec::new();
        let mut sites = Vec::new();
        for i in 0..n {
            let c = Controllers::start(0, vec![(1, opts(i))], t0).await.unwrap();
            lte(&c, 1..=1);
            sites.push((format!("MP-{i:05}"), c.addr.port(), 1));
            servers.push(c);
        }
        run("own router each", servers, sites).await;
    }
    // Stations behind one gateway: requests on its connection are serialized.
    for k in [4u8, 6, 8, 12] {
        let c = Controllers::start(0, (1..=k).map(|u| (u, opts(u as usize))).collect(), t0)
            .await
            .unwrap();
        lte(&c, 1..=k);
        let sites = (1..=k).map(|u| (format!("MP-{u:05}"), c.addr.port(), u)).collect();
        run("one gateway", vec![c], sites).await;
    }
}
