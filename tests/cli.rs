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
        // At the line of the bad value, not the rule's header.
        format!("{rules}:4: point:"),
        format!("{rules}:8: hh: rule \"p\": limits must satisfy ll < l < h < hh"),
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

/// Every error in one run, across files, even when one file has a type error
/// (serde stops at the first), each at the line of the bad value; references
/// to sites, areas and policies that do not exist; a store that cannot be
/// written.
#[test]
fn check_config_finds_every_error_across_files_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("devices")).unwrap();
    std::fs::copy(
        repo().join("devices/akita-dma-logger.toml"),
        d.join("devices/akita-dma-logger.toml"),
    )
    .unwrap();
    // A file where the store's directory would have to be.
    std::fs::write(d.join("notadir"), "").unwrap();
    let main = r#"[service]
name = "broken"
devices_dir = "devices"
sites_file = "sites.toml"
rules_file = "rules.toml"
notify_file = "notify.toml"

[mqtt]
host = "127.0.0.1"
port = "eighteen-eighty-three"
client_id = "x"

[store]
path = "notadir/x.db"

[http]
listen = 8080
"#;
    std::fs::write(d.join("main.toml"), main).unwrap();
    std::fs::write(
        d.join("sites.toml"),
        r#"[[site]]
id = "B01"
kind = "dma"
name = "one"
area = "north"
lat = "far north"
lon = 140.1
device = "AKT-DMA-001"
profile = "akita-dma-logger"

[[site]]
id = "B02"
kind = "dma"
name = "two"
area = "north"
lat = 39.7
lon = 140.1
device = "AKT-DMA-002"
profile = "no-such-profile"

[[site]]
id = "B03"
kind = "reservoir"
name = "three"
area = "north"
lat = 39.7
lon = 140.1
device = "AKT-DMA-003"
profile = "akita-dma-logger"
"#,
    )
    .unwrap();
    std::fs::write(
        d.join("rules.toml"),
        r#"[[rule]]
id = "p"
type = "limits"
applies_to = { sites = ["ZZ-999"] }
point = "p"
condition = "p"
en = "P"
ja = "P"
l = 0.1

[[rule]]
id = "q"
type = "limits"
applies_to = { areas = ["atlantis"] }
point = "p"
condition = "q"
en = "Q"
ja = "Q"
h = 0.9
"#,
    )
    .unwrap();
    std::fs::write(
        d.join("notify.toml"),
        r#"[[webhook]]
name = "ops"
url = "http://127.0.0.1:9/hook"
secret = "s3cret-s3cret-s3cret"

[[person]]
id = "chief"
name = "Chief"
contact = [{kind = "webhook", to = "ops"}]

[[policy]]
id = "p"
repeat_minutes = 60
level = [{after_minutes = 0, notify = ["person:chief"]}]

[[route]]
policy = "p"

[[route]]
sites = ["ZZ-999"]
policy = "p"

[[route]]
areas = ["north"]
policy = "no-such-policy"
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
    let f = |n: &str| d.join(n).display().to_string();
    for want in [
        // Both type errors of the main file, not just the first.
        format!("{}:10: port:", f("main.toml")),
        format!("{}:17: listen:", f("main.toml")),
        // The site with a type error, and the sites after it still checked.
        format!("{}:6: lat:", f("sites.toml")),
        format!("{}:19: profile: site B02: unknown device profile", f("sites.toml")),
        format!("{}:23: kind:", f("sites.toml")),
        // References to what does not exist, at their lines.
        format!(
            "{}:4: sites: rule \"p\": applies_to names site \"ZZ-999\"",
            f("rules.toml")
        ),
        format!(
            "{}:14: areas: rule \"q\": applies_to names area \"atlantis\"",
            f("rules.toml")
        ),
        format!("{}:20: sites: route: no site \"ZZ-999\"", f("notify.toml")),
        format!("{}:25: policy: route: no policy \"no-such-policy\"", f("notify.toml")),
    ] {
        assert!(err.contains(&want), "missing {want:?} in:\n{err}");
    }

    // Once the files are right, a store that cannot be written is reported.
    std::fs::write(
        d.join("main.toml"),
        main.replace("port = \"eighteen-eighty-three\"", "port = 1883")
            .replace("listen = 8080", "listen = \"127.0.0.1:8080\"")
            .replace("notify_file = \"notify.toml\"\n", ""),
    )
    .unwrap();
    std::fs::write(d.join("sites.toml"), "[[site]]\nid = \"B01\"\nkind = \"dma\"\nname = \"one\"\narea = \"north\"\nlat = 39.7\nlon = 140.1\ndevice = \"AKT-DMA-001\"\nprofile = \"akita-dma-logger\"\n").unwrap();
    std::fs::write(d.join("rules.toml"), "").unwrap();
    let out = mizuban()
        .args(["check-config", "--config"])
        .arg(d.join("main.toml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("{}:13: path: store", f("main.toml"))) && err.contains("not a directory"),
        "{err}"
    );
}

/// `replay` and `export` as an engineer types them: a capture in, JSON out
/// (exit 0 whatever it found); bad times, a broken candidate and a missing
/// record are clear errors with the documented exit codes.
#[test]
fn replay_and_export_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let capture = dir.path().join("c.jsonl");
    std::fs::write(
        &capture,
        concat!(
            r#"{"capture":"mizuban/1","from":"2026-12-01T03:00:00Z","to":"2026-12-01T04:00:00Z","created_at":"2026-12-01T04:00:00Z"}"#,
            "\n",
            r#"{"arrived":"2026-12-01T03:00:02.125Z","source":"mqtt","topic":"akita/v1/dma/B17/AKT-DMA-017/telemetry","payload_b64":"bm90IGpzb24="}"#,
            "\n",
            r#"{"arrived":"2026-12-01T03:00:05.000Z","source":"modbus","site":"MP-0190","error":"timeout"}"#,
            "\n"
        ),
    )
    .unwrap();
    let config = repo().join("config/akita.toml");
    let out = mizuban()
        .args(["replay", "--json", "-", "--config"])
        .arg(&config)
        .arg("--capture")
        .arg(&capture)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["capture"]["inputs"], 2);
    assert_eq!(v["capture"]["poll_errors"], 1);
    assert_eq!(v["capture"]["rejected"]["malformed"], 1);
    assert_eq!(v["runs"][0]["name"], "configured");
    assert!(v.get("diff").is_none(), "no candidate, no diff");
    // Not a terminal: no progress bar in what a script captures.
    assert!(!String::from_utf8_lossy(&out.stderr).contains('%'));

    let broken = dir.path().join("broken-rules.toml");
    std::fs::write(&broken, "[[rule]]\nid = \"x\"\ntype = \"limits\"\n").unwrap();
    let out = mizuban()
        .args(["replay", "--config"])
        .arg(&config)
        .arg("--capture")
        .arg(&capture)
        .arg("--candidate")
        .arg(&broken)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));

    let out = mizuban()
        .args([
            "export",
            "--from",
            "yesterday",
            "--to",
            "2026-12-01T00:00:00Z",
            "--out",
            "x",
            "--config",
        ])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("RFC 3339"));

    // A configuration whose store was never written: nothing to export.
    let cfg_dir = dir.path().join("cfg");
    std::fs::create_dir(&cfg_dir).unwrap();
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(
            "devices_dir = \"../devices\"",
            &format!("devices_dir = {:?}", repo().join("devices")),
        )
        .replace(
            "sites_file = \"akita-sites.toml\"",
            &format!("sites_file = {:?}", repo().join("config/akita-sites.toml")),
        )
        .replace(
            "rules_file = \"akita-rules.toml\"",
            &format!("rules_file = {:?}", repo().join("config/akita-rules.toml")),
        );
    std::fs::write(cfg_dir.join("m.toml"), text).unwrap();
    let out = mizuban()
        .args([
            "export",
            "--from",
            "2026-12-01T00:00:00Z",
            "--to",
            "2026-12-02T00:00:00Z",
            "--out",
        ])
        .arg(dir.path().join("e.jsonl"))
        .arg("--config")
        .arg(cfg_dir.join("m.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("error: store"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `[store] kind = "postgres"`: check-config says what is missing or
/// unreachable, at the store's lines, and accepts a server that answers.
#[test]
fn check_config_checks_a_postgres_store() {
    let dir = tempfile::tempdir().unwrap();
    let main = repo().join("config/akita.toml");
    let text = std::fs::read_to_string(&main).unwrap();
    let cfg = repo().join("config");
    let base = text
        .replace(
            "\"../devices\"",
            &format!("{:?}", repo().join("devices").display().to_string()),
        )
        .replace(
            "\"akita-sites.toml\"",
            &format!("{:?}", cfg.join("akita-sites.toml").display().to_string()),
        )
        .replace(
            "\"akita-rules.toml\"",
            &format!("{:?}", cfg.join("akita-rules.toml").display().to_string()),
        );
    let check = |store: &str| {
        let p = dir.path().join("main.toml");
        std::fs::write(&p, base.replace("path = \"../data/mizuban.db\"", store)).unwrap();
        let out = mizuban().args(["check-config", "--config"]).arg(&p).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, err) = check("kind = \"postgres\"\npath = \"x.db\"");
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("kind: kind = \"postgres\" needs `url` (or `url_env`)"),
        "{err}"
    );
    let (code, err) = check("kind = \"postgres\"\nurl_env = \"MIZUBAN_NO_SUCH_VAR\"\npath = \"x.db\"");
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("environment variable MIZUBAN_NO_SUCH_VAR is not set"),
        "{err}"
    );
    let (code, err) =
        check("kind = \"postgres\"\nurl = \"postgres://mizuban:secret@127.0.0.1:1/mizuban\"\npath = \"x.db\"");
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("cannot reach PostgreSQL: postgres://mizuban:***@127.0.0.1:1/mizuban"),
        "{err}"
    );
    assert!(!err.contains("secret"), "the password is never printed: {err}");
    // A server that answers (the one the store's tests use).
    let admin =
        std::env::var("MIZUBAN_TEST_POSTGRES").unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/postgres".into());
    let up = std::net::TcpStream::connect("127.0.0.1:5432").is_ok();
    assert!(
        up || std::env::var("CI").as_deref() != Ok("true"),
        "PostgreSQL is required under CI=true"
    );
    if up {
        let (code, err) = check(&format!("kind = \"postgres\"\nurl = \"{admin}\"\npath = \"x.db\""));
        assert_eq!(code, Some(0), "{err}");
    }
}
