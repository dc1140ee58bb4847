//! The fuzzers' committed corpus (`fuzz/corpus/<target>/`, grown by
//! `cargo fuzz run`) replayed through the same target bodies in the ordinary
//! suite: every input the fuzzers kept — the ones that found new paths, and
//! any crash found and fixed — must still return without a panic.

use std::path::PathBuf;

fn replay(target: &str, f: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        f(&data);
        n += 1;
    }
    assert!(n > 0, "no corpus in {}", dir.display());
}

#[test]
fn decode_profiles_corpus() {
    replay("decode_profiles", mizuban::fuzzing::decode_profiles);
}

#[test]
fn decode_modbus_corpus() {
    replay("decode_modbus", mizuban::fuzzing::decode_modbus);
}

#[test]
fn config_loader_corpus() {
    replay("config_loader", mizuban::fuzzing::config_loader);
}
