//! The configuration loader on any text: the input is split into the main,
//! sites, rules and notification files (at NUL bytes); the device profiles
//! are the shipped ones. It must return a configuration or a list of errors
//! with file and line — never panic or hang.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mizuban::config::{Config, EmbeddedSource, Source, SourceError};
use std::path::{Path, PathBuf};

struct Fuzzed<'a> {
    files: Vec<&'a str>,
}

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
        Ok(self.files.get(i).copied().unwrap_or("").to_string())
    }
    fn list_toml(&self, dir: &Path) -> Result<Vec<PathBuf>, SourceError> {
        EmbeddedSource.list_toml(dir)
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let files: Vec<&str> = text.split('\0').collect();
    let _ = Config::load_from(&Fuzzed { files }, Path::new("config/main.toml"));
});
