use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QualityLabel {
    pub quality: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabel {
    pub action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeviceLabel {
    pub device: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeviceKindLabel {
    pub device: String,
    pub kind: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn modbus_latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 12))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelResultLabel {
    pub channel: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EdgeLabel {
    pub edge: String,
}

/// Every series, registered once. Cloning the handles is cheap (atomics).
pub struct Metrics {
    pub registry: Registry,
    pub messages: Counter,
    pub duplicate_messages: Counter,
    pub duplicate_samples: Counter,
    pub quarantined: Family<Reason, Counter>,
    pub sample_problems: Family<Reason, Counter>,
    pub samples: Family<QualityLabel, Counter>,
    pub late_samples: Counter,
    pub alarm_transitions: Family<ActionLabel, Counter>,
    pub alarms: Family<StateLabel, Gauge>,
    pub pipeline_latency: Histogram,
    /// The master station's own lag: message arrival minus the device's send time.
    pub ingest_lag: Histogram,
    /// The same, of the latest message that carried a send time.
    pub ingest_lag_last: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub store_commit_seconds: Histogram,
    pub store_errors: Counter,
    pub mqtt_connected: Gauge,
    pub mqtt_reconnects: Counter,
    pub mqtt_errors: Family<Reason, Counter>,
    pub mqtt_owed: Gauge,
    pub mqtt_stalled: Gauge,
    pub mqtt_stalled_seconds: Gauge,
    pub mqtt_forced_reconnects: Family<Reason, Counter>,
    pub mqtt_deferred: Counter,
    pub store_rejected: Family<Reason, Counter>,
    pub queue_full: Family<EdgeLabel, Counter>,
    pub sse_lagged: Counter,
    pub devices_comm_lost: Gauge,
    pub modbus_polls: Family<DeviceLabel, Counter>,
    pub modbus_errors: Family<DeviceKindLabel, Counter>,
    pub modbus_latency: HistogramFamily<DeviceLabel>,
    pub modbus_overruns: Counter,
    pub modbus_stalled: Gauge,
    pub notify_attempts: Family<ChannelResultLabel, Counter>,
    pub notify_pending: Gauge,
    pub notify_failed: Counter,
    pub influx_lag: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub influx_pending: Gauge,
    pub influx_errors: Family<Reason, Counter>,
    pub influx_lines: Counter,
    pub influx_rejected: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("mizuban");
        let m = Self {
            messages: Counter::default(),
            duplicate_messages: Counter::default(),
            duplicate_samples: Counter::default(),
            quarantined: Family::default(),
            sample_problems: Family::default(),
            samples: Family::default(),
            late_samples: Counter::default(),
            alarm_transitions: Family::default(),
            alarms: Family::default(),
            pipeline_latency: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
            ingest_lag: Histogram::new(exponential_buckets(0.001, 2.0, 22)),
            ingest_lag_last: Gauge::default(),
            store_commit_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            store_errors: Counter::default(),
            mqtt_connected: Gauge::default(),
            mqtt_reconnects: Counter::default(),
            mqtt_errors: Family::default(),
            mqtt_owed: Gauge::default(),
            mqtt_stalled: Gauge::default(),
            mqtt_stalled_seconds: Gauge::default(),
            mqtt_forced_reconnects: Family::default(),
            mqtt_deferred: Counter::default(),
            store_rejected: Family::default(),
            queue_full: Family::default(),
            sse_lagged: Counter::default(),
            devices_comm_lost: Gauge::default(),
            modbus_polls: Family::default(),
            modbus_errors: Family::default(),
            modbus_latency: Family::new_with_constructor(modbus_latency_histogram),
            modbus_overruns: Counter::default(),
            modbus_stalled: Gauge::default(),
            notify_attempts: Family::default(),
            notify_pending: Gauge::default(),
            notify_failed: Counter::default(),
            influx_lag: Gauge::default(),
            influx_pending: Gauge::default(),
            influx_errors: Family::default(),
            influx_lines: Counter::default(),
            influx_rejected: Counter::default(),
            registry: Registry::default(),
        };
        r.register(
            "messages",
            "Device messages handled by the pipeline (duplicates included, collector-level quarantine not)",
            m.messages.clone(),
        );
        r.register(
            "duplicate_messages",
            "Messages dropped as already seen by (device, boot, seq)",
            m.duplicate_messages.clone(),
        );
        r.register(
            "duplicate_samples",
            "Samples dropped as already stored by (point, time)",
            m.duplicate_samples.clone(),
        );
        r.register(
            "quarantined_messages",
            "Messages quarantined whole, by reason",
            m.quarantined.clone(),
        );
        r.register(
            "sample_problems",
            "Samples dropped or marked bad inside otherwise good messages, by reason",
            m.sample_problems.clone(),
        );
        r.register("samples", "Samples stored, by quality", m.samples.clone());
        r.register(
            "late_samples",
            "Samples older than their point's newest (history and late review only)",
            m.late_samples.clone(),
        );
        r.register(
            "alarm_transitions",
            "Alarm transitions journaled, by action",
            m.alarm_transitions.clone(),
        );
        r.register("alarms", "Open alarm occurrences by ISA-18.2 state", m.alarms.clone());
        r.register(
            "pipeline_latency_seconds",
            "From message arrival to alarms evaluated and stored",
            m.pipeline_latency.clone(),
        );
        r.register(
            "ingest_lag_seconds",
            "From the device's send time (sent_at) to mizuban receiving the message: the broker's and mizuban's delay, not the device's",
            m.ingest_lag.clone(),
        );
        r.register(
            "ingest_lag_last_seconds",
            "ingest_lag_seconds of the latest message that carried a send time",
            m.ingest_lag_last.clone(),
        );
        r.register(
            "store_commit_seconds",
            "Duration of one store transaction",
            m.store_commit_seconds.clone(),
        );
        r.register("store_errors", "Failed store transactions", m.store_errors.clone());
        r.register(
            "mqtt_connected",
            "1 while the MQTT collector is connected",
            m.mqtt_connected.clone(),
        );
        r.register(
            "mqtt_reconnects",
            "MQTT reconnect attempts after a failure",
            m.mqtt_reconnects.clone(),
        );
        r.register("mqtt_errors", "MQTT connection errors, by kind", m.mqtt_errors.clone());
        r.register(
            "mqtt_owed",
            "MQTT messages taken in and not yet acknowledged to the broker",
            m.mqtt_owed.clone(),
        );
        r.register(
            "mqtt_stalled",
            "1 while messages are owed to the broker and none was acknowledged for mqtt.stall_after_s",
            m.mqtt_stalled.clone(),
        );
        r.register(
            "mqtt_stalled_seconds",
            "How long the MQTT intake has made no progress while stalled",
            m.mqtt_stalled_seconds.clone(),
        );
        r.register(
            "mqtt_forced_reconnects",
            "Connections dropped on purpose so the broker redelivers, by reason",
            m.mqtt_forced_reconnects.clone(),
        );
        r.register(
            "mqtt_deferred",
            "Messages not taken because the intake was full; the broker redelivers them after a reconnect",
            m.mqtt_deferred.clone(),
        );
        r.register(
            "store_rejected_rows",
            "Rows that could never be committed, quarantined instead of retried for ever, by reason",
            m.store_rejected.clone(),
        );
        r.register(
            "queue_full",
            "Times a bounded queue was full and the sender waited (backpressure), by edge",
            m.queue_full.clone(),
        );
        r.register(
            "sse_lagged",
            "Event-stream clients that fell behind and were told to resynchronise",
            m.sse_lagged.clone(),
        );
        r.register(
            "devices_comm_lost",
            "Devices currently in communication loss",
            m.devices_comm_lost.clone(),
        );
        r.register(
            "modbus_polls",
            "Modbus polls attempted, per device",
            m.modbus_polls.clone(),
        );
        r.register(
            "modbus_poll_errors",
            "Modbus polls failed, per device and kind (timeout, exception_NN, refused, transport)",
            m.modbus_errors.clone(),
        );
        r.register(
            "modbus_poll_seconds",
            "Duration of successful Modbus polls, per device",
            m.modbus_latency.clone(),
        );
        r.register(
            "modbus_overruns",
            "Modbus polls that were due before the previous one finished (schedule skipped ahead)",
            m.modbus_overruns.clone(),
        );
        r.register(
            "modbus_stalled_endpoints",
            "Modbus endpoints whose polling task has stopped making progress",
            m.modbus_stalled.clone(),
        );
        r.register(
            "notification_attempts",
            "Attempts to deliver a notification, by channel (email, webhook) and result (ok, error)",
            m.notify_attempts.clone(),
        );
        r.register(
            "notifications_pending",
            "Notifications in the outbox not yet delivered (incl. waiting for a retry)",
            m.notify_pending.clone(),
        );
        r.register(
            "notifications_failed",
            "Notifications given up on one contact method after every retry",
            m.notify_failed.clone(),
        );
        r.register(
            "influx_lag_seconds",
            "Age of the oldest commit not yet written to InfluxDB (0 when caught up)",
            m.influx_lag.clone(),
        );
        r.register(
            "influx_pending_points",
            "Readings and alarm transitions committed but not yet written to InfluxDB",
            m.influx_pending.clone(),
        );
        r.register(
            "influx_write_errors",
            "Failed InfluxDB writes, by reason (unreachable, timeout, http_<status>); each is retried",
            m.influx_errors.clone(),
        );
        r.register(
            "influx_lines",
            "Lines written to InfluxDB (a resend after a crash or a timeout counts again)",
            m.influx_lines.clone(),
        );
        r.register(
            "influx_rejected_lines",
            "Lines in write requests InfluxDB refused as malformed (HTTP 400), logged and skipped",
            m.influx_rejected.clone(),
        );
        Self { registry: r, ..m }
    }

    pub fn encode(&self) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &self.registry).expect("writing to a String cannot fail");
        s
    }

    pub fn reason(label: &str) -> Reason {
        Reason {
            reason: label.to_string(),
        }
    }
}
