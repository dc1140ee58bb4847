//! The InfluxDB 2 sink: delivers the store's export feed (every committed
//! reading and alarm transition, in commit order) to an InfluxDB 2 bucket
//! through the `influxdb2` client, in requests of at most `batch_lines`
//! lines, gzipped.
//!
//! It is a subscriber, never on the ingest path: a commit's record is in the
//! feed when the commit is, and the sink reads it from there. The feed's
//! oldest row is the durable cursor — a record leaves only after InfluxDB
//! answered 204 for all of its lines — so an outage of days resends in order
//! once the server is back, and a restart resumes where it stopped. A crash
//! between a write and the cursor's move resends some lines: harmless, as a
//! line with the same series and timestamp replaces the one stored.
//!
//! Line protocol, one measurement per point kind:
//!
//! ```text
//! q,area=north,kind=dma,point=B017.q,site=B017 value=88.25,quality=0i 1767225600000
//! alarm,area=north,condition=pressure_low,kind=dma,priority=high,site=B017,source=B017.p active=1i,acked=0i,state="unack_active",action="raise",alarm_id="…" 1767225600000
//! ```
//!
//! - measurement: the point's name in its site (`q`, `p`, `level`: the same
//!   kind of quantity at every site, so one measurement is one unit); alarm
//!   transitions are the `alarm` measurement;
//! - tags: `site`, `point`, `area` and `kind` (the site's kind: `dma`,
//!   `pump_station`), all from configuration, so a series is one point;
//! - fields: `value` (float; absent when the device sent nothing usable) and
//!   `quality` as an integer field, 0 good / 1 uncertain / 2 bad. A field, not
//!   a tag: a tag would split a point's history into a series per quality,
//!   so a graph of the point would need a merge and a re-sent reading whose
//!   quality differed would not replace the old one; as an integer it is also
//!   kept by servers that store numbers only;
//! - timestamp: the reading's event time (ms), never the arrival time, so a
//!   backlog after an LTE outage lands where it happened.

use crate::config::{Config, InfluxSection};
use crate::store::feed::{Feed, FeedReading, FeedRecord, FeedTransition};
use crate::store::Commits;
use crate::telemetry::Metrics;
use backon::BackoffBuilder;
use influxdb2::api::write::TimestampPrecision;
use influxdb2::models::DataPoint;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Site metadata the lines are tagged with.
#[derive(Debug, Clone, Default)]
struct SiteTags {
    area: String,
    kind: &'static str,
}

/// Builds the lines of feed records.
pub struct Lines {
    sites: HashMap<String, SiteTags>,
}

impl Lines {
    pub fn new(cfg: &Config) -> Self {
        Self::of_sites(
            cfg.sites
                .iter()
                .map(|s| (s.id.as_str().to_string(), s.area.clone(), s.kind)),
        )
    }

    /// From `(site id, area, kind)`.
    pub fn of_sites(sites: impl Iterator<Item = (String, String, crate::model::SiteKind)>) -> Self {
        Self {
            sites: sites
                .map(|(id, area, kind)| {
                    (
                        id,
                        SiteTags {
                            area,
                            kind: kind.as_str(),
                        },
                    )
                })
                .collect(),
        }
    }

    fn tags(
        &self,
        site: &str,
        b: influxdb2::models::data_point::DataPointBuilder,
    ) -> influxdb2::models::data_point::DataPointBuilder {
        let b = b.tag("site", site);
        match self.sites.get(site) {
            Some(t) => {
                let b = b.tag("kind", t.kind);
                if t.area.is_empty() {
                    b
                } else {
                    b.tag("area", t.area.clone())
                }
            }
            None => b,
        }
    }

    pub fn reading(&self, r: &FeedReading) -> Option<DataPoint> {
        let (site, local) = r.point.split_once('.')?;
        let mut b = self.tags(site, DataPoint::builder(local)).tag("point", r.point.clone());
        if let Some(v) = r.value.filter(|v| v.is_finite()) {
            b = b.field("value", v);
        }
        let quality = match r.quality {
            crate::model::Quality::Good => 0i64,
            crate::model::Quality::Uncertain => 1,
            crate::model::Quality::Bad => 2,
        };
        b.field("quality", quality).timestamp(r.t).build().ok()
    }

    pub fn transition(&self, t: &FeedTransition) -> Option<DataPoint> {
        self.tags(&t.site, DataPoint::builder("alarm"))
            .tag("source", t.source.clone())
            .tag("condition", t.condition.clone())
            .tag("priority", t.priority.clone())
            .field("active", t.active as i64)
            .field("acked", t.acked as i64)
            .field("state", t.state.clone())
            .field("action", t.action.clone())
            .field("alarm_id", t.alarm_id.clone())
            .timestamp(t.at)
            .build()
            .ok()
    }

