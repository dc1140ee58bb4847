//! Device models as data. A profile under `devices/` says which topics a model
//! publishes on, how its JSON maps to points, what its alarm codes and bits mean
//! and how often it reports. This module loads profiles and decodes payloads with
//! them; it is pure (bytes and time in, values out) so it is fuzzed and benched
//! without a broker. Adding a second vendor's logger is a new profile file.

mod decode;
mod json;
pub(crate) use json::Text;
pub mod modbus;
mod path;
mod profile;

pub use decode::{decode, DecodeError, Decoded, DeviceEvent, MessageIdent, RawReading, SampleProblem};
pub use path::JsonPath;
pub use profile::{
    CommSpec, ConditionSpec, MessageKind, MessageSpec, PointSpec, Priority, Profile, TopicTemplate, ValueType,
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Quality;
    use chrono::{DateTime, Utc};
    use std::path::Path;

    /// A second vendor's logger with its own topics, field names and units is
    /// a profile, not code.
    const OTHER_VENDOR: &str = r#"
[device]
model = "othervendor-flowlog"
kind = "dma"
device_field = "serial"
site_field = "zone"

[comm]
expected_interval_s = 900
missed_intervals = 3
priority = "medium"
en = "Logger silent"
ja = "ロガー無応答"

[[message]]
name = "data"
topic = "ov/{site}/{device}/up"
schema = "ov.v2"
kind = "samples"
samples = "rows"
time = "ts"
flags = "st"
flag_quality = { "E" = "uncertain", "F" = "bad" }

  [[message.point]]
  point = "q"
  path = "flow_lps"
  unit = "m3/h"
  scale = 3.6
  min = 0.0

  [[message.point]]
  point = "p"
  path = "press.kpa"
  unit = "MPa"
  scale = 0.001
  max = 2.0

[[message]]
name = "alarm"
topic = "ov/{site}/{device}/alm"
schema = "ov.alarm"
kind = "event"
code = "id"
state = "edge"

[[condition]]
code = "LOWP"
priority = "high"
en = "Low pressure"
ja = "低圧"
"#;

    #[test]
    fn a_second_vendor_is_a_profile() {
        let p = Profile::parse(Path::new("devices/othervendor.toml"), OTHER_VENDOR).unwrap();
        let arrived = DateTime::parse_from_rfc3339("2025-03-01T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let payload = br#"{"schema":"ov.v2","serial":"OV-9","zone":"B05","boot":1,"seq":7,
            "rows":[{"ts":"2025-03-01T09:45:00Z","flow_lps":12.5,"press":{"kpa":420}},
                    {"ts":"2025-03-01T09:50:00Z","flow_lps":12.0,"press":{"kpa":415},"st":["E"]}]}"#;
        let d = decode(&p, "ov/B05/OV-9/up", payload, arrived, 1 << 20)
            .unwrap()
            .unwrap();
        assert_eq!(d.site, "B05");
        assert_eq!(d.device.as_deref(), Some("OV-9"));
        assert_eq!(d.ident, Some(MessageIdent { boot: 1, seq: 7 }));
        let q: Vec<(f64, Quality)> = d
            .readings
            .iter()
            .filter(|r| r.point == "q")
            .map(|r| (r.value.unwrap(), r.quality))
            .collect();
        assert_eq!(q, vec![(45.0, Quality::Good), (43.2, Quality::Uncertain)]);
        let p0 = d.readings.iter().find(|r| r.point == "p").unwrap();
        assert!((p0.value.unwrap() - 0.42).abs() < 1e-9);
        assert_eq!(p.topics[0].filter(), "ov/+/+/up");
        // Its alarm events map by its own code and edge fields.
        let ev = decode(&p, "ov/B05/OV-9/alm", br#"{"schema":"ov.alarm","serial":"OV-9","boot":1,"seq":8,"t":"2025-03-01T09:55:00Z","id":"LOWP","edge":"raise"}"#, arrived, 1 << 20)
            .unwrap()
            .unwrap();
        assert_eq!(ev.events[0].code, "LOWP");
        assert!(ev.events[0].raise);
        // Not this vendor's topic: not this profile's business.
        assert_eq!(
            decode(&p, "akita/v1/dma/B05/X/telemetry", b"{}", arrived, 1 << 20),
            Ok(None)
        );
    }

    #[test]
    fn shipped_profiles_decode_the_spec_examples() {
        let dma = Profile::parse(Path::new("dma"), include_str!("../../devices/akita-dma-logger.toml")).unwrap();
        let arrived = DateTime::parse_from_rfc3339("2025-01-21T18:00:10Z")
            .unwrap()
            .with_timezone(&Utc);
        // The example payload of field-devices.md §1, verbatim.
        let example = br#"{"schema":"dma-telemetry/1","device_id":"AKT-DMA-017","block_id":"B17",
 "boot":12,"seq":48213,"sent_at":"2025-01-21T18:00:07Z","log_interval_s":300,
 "upload_interval_s":3600,"backlog":0,
 "units":{"q":"m3/h","p":"MPa","tot":"m3"},
 "samples":[{"t":"2025-01-21T17:05:00Z","q":42.8,"p":0.412,"tot":1283345.2},
            {"t":"2025-01-21T17:10:00Z","q":41.9,"p":0.415,"tot":1283348.7,"flags":["estimated"]}],
 "diag":{"batt_v":3.52,"batt_pct":71,"rssi_dbm":-87,"temp_c":3.5}}"#;
        let d = decode(
            &dma,
            "akita/v1/dma/B17/AKT-DMA-017/telemetry",
            example,
            arrived,
            1 << 20,
        )
        .unwrap()
        .unwrap();
        assert_eq!(d.readings.len(), 6 + 3);
        assert_eq!(d.interval_s, Some(3600));
        assert_eq!(d.readings.iter().filter(|r| r.quality == Quality::Uncertain).count(), 3);
        let will = decode(
            &dma,
            "akita/v1/dma/B17/AKT-DMA-017/status",
            br#"{"online":false}"#,
            arrived,
            1 << 20,
        )
        .unwrap()
        .unwrap();
        assert_eq!(will.kind, MessageKind::Will);
        assert_eq!(will.ident, None);

        let mps = Profile::parse(Path::new("mps"), include_str!("../../devices/akita-mps-notifier.toml")).unwrap();
        let arrived = DateTime::parse_from_rfc3339("2025-07-03T05:40:05Z")
            .unwrap()
            .with_timezone(&Utc);
        let status =
            br#"{"schema":"mps-status/1","station_id":"MP-0123","device_id":"AKT-MPN-0123","boot":3,"seq":90211,
 "t":"2025-07-03T05:40:00Z","backlog":0,"alarm_bits":0,"status_bits":13,"level_cm":48,
 "pumps":[{"n":1,"run":true,"auto":true,"current_a":6.4,"run_min":184233,"starts":61877},
          {"n":2,"run":false,"auto":true,"current_a":0.0,"run_min":181020,"starts":61105}],
 "power":{"mains":true,"on_battery":false,"batt_v":13.1},"rssi_dbm":-79}"#;
        let d = decode(&mps, "akita/v1/mps/MP-0123/status", status, arrived, 1 << 20)
            .unwrap()
            .unwrap();
        let get = |n: &str| d.readings.iter().find(|r| r.point == n).unwrap().value.unwrap();
        assert_eq!(
            (
                get("level"),
                get("p1_run"),
                get("p2_run"),
                get("p1_current"),
                get("p2_starts")
            ),
            (48.0, 1.0, 0.0, 6.4, 61105.0)
        );
        assert_eq!(d.bits.map(|b| b.1), Some(0));
    }
}
