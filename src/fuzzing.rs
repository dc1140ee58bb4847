//! The bodies of the fuzz targets (`fuzz/`), here so that the committed corpus
//! also replays through exactly the same code in the ordinary test suite
//! (`tests/fuzz_corpus.rs`), without the fuzzing toolchain. Each takes any
//! bytes and must return — never panic, hang or allocate without bound.

use crate::config::{Config, EmbeddedSource, Source, SourceError};
use crate::device::modbus::{decode_poll, ModbusMap, RangeData};
use crate::device::{self, Profile};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

fn shipped() -> &'static Config {
    static CFG: OnceLock<Config> = OnceLock::new();
    CFG.get_or_init(|| Config::load_embedded().expect("the shipped configuration loads"))
}

/// Every shipped profile's payload decoding: the first byte picks a
/// (profile, topic) of the shipped configuration, the rest is the payload.
pub fn decode_profiles(data: &[u8]) {
    static CASES: OnceLock<Vec<(Arc<Profile>, String)>> = OnceLock::new();
    let cases = CASES.get_or_init(|| {
        let cfg = shipped();
        let mut profiles: Vec<_> = cfg.profiles.values().cloned().collect();
        profiles.sort_by(|a, b| a.device.model.cmp(&b.device.model));
        let mut v = Vec::new();
        for p in profiles {
            let Some(site) = cfg.sites.iter().find(|s| s.profile == p.device.model) else {
                continue;
            };
            for m in &p.messages {
                let topic = m.topic_for(site.id.as_str(), site.device.as_str());
                v.push((p.clone(), topic));
            }
        }
        v
    });
    let Some((&pick, payload)) = data.split_first() else {
        return;
    };
    if cases.is_empty() {
        return;
    }
    let (profile, topic) = &cases[pick as usize % cases.len()];
    let arrived = chrono::DateTime::from_timestamp(1_767_225_600, 0).unwrap_or_default();
    let _ = device::decode(profile, topic, payload, arrived, 256 * 1024);
}

/// The controller profile's register decoding on any values and lengths: the
/// bytes are cut into the poll's ranges, one length byte each (a short or long
/// answer is a gateway fault the decoder must survive).
pub fn decode_modbus(data: &[u8]) {
    static MAP: OnceLock<Option<ModbusMap>> = OnceLock::new();
    let Some(map) = MAP.get_or_init(|| shipped().profiles.values().find_map(|p| p.modbus.clone())) else {
        return;
    };
    let mut bytes = data.iter().copied();
    let mut ranges = Vec::new();
    for r in map.plan() {
        let Some(n) = bytes.next() else { break };
        let n = (n as usize) % (r.count as usize + 3);
        let d = if r.table.is_bits() {
            RangeData::Bits((0..n).map(|_| bytes.next().unwrap_or(0) & 1 == 1).collect())
        } else {
            RangeData::Words(
                (0..n)
                    .map(|_| u16::from_be_bytes([bytes.next().unwrap_or(0), bytes.next().unwrap_or(0)]))
                    .collect(),
            )
        };
        ranges.push((r, d));
    }
    let _ = decode_poll(map, &ranges);
}

/// The configuration loader: the input, split at NUL bytes, is the main,
/// sites, rules and notification files; the device profiles are the shipped
/// ones.
pub fn config_loader(data: &[u8]) {
    struct Fuzzed<'a>(Vec<&'a str>);
    impl Source for Fuzzed<'_> {
        fn read(&self, path: &Path) -> Result<String, SourceError> {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let i = if path == Path::new("config/main.toml") {
                0
            } else if name.contains("sites") {
                1
            } else if name.contains("rules") {
                2
            } else if name.contains("notify") {
                3
            } else {
                return EmbeddedSource.read(path);
            };
            Ok(self.0.get(i).copied().unwrap_or("").to_string())
        }
        fn list_toml(&self, dir: &Path) -> Result<Vec<PathBuf>, SourceError> {
            EmbeddedSource.list_toml(dir)
        }
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = Config::load_from(&Fuzzed(text.split('\0').collect()), Path::new("config/main.toml"));
}