    /// Every line of the records, in commit order.
    pub fn of(&self, records: &[FeedRecord]) -> Vec<DataPoint> {
        records
            .iter()
            .flat_map(|r| {
                r.readings
                    .iter()
                    .filter_map(|x| self.reading(x))
                    .chain(r.transitions.iter().filter_map(|x| self.transition(x)))
            })
            .collect()
    }
}

/// Why a write did not land.
#[derive(Debug)]
enum Failure {
    /// Worth retrying: the server is unreachable, slow, busy, or refuses the
    /// token (a token is fixed by an operator; the data waits for it).
    Retry(&'static str, String),
    /// The server refused the lines themselves (HTTP 400/422: malformed or
    /// out of its retention); resending them cannot succeed.
    Refused(u16, String),
}

pub struct Sink {
    cfg: InfluxSection,
    client: influxdb2::Client,
    feed: Arc<Feed>,
    lines: Lines,
    metrics: Arc<Metrics>,
}

/// Gathers commits for a moment after the first one wakes the sink, so a
/// request carries many commits' lines rather than one each.
const LINGER: Duration = Duration::from_millis(100);
/// How often the pending metrics are refreshed while nothing happens.
const IDLE: Duration = Duration::from_secs(1);

impl Sink {
    pub fn new(cfg: &Config, influx: &InfluxSection, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        Self::open(&cfg.store_location(), influx, Lines::new(cfg), metrics)
    }

    /// On the store at `store`, tagging lines with `lines`' sites.
    pub fn open(
        store: &crate::store::Location,
        influx: &InfluxSection,
        lines: Lines,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let mut b = influxdb2::ClientBuilder::new(influx.url.as_str(), influx.org.as_str(), influx.token());
        if influx.gzip {
            b = b.gzip(true);
        }
        Ok(Self {
            cfg: influx.clone(),
            client: b.build()?,
            feed: Arc::new(Feed::open_at(store)?),
            lines,
            metrics,
        })
    }

    pub fn start(self, commits: Commits, cancel: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.run(commits, cancel))
    }

