//! From a received MQTT publish to a [`Message`] for the engine, or the
//! reason it is rejected: the same function for the live collector and for
//! replay, so a malformed payload replays as it was judged live.

use super::core::Message;
use crate::config::Config;
use crate::device::{self, Profile};
use crate::model::{SiteId, Timestamp};
use crate::telemetry::quarantine::preview;
use std::sync::Arc;

/// A publish no profile accepts, or for a site not configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Metric label: `unknown_topic`, `unknown_site`, `malformed`, …
    pub reason: String,
    pub error: String,
}

/// The profiles in the order publishes are matched against them (by model,
/// so the first match is the same on every run).
pub fn profiles_in_order(cfg: &Config) -> Vec<Arc<Profile>> {
    let mut p: Vec<Arc<Profile>> = cfg.profiles.values().cloned().collect();
    p.sort_by(|a, b| a.device.model.cmp(&b.device.model));
    p
}

/// Decodes one publish (`topic` including the configured prefix). The
/// message's `raw` text (the latest raw message on the board, the
/// quarantine's preview) is made only when `keep_raw`: a replay has no use
/// for it.
pub fn decode_publish(
    cfg: &Config,
    profiles: &[Arc<Profile>],
    topic: &str,
    payload: &[u8],
    arrived: Timestamp,
    keep_raw: bool,
) -> Result<(SiteId, Message), Rejected> {
    let reject = |reason: &str, error: String| Rejected {
        reason: reason.into(),
        error,
    };
    let Some(local) = topic.strip_prefix(cfg.mqtt.topic_prefix.as_str()) else {
        return Err(reject(
            "unknown_topic",
            format!("topic {topic:?} is outside the prefix {:?}", cfg.mqtt.topic_prefix),
        ));
    };
    let mut decoded = None;
    for prof in profiles {
        match device::decode(prof, local, payload, arrived, cfg.mqtt.max_payload_bytes) {
            Ok(Some(d)) => {
                decoded = Some(d);
                break;
            }
            Ok(None) => continue,
            Err(e) => return Err(reject(e.reason(), e.to_string())),
        }
    }
    let Some(d) = decoded else {
        return Err(reject(
            "unknown_topic",
            format!("topic {topic:?} matches no device profile"),
        ));
    };
    let site = match SiteId::new(&d.site) {
        Ok(s) if cfg.site(s.as_str()).is_some() => s,
        _ => return Err(reject("unknown_site", format!("site {:?} is not configured", d.site))),
    };
    Ok((
        site,
        Message {
            decoded: d,
            topic: topic.to_string(),
            raw: if keep_raw { preview(payload) } else { String::new() },
            arrived,
        },
    ))
}
