//! Every shipped device profile's payload decoding, on any bytes: the first
//! byte picks a (profile, topic) of the shipped configuration, the rest is the
//! payload. It must return a decoded message or a clear error — never panic,
//! hang, or allocate without bound.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mizuban::config::Config;
use mizuban::device::{self, Profile};
use std::sync::{Arc, OnceLock};

struct Case {
    profile: Arc<Profile>,
    topic: String,
}

fn cases() -> &'static Vec<Case> {
    static CASES: OnceLock<Vec<Case>> = OnceLock::new();
    CASES.get_or_init(|| {
        let cfg = Config::load_embedded().expect("the shipped configuration loads");
        let mut v = Vec::new();
        let mut profiles: Vec<_> = cfg.profiles.values().cloned().collect();
        profiles.sort_by(|a, b| a.device.model.cmp(&b.device.model));
        for p in profiles {
            let Some(site) = cfg.sites.iter().find(|s| s.profile == p.device.model) else { continue };
            for m in &p.messages {
                let topic = m.topic.replace("{site}", site.id.as_str()).replace("{device}", site.device.as_str());
                v.push(Case { profile: p.clone(), topic });
            }
        }
        v
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, payload)) = data.split_first() else { return };
    let cases = cases();
    if cases.is_empty() {
        return;
    }
    let c = &cases[pick as usize % cases.len()];
    let arrived = chrono::DateTime::from_timestamp(1_767_225_600, 0).unwrap();
    let _ = device::decode(&c.profile, &c.topic, payload, arrived, 256 * 1024);
});