    async fn run(self, mut commits: Commits, cancel: CancellationToken) {
        tracing::info!(url = %self.cfg.url, bucket = %self.cfg.bucket, "InfluxDB sink started");
        let mut after = 0i64;
        loop {
            self.refresh_pending().await;
            let feed = self.feed.clone();
            let want = self.cfg.batch_lines;
            let records = match tokio::task::spawn_blocking(move || feed.next(after, want)).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "reading the export feed failed; retried");
                    Vec::new()
                }
                Err(e) => {
                    tracing::error!(error = %e, "export feed reader failed");
                    Vec::new()
                }
            };
            let Some(last) = records.last().map(|r| r.seq) else {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = commits.recv() => tokio::time::sleep(LINGER).await,
                    _ = tokio::time::sleep(IDLE) => {}
                }
                continue;
            };
            let points = self.lines.of(&records);
            drop(records);
            for chunk in points.chunks(self.cfg.batch_lines) {
                if !self.deliver(chunk, &cancel).await {
                    tracing::info!("InfluxDB sink stopped mid-delivery; resumes from the feed at the next start");
                    return;
                }
            }
            let feed = self.feed.clone();
            match tokio::task::spawn_blocking(move || feed.done(last)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "moving the export cursor failed; lines may be resent"),
                Err(e) => tracing::error!(error = %e, "export cursor task failed"),
            }
            // Whether or not the delete landed, these were delivered: go on
            // after them (a failed delete only means a resend after a restart).
            after = last;
        }
        tracing::info!("InfluxDB sink stopped");
    }

    async fn refresh_pending(&self) {
        let feed = self.feed.clone();
        if let Ok(Ok(p)) = tokio::task::spawn_blocking(move || feed.pending()).await {
            self.metrics.influx_pending.set((p.readings + p.transitions) as i64);
            let lag = p
                .oldest
                .map(|t| (chrono::Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0)
                .unwrap_or(0.0);
            self.metrics.influx_lag.set(lag);
        }
    }

    /// Writes one request's lines, retrying with backoff until the server
    /// takes them (or refuses them as malformed). False when cancelled.
    async fn deliver(&self, chunk: &[DataPoint], cancel: &CancellationToken) -> bool {
        let mut delays = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(self.cfg.max_backoff_s))
            .with_jitter()
            .without_max_times()
            .build();
        loop {
            match self.write(chunk).await {
                Ok(()) => {
                    self.metrics.influx_lines.inc_by(chunk.len() as u64);
                    return true;
                }
                Err(Failure::Refused(status, text)) => {
                    self.metrics
                        .influx_errors
                        .get_or_create(&Metrics::reason(&format!("http_{status}")))
                        .inc();
                    self.metrics.influx_rejected.inc_by(chunk.len() as u64);
                    tracing::error!(status, lines = chunk.len(), response = %text, "InfluxDB refused the lines; skipped");
                    return true;
                }
                Err(Failure::Retry(reason, text)) => {
                    self.metrics.influx_errors.get_or_create(&Metrics::reason(reason)).inc();
                    let wait = delays.next().unwrap_or(Duration::from_secs(self.cfg.max_backoff_s));
                    tracing::warn!(reason, error = %text, retry_in_ms = wait.as_millis() as u64, "InfluxDB write failed; retrying");
                    self.refresh_pending().await;
                    tokio::select! {
                        _ = cancel.cancelled() => return false,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    async fn write(&self, chunk: &[DataPoint]) -> Result<(), Failure> {
        let body = futures::stream::iter(chunk.to_vec());
        let call = self
            .client
            .write_with_precision(&self.cfg.bucket, body, TimestampPrecision::Milliseconds);
        match tokio::time::timeout(Duration::from_secs(self.cfg.timeout_s), call).await {
            Err(_) => Err(Failure::Retry(
                "timeout",
                format!("no answer in {} s", self.cfg.timeout_s),
            )),
            Ok(Ok(())) => Ok(()),
            Ok(Err(influxdb2::RequestError::Http { status, text })) => match status.as_u16() {
                s @ (400 | 422) => Err(Failure::Refused(s, text)),
                s => Err(Failure::Retry(
                    match s {
                        401 | 403 => "unauthorized",
                        429 => "throttled",
                        _ => "http_error",
                    },
                    format!("HTTP {s}: {text}"),
                )),
            },
            Ok(Err(e)) => Err(Failure::Retry("unreachable", e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Quality;

    fn lines() -> Lines {
        let mut sites = HashMap::new();
        sites.insert(
            "B017".to_string(),
            SiteTags {
                area: "north side".into(),
                kind: "dma",
            },
        );
        Lines { sites }
    }

    fn text(p: &DataPoint) -> String {
        use influxdb2::models::WriteDataPoint;
        let mut v = Vec::new();
        p.write_data_point_to(&mut v).unwrap();
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn a_reading_is_one_line_per_point_kind_tagged_by_site_at_event_time() {
        let l = lines();
        let r = FeedReading {
            point: "B017.q".into(),
            t: 1_767_225_600_000,
            value: Some(88.25),
            quality: Quality::Uncertain,
        };
        let line = text(&l.reading(&r).unwrap());
        assert!(line.starts_with("q,"), "{line}");
        for tag in ["site=B017", "point=B017.q", "kind=dma", r"area=north\ side"] {
            assert!(line.contains(tag), "{tag} in {line}");
        }
        assert!(line.contains("value=88.25"), "{line}");
        assert!(line.contains("quality=1i"), "{line}");
        assert!(line.trim_end().ends_with(" 1767225600000"), "{line}");
    }

    #[test]
    fn a_reading_without_a_value_still_carries_its_quality_and_an_unknown_site_no_area() {
        let l = lines();
        let r = FeedReading {
            point: "X9.p".into(),
            t: 5,
            value: None,
            quality: Quality::Bad,
        };
        let line = text(&l.reading(&r).unwrap());
        assert!(!line.contains("value="), "{line}");
        assert!(line.contains("quality=2i"), "{line}");
        assert!(!line.contains("area="), "{line}");
        let nan = FeedReading {
            value: Some(f64::NAN),
            ..r
        };
        assert!(!text(&l.reading(&nan).unwrap()).contains("NaN"));
    }

    #[test]
    fn an_alarm_transition_is_its_own_measurement() {
        let l = lines();
        let t = FeedTransition {
            at: 42,
            alarm_id: "a-1".into(),
            site: "B017".into(),
            source: "B017.p".into(),
            condition: "pressure_low".into(),
            priority: "high".into(),
            action: "raise".into(),
            state: "unack_active".into(),
            active: true,
            acked: false,
        };
        let line = text(&l.transition(&t).unwrap());
        assert!(line.starts_with("alarm,"), "{line}");
        for part in [
            "condition=pressure_low",
            "priority=high",
            "source=B017.p",
            "active=1i",
            "acked=0i",
            "state=\"unack_active\"",
            "action=\"raise\"",
        ] {
            assert!(line.contains(part), "{part} in {line}");
        }
        assert!(line.trim_end().ends_with(" 42"), "{line}");
    }
}
