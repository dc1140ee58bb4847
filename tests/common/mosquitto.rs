//! A Mosquitto of the test's own: its own loopback port, configuration and
//! persistence directory, so a test can stop, restart and reconfigure the
//! broker without touching the machine's shared one. Readiness is a TCP
//! handshake, never a fixed sleep.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Mosquitto {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

fn binary() -> Option<PathBuf> {
    ["/usr/sbin/mosquitto", "/usr/bin/mosquitto", "/usr/local/sbin/mosquitto"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Whether Mosquitto is installed (missing: skip, or fail under `CI=true`).
pub fn present() -> bool {
    super::peer_present(
        binary().is_some(),
        "mosquitto",
        "apt-get install mosquitto (.ci/run does)",
    )
}

impl Mosquitto {
    /// Starts a broker with persistence and room for a long outage's backlog;
    /// `extra` is appended to its configuration (listeners, auth, ACLs).
    pub fn start(extra: &str) -> Self {
        Self::start_on(super::free_port(), extra)
    }

    /// As `start`, on a port chosen beforehand (to write it into a
    /// configuration first).
    pub fn start_on(port: u16, extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // `user root`: started by root (CI), Mosquitto would otherwise switch
        // to its own user and could not write the test's persistence directory.
        let conf = format!(
            "listener {port} 127.0.0.1\n\
             user root\n\
             persistence true\n\
             persistence_location {}/\n\
             autosave_interval 1\n\
             max_queued_messages 200000\n\
             log_dest file {}/mosquitto.log\n\
             log_type error\nlog_type warning\nlog_type notice\n\
             {}\n",
            dir.path().display(),
            dir.path().display(),
            if extra.contains("allow_anonymous") || extra.contains("password_file") {
                extra.to_string()
            } else {
                format!("allow_anonymous true\n{extra}")
            }
        );
        std::fs::write(dir.path().join("mosquitto.conf"), conf).unwrap();
        let mut m = Self { port, dir, child: None };
        m.resume();
        m
    }

    pub fn addr(&self) -> (String, u16) {
        ("127.0.0.1".to_string(), self.port)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts (again) on the same port with the same persistence.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new(binary().expect("mosquitto installed"))
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto starts");
        self.child = Some(child);
        wait_port(self.port, Duration::from_secs(10));
    }

    /// Stops with SIGTERM: Mosquitto saves its persistence file first.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe { libc_kill(c.id() as i32, 15) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().unwrap().is_none() {
                assert!(Instant::now() < deadline, "mosquitto did not stop");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

pub fn wait_port(port: u16, within: Duration) {
    let deadline = Instant::now() + within;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `mosquitto_passwd -b FILE USER PASSWORD`.
pub fn add_password(file: &Path, user: &str, password: &str) {
    let mut cmd = Command::new("mosquitto_passwd");
    if !file.exists() {
        cmd.arg("-c");
    }
    let ok = cmd
        .arg("-b")
        .arg(file)
        .args([user, password])
        .stdout(Stdio::null())
        .status()
        .expect("mosquitto_passwd runs");
    assert!(ok.success());
}
