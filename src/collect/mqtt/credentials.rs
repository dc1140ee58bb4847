//! Device identity on a Mosquitto deployment: from the sites configuration,
//! the files Mosquitto needs so that every device has its own user name and
//! password and may publish only on its own topics, and the service alone
//! may read them. Pure: configuration and known passwords in, file texts out;
//! `mizuban mqtt-credentials` writes them.
//!
//! - `passwd`: Mosquitto's password file, PBKDF2-SHA512 (`$7$`, as
//!   `mosquitto_passwd` writes it);
//! - `acl`: `user` blocks, `topic write` for each device's own topics (its
//!   last will included), `topic read` of every device topic for the service;
//! - `devices.csv`: device, site, user name, password — for provisioning the
//!   devices; kept secret (written 0600), and read back on the next run so a
//!   device keeps its password;
//! - `mosquitto.conf`: the listener settings that make the above binding:
//!   no anonymous clients, and `use_username_as_clientid` so no client can
//!   take over another's client id (the service's included).

use crate::config::Config;
use base64::Engine;
use std::collections::BTreeMap;

pub struct MosquittoFiles {
    pub passwd: String,
    pub acl: String,
    pub devices_csv: String,
    pub conf: String,
}

/// Mosquitto's `$7$` password hash: PBKDF2-HMAC-SHA512, 101 iterations, a
/// 12-byte salt, both base64.
pub fn mosquitto_hash(password: &str, salt: &[u8]) -> String {
    const ITERATIONS: u32 = 101;
    let mut out = [0u8; 64];
    pbkdf2::pbkdf2_hmac::<sha2::Sha512>(password.as_bytes(), salt, ITERATIONS, &mut out);
    let b64 = base64::engine::general_purpose::STANDARD;
    format!("$7${ITERATIONS}${}${}", b64.encode(salt), b64.encode(out))
}

/// `device -> password` from an earlier `devices.csv`.
pub fn known_passwords(csv: &str) -> BTreeMap<String, String> {
    csv.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f.len() == 4).then(|| (f[0].to_string(), f[3].to_string()))
        })
        .collect()
}

/// The files for `cfg`; devices in `known` keep their passwords, new ones get
/// `fresh()`.
pub fn mosquitto_files(
    cfg: &Config,
    known: &BTreeMap<String, String>,
    mut fresh: impl FnMut() -> String,
    mut salt: impl FnMut() -> [u8; 12],
) -> Result<MosquittoFiles, String> {
    let (Some(user), Some(password)) = (&cfg.mqtt.username, &cfg.mqtt.password) else {
        return Err("[mqtt] username and password must be set: they become the service's broker account".into());
    };
    let prefix = &cfg.mqtt.topic_prefix;
    let mut passwd = format!("{user}:{}\n", mosquitto_hash(password, &salt()));
    let mut acl = String::from("# Written by `mizuban mqtt-credentials`; one user per device.\n\n");
    acl.push_str(&format!(
        "# The master station reads every device topic.\nuser {user}\n"
    ));
    for f in super::filters(cfg) {
        acl.push_str(&format!("topic read {f}\n"));
    }
    let mut csv = String::from("device,site,username,password\n");
    let mut sites: Vec<_> = cfg.sites.iter().filter(|s| s.modbus.is_none()).collect();
    sites.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
    for s in sites {
        let Some(profile) = cfg.profiles.get(&s.profile) else {
            continue;
        };
        let device = s.device.as_str();
        if device == user {
            return Err(format!("device {device} has the service's own user name"));
        }
        let pw = known.get(device).cloned().unwrap_or_else(&mut fresh);
        passwd.push_str(&format!("{device}:{}\n", mosquitto_hash(&pw, &salt())));
        csv.push_str(&format!("{device},{},{device},{pw}\n", s.id));
        acl.push_str(&format!("\n# {} {}\nuser {device}\n", s.id, s.name));
        let mut topics: Vec<String> = profile
            .messages
            .iter()
            .map(|m| format!("{prefix}{}", m.topic_for(s.id.as_str(), device)))
            .collect();
        topics.sort();
        topics.dedup();
        for t in topics {
            acl.push_str(&format!("topic write {t}\n"));
        }
    }
    let conf = "# Include in mosquitto.conf (paths to where these files are installed).\n\
                allow_anonymous false\n\
                password_file /etc/mosquitto/mizuban/passwd\n\
                acl_file /etc/mosquitto/mizuban/acl\n\
                # The client id is the user name: no client can take over another's\n\
                # session (the master station's included).\n\
                use_username_as_clientid true\n"
        .to_string();
    Ok(MosquittoFiles {
        passwd,
        acl,
        devices_csv: csv,
        conf,
    })
}
