//! Logs and metrics. `Metrics` holds every Prometheus series the service
//! exposes; `events` has one small struct per operational event whose `emit()`
//! writes the log line and bumps the metric together, so the two never disagree.
//! `quarantine` keeps the latest rejected inputs (collector, pipeline, store)
//! for engineers to inspect.

pub mod events;
pub mod metrics;
pub mod quarantine;

pub use metrics::Metrics;

/// Installs the `tracing` subscriber: human-readable lines, level from
/// `RUST_LOG` (default `info`).
pub fn init_tracing() {
    init_tracing_default("info,rumqttd=off");
}

/// As `init_tracing`, with another default level (tests use `warn`). A second
/// call is a no-op.
pub fn init_tracing_default(default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Err only means a subscriber is already installed (another test did it).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .try_init();
}

pub use metrics::StateLabel as StateLabelPub;

pub fn metrics_edge(edge: &str) -> metrics::EdgeLabel {
    metrics::EdgeLabel { edge: edge.to_string() }
}

pub fn device_label(device: &str) -> metrics::DeviceLabel {
    metrics::DeviceLabel {
        device: device.to_string(),
    }
}

pub fn device_kind_label(device: &str, kind: &str) -> metrics::DeviceKindLabel {
    metrics::DeviceKindLabel {
        device: device.to_string(),
        kind: kind.to_string(),
    }
}
