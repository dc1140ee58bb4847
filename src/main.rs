//! The `mizuban` command line. See `mizuban --help` and README.md.

use clap::{Parser, Subcommand};
use mizuban::config::Config;
use mizuban::model::Timestamp;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

mod demo;

#[derive(Parser)]
#[command(
    name = "mizuban",
    version,
    about = "水番 — telemetry monitoring master station for water utilities"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Embedded MQTT broker + the simulated Akita fleet + the service. Needs nothing installed.
    Demo {
        /// HTTP listen address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        http: SocketAddr,
        /// Where the demo keeps its database (default: a fresh temporary directory).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Seconds between simulated incidents.
        #[arg(long, default_value_t = 90)]
        incident_every_s: u64,
    },
    /// The service, as deployed.
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate everything the service would load; exit 0, or 2 with every error.
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
    },
    /// Write the inputs the service received in a span as a capture file
    /// (JSON Lines; gzip when FILE ends in .gz).
    Export {
        #[arg(long)]
        config: PathBuf,
        /// Start of the span (RFC 3339), inclusive.
        #[arg(long, value_parser = parse_time)]
        from: Timestamp,
        /// End of the span (RFC 3339), exclusive.
        #[arg(long, value_parser = parse_time)]
        to: Timestamp,
        /// Only these sites (comma-separated ids).
        #[arg(long, value_delimiter = ',')]
        sites: Vec<String>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Recorded inputs through the whole pipeline on a simulated clock:
    /// what the rules raised, and with --candidate what another rules file
    /// would have. Nothing is sent; the live store is only read.
    Replay {
        #[arg(long)]
        config: PathBuf,
        /// A capture file (see interfaces.md); or --from/--to for the service's own record.
        #[arg(long, conflicts_with_all = ["from", "to"], required_unless_present = "from")]
        capture: Option<PathBuf>,
        #[arg(long, value_parser = parse_time, requires = "to")]
        from: Option<Timestamp>,
        #[arg(long, value_parser = parse_time, requires = "from")]
        to: Option<Timestamp>,
        /// A second rules file run over the same inputs.
        #[arg(long)]
        candidate: Option<PathBuf>,
        /// Write the result as JSON here (`-` for standard output).
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write a self-contained HTML report here (charts inline; nothing fetched when opened).
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Print the argon2 hash of a password read from standard input, for `[[user]]`.
    HashPassword,
    /// Write Mosquitto's password and ACL files for the configured devices (one
    /// user per device, bound to its own topics), devices.csv with their
    /// passwords, and the mosquitto.conf lines; keeps passwords of an earlier run.
    MqttCredentials {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

/// glibc gives each thread that allocates under contention an arena of its
/// own, up to 8 per core, and an arena keeps what was freed in it for
/// reuse by that arena only. The service's threads (the runtime's workers,
/// the store writer, the blocking pool) hand batches to each other, so
/// memory freed in one arena is not reused by the next allocation in
/// another: in the contract bench's storm the arenas held about 30 MiB
/// (RSS 163 MiB, 136 MiB with two arenas). Two arenas keep the two cores
/// from contending on one lock. Set before any thread starts; the
/// `MALLOC_ARENA_MAX` environment variable, when set, is left to decide.
fn fewer_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; no thread exists yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

fn main() -> ExitCode {
    fewer_malloc_arenas();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    mizuban::telemetry::init_tracing();
    match cli.cmd {
        Cmd::CheckConfig { config } => match Config::load(&config).and_then(|c| match c.store_problem() {
            Some(e) => Err(vec![e]),
            None => Ok(c),
        }) {
            Ok(c) => {
                println!(
                    "{}: ok ({} sites, {} rules, {} device profiles)",
                    config.display(),
                    c.sites.len(),
                    c.rules.len(),
                    c.profiles.len()
                );
                ExitCode::SUCCESS
            }
            Err(errors) => {
                for e in &errors {
                    eprintln!("{e}");
                }
                eprintln!("{} error(s)", errors.len());
                ExitCode::from(2)
            }
        },
        Cmd::MqttCredentials { config, out } => match write_credentials(&config, &out) {
            Ok(n) => {
                println!(
                    "{}: passwd, acl, devices.csv ({n} devices), mosquitto.conf",
                    out.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e:#}");
                ExitCode::from(2)
            }
        },
        Cmd::HashPassword => {
            let mut pw = String::new();
            if let Err(e) = std::io::stdin().read_line(&mut pw) {
                eprintln!("cannot read password: {e}");
                return ExitCode::from(1);
            }
            match demo::hash_password(pw.trim_end_matches(['\n', '\r'])) {
                Ok(h) => {
                    println!("{h}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(1)
                }
            }
        }
        Cmd::Run { config } => {
            let cfg = match Config::load(&config) {
                Ok(c) => c,
                Err(errors) => {
                    for e in &errors {
                        eprintln!("{e}");
                    }
                    return ExitCode::from(2);
                }
            };
            runtime(async move {
                let running = mizuban::app::start(cfg, Default::default()).await?;
                wait_for_signal().await;
                running.shutdown().await;
                Ok(())
            })
        }
        Cmd::Export {
            config,
            from,
            to,
            sites,
            out,
        } => export(&config, mizuban::store::InputFilter { from, to, sites }, &out),
        Cmd::Replay {
            config,
            capture,
            from,
            to,
            candidate,
            json,
            report,
        } => {
            let inputs = match (capture, from, to) {
                (Some(c), _, _) => mizuban::replay::Inputs::Capture(c),
                (None, Some(from), Some(to)) => mizuban::replay::Inputs::Record { from, to },
                _ => {
                    eprintln!("error: give --capture FILE, or --from and --to");
                    return ExitCode::from(2);
                }
            };
            replay(&config, inputs, candidate, json, report)
        }
        Cmd::Demo {
            http,
            data_dir,
            incident_every_s,
        } => runtime(demo::run(http, data_dir, incident_every_s)),
    }
}

fn parse_time(s: &str) -> Result<Timestamp, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| format!("{s:?} is not an RFC 3339 time (2026-12-01T00:00:00Z): {e}"))
}

fn load_or_exit(config: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(config).map_err(|errors| {
        for e in &errors {
            eprintln!("{e}");
        }
        ExitCode::from(2)
    })
}

fn export(config: &std::path::Path, filter: mizuban::store::InputFilter, out: &std::path::Path) -> ExitCode {
    let cfg = match load_or_exit(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match mizuban::replay::export(&cfg, &filter, out, chrono::Utc::now()) {
        Ok(n) => {
            eprintln!("{}: {n} inputs", out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// The progress bar: rate and ETA on a terminal; indicatif draws nothing
/// when standard error is not one.
struct Bar(indicatif::ProgressBar);

impl mizuban::replay::Progress for Bar {
    fn update(&self, done: u64, total: u64) {
        self.0.set_length(total);
        self.0.set_position(done);
    }
}

fn replay(
    config: &std::path::Path,
    inputs: mizuban::replay::Inputs,
    candidate: Option<PathBuf>,
    json: Option<PathBuf>,
    report: Option<PathBuf>,
) -> ExitCode {
    use std::sync::Arc;
    let cfg = match load_or_exit(config) {
        Ok(c) => Arc::new(c),
        Err(code) => return code,
    };
    let candidate = match candidate {
        None => None,
        Some(rules) => match Config::load_with_rules(config, &rules) {
            Ok(c) => Some(Arc::new(c)),
            Err(errors) => {
                for e in &errors {
                    eprintln!("{} (candidate {}): {e}", config.display(), rules.display());
                }
                return ExitCode::from(2);
            }
        },
    };
    let bar = indicatif::ProgressBar::with_draw_target(Some(0), indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {percent:>3}% {binary_bytes_per_sec} ETA {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let (out, trends) =
        match mizuban::replay::replay_with(cfg.clone(), candidate, &inputs, &Bar(bar.clone()), report.is_some()) {
            Ok(o) => o,
            Err(e) => {
                bar.abandon();
                eprintln!("error: {e}");
                return ExitCode::from(1);
            }
        };
    bar.finish_and_clear();
    let offset = cfg.service.utc_offset_hours;
    for r in &out.runs {
        eprintln!(
            "{}: {} alarm occurrences, {} readings, {} notifications ({} held for a summary)",
            r.run.name,
            r.run.alarms.len(),
            r.run.readings,
            r.run.notifications.len(),
            r.run.held_notifications
        );
        const SHOWN: usize = 20;
        for m in r.run.notifications.iter().take(SHOWN) {
            eprintln!("  {}", mizuban::replay::describe(m, &r.run.alarms, offset));
        }
        if r.run.notifications.len() > SHOWN {
            eprintln!(
                "  … and {} more (all of them in --json)",
                r.run.notifications.len() - SHOWN
            );
        }
    }
    if let Some(d) = &out.diff {
        eprintln!(
            "candidate: {} added, {} removed, {} moved; occurrences paged {} -> {}",
            d.added.len(),
            d.removed.len(),
            d.changed.len(),
            d.pages.0,
            d.pages.1
        );
    }
    if let (Some(path), Some(trends)) = (report, trends) {
        let html = mizuban::replay::report::render(&out, &trends, &cfg);
        if let Err(e) = std::fs::write(&path, html) {
            eprintln!("error: writing {}: {e}", path.display());
            return ExitCode::from(1);
        }
        eprintln!("report: {}", path.display());
    }
    if let Some(path) = json {
        let mut bytes = serde_json::to_vec_pretty(&out).expect("plain data serializes");
        bytes.push(b'\n');
        let written = if path.as_os_str() == "-" {
            use std::io::Write;
            std::io::stdout().write_all(&bytes)
        } else {
            std::fs::write(&path, &bytes)
        };
        if let Err(e) = written {
            eprintln!("error: writing {}: {e}", path.display());
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
}

fn runtime(f: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(f) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; Ctrl-C only");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}

fn write_credentials(config: &std::path::Path, out: &std::path::Path) -> anyhow::Result<usize> {
    use anyhow::Context;
    use mizuban::collect::mqtt::credentials::{known_passwords, mosquitto_files};
    use std::io::Write;
    let cfg = Config::load(config)
        .map_err(|errs| anyhow::anyhow!("{}", errs.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n")))?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let known = std::fs::read_to_string(out.join("devices.csv"))
        .map(|t| known_passwords(&t))
        .unwrap_or_default();
    let files = mosquitto_files(&cfg, &known, mizuban::api::random_password, || {
        let mut s = [0u8; 12];
        rand::Rng::fill(&mut rand::rng(), &mut s);
        s
    })
    .map_err(|e| anyhow::anyhow!(e))?;
    let secret = |name: &str, text: &str| -> anyhow::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let p = out.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&p)
            .with_context(|| format!("writing {}", p.display()))?;
        f.write_all(text.as_bytes())
            .with_context(|| format!("writing {}", p.display()))
    };
    secret("passwd", &files.passwd)?;
    secret("devices.csv", &files.devices_csv)?;
    std::fs::write(out.join("acl"), &files.acl).context("writing acl")?;
    std::fs::write(out.join("mosquitto.conf"), &files.conf).context("writing mosquitto.conf")?;
    Ok(files.devices_csv.lines().count() - 1)
}
