//! The command line as an operator or a deployment script uses it.

use std::process::Command;

fn mizuban() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mizuban"))
}

fn repo() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn check_config_accepts_the_shipped_configuration() {
    let out = mizuban()
        .args(["check-config", "--config"])
        .arg(repo().join("config/akita.toml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("241 sites"), "{s}");
}

#[test]
fn check_config_reports_every_error_with_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("devices")).unwrap();
    std::fs::copy(
        repo().join("devices/akita-dma-logger.toml"),
        d.join("devices/akita-dma-logger.toml"),
    )
    .unwrap();
    std::fs::write(
        d.join("main.toml"),
        r#"[service]
name = "broken"
devices_dir = "devices"
sites_file = "sites.toml"
rules_file = "rules.toml"
shards = 0

[mqtt]
host = "127.0.0.1"
port = 1883
client_id = "x"

[store]
path = "x.db"

[http]
listen = "not-an-address"

[[token]]
name = "short"
token = "abc"
role = "operator"
"#,
    )
    .unwrap();
    std::fs::write(
        d.join("sites.toml"),
        r#"[[site]]
id = "B01"
kind = "dma"
name = "one"
area = "a"
lat = 39.7
lon = 140.1
device = "AKT-DMA-001"
profile = "akita-dma-logger"

[[site]]
id = "B02"
kind = "dma"
name = "two"
area = "a"
lat = 39.7
lon = 140.1
device = "AKT-DMA-002"
profile = "no-such-profile"
"#,
    )
    .unwrap();
    std::fs::write(
        d.join("rules.toml"),
        r#"[[rule]]
id = "p"
type = "limits"
point = "pressure"
condition = "p"
en = "P"
ja = "P"
hh = 0.1
h = 0.5
"#,
    )
    .unwrap();
    let out = mizuban()
        .args(["check-config", "--config"])
        .arg(d.join("main.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let main = d.join("main.toml").display().to_string();
    let sites = d.join("sites.toml").display().to_string();
    let rules = d.join("rules.toml").display().to_string();
    for want in [
        format!("{main}:6: shards:"),
        format!("{main}:17: listen:"),
        format!("{main}:19: token:"),
        format!("{sites}:19: profile: site B02: unknown device profile \"no-such-profile\""),
        format!("{rules}:1: point:"),
        format!("{rules}:1: hh: rule \"p\": limits must satisfy ll < l < h < hh"),
    ] {
        assert!(err.contains(&want), "missing {want:?} in:\n{err}");
    }
    // A syntax error or an unknown field names its line too.
    std::fs::write(d.join("rules.toml"), "[[rule]]\nid = \"p\"\ntype = \"limits\"\npoint = \"q\"\ncondition = \"p\"\nen = \"P\"\nja = \"P\"\nhh = 1.0\nsetpoint = 3\n").unwrap();
    let out = mizuban()
        .args(["check-config", "--config"])
        .arg(d.join("main.toml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{rules}:9: setpoint: unknown field `setpoint`")),
        "{err}"
    );
}

#[test]
fn bad_usage_exits_2() {
    let out = mizuban().args(["frobnicate"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = mizuban().args(["run"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = mizuban()
        .args(["run", "--config", "/nonexistent/mizuban.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
