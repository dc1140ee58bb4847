//! Login throttling: failed logins slow down the client that makes them, by
//! client *and* user name, with growing delays — never a lock on the name
//! alone, so a stranger guessing `operator`'s password from elsewhere cannot
//! lock the real operator out. A client spraying many names is slowed by a
//! second, per-client count with a higher allowance.
//!
//! Memory is bounded whatever is sent: entries are keyed by a keyed hash of
//! (client, name), fixed size however long the name, and the table holds at
//! most `CAPACITY` entries (the oldest are forgotten first). Pure over values
//! with the time passed in; the login route holds it behind a std Mutex (a
//! map operation, never across an await).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Failures allowed for one (client, name) before delays begin.
pub const FREE_PER_NAME: u32 = 3;
/// Failures allowed for one client over all names before delays begin.
pub const FREE_PER_CLIENT: u32 = 20;
/// The first delay; each further failure doubles it.
pub const FIRST_DELAY: Duration = Duration::from_secs(5);
/// The longest delay.
pub const MAX_DELAY: Duration = Duration::from_secs(15 * 60);
/// Entries kept (about 48 bytes each, so well under a megabyte).
pub const CAPACITY: usize = 10_000;
/// Failures older than this are forgotten.
pub const FORGET_AFTER: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last: Instant,
    blocked_until: Option<Instant>,
}

pub struct Throttle {
    hasher: std::collections::hash_map::RandomState,
    entries: HashMap<u64, Entry>,
}

impl Default for Throttle {
    fn default() -> Self {
        Self::new()
    }
}

/// The delay after `failures` failures with `free` allowed: 5 s, 10 s, 20 s, …
fn delay(failures: u32, free: u32) -> Option<Duration> {
    let over = failures.checked_sub(free)?;
    if over == 0 {
        return None;
    }
    let factor = 1u32.checked_shl(over - 1).unwrap_or(u32::MAX);
    Some(FIRST_DELAY.saturating_mul(factor).min(MAX_DELAY))
}

impl Throttle {
    pub fn new() -> Self {
        Self {
            hasher: Default::default(),
            entries: HashMap::new(),
        }
    }

    fn key(&self, client: IpAddr, name: Option<&str>) -> u64 {
        let mut h = self.hasher.build_hasher();
        client.hash(&mut h);
        name.hash(&mut h);
        h.finish()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// `Err(retry_after)` while this client may not try this name.
    pub fn check(&self, client: IpAddr, name: &str, now: Instant) -> Result<(), Duration> {
        let wait = [self.key(client, Some(name)), self.key(client, None)]
            .iter()
            .filter_map(|k| self.entries.get(k))
            .filter(|e| now.saturating_duration_since(e.last) < FORGET_AFTER)
            .filter_map(|e| e.blocked_until)
            .filter(|until| *until > now)
            .map(|until| until - now)
            .max();
        match wait {
            Some(w) => Err(w.max(Duration::from_secs(1))),
            None => Ok(()),
        }
    }

    pub fn failed(&mut self, client: IpAddr, name: &str, now: Instant) {
        for (k, free) in [
            (self.key(client, Some(name)), FREE_PER_NAME),
            (self.key(client, None), FREE_PER_CLIENT),
        ] {
            if !self.entries.contains_key(&k) && self.entries.len() >= CAPACITY {
                self.make_room(now);
            }
            let e = self.entries.entry(k).or_insert(Entry {
                failures: 0,
                last: now,
                blocked_until: None,
            });
            if now.saturating_duration_since(e.last) >= FORGET_AFTER {
                e.failures = 0;
            }
            e.failures = e.failures.saturating_add(1);
            e.last = now;
            e.blocked_until = delay(e.failures, free).map(|d| now + d);
        }
    }

    /// A good login clears that name's count for this client (the client's
    /// overall count stays: a sprayer that knows one password is still slowed).
    pub fn succeeded(&mut self, client: IpAddr, name: &str) {
        let k = self.key(client, Some(name));
        self.entries.remove(&k);
    }

    /// Forgets stale entries, or else the least recently failing tenth.
    fn make_room(&mut self, now: Instant) {
        self.entries
            .retain(|_, e| now.saturating_duration_since(e.last) < FORGET_AFTER);
        if self.entries.len() < CAPACITY {
            return;
        }
        let mut lasts: Vec<Instant> = self.entries.values().map(|e| e.last).collect();
        let cut = CAPACITY / 10;
        lasts.select_nth_unstable(cut);
        let threshold = lasts[cut];
        self.entries.retain(|_, e| e.last > threshold);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn delays_grow_after_the_free_failures_and_say_how_long() {
        let t0 = Instant::now();
        let mut t = Throttle::new();
        let (a, n) = (ip("10.0.0.1"), "operator");
        for _ in 0..FREE_PER_NAME {
            assert!(t.check(a, n, t0).is_ok());
            t.failed(a, n, t0);
        }
        assert!(t.check(a, n, t0).is_ok(), "three wrong passwords cost nothing");
        t.failed(a, n, t0);
        assert_eq!(t.check(a, n, t0), Err(FIRST_DELAY));
        let later = t0 + FIRST_DELAY;
        assert!(t.check(a, n, later).is_ok());
        t.failed(a, n, later);
        assert_eq!(t.check(a, n, later), Err(2 * FIRST_DELAY));
        // Many more: capped.
        for i in 0..40 {
            t.failed(a, n, later + Duration::from_secs(i));
        }
        let w = t.check(a, n, later + Duration::from_secs(39)).unwrap_err();
        assert_eq!(w, MAX_DELAY);
    }

    #[test]
    fn a_stranger_cannot_lock_out_the_real_user() {
        let t0 = Instant::now();
        let mut t = Throttle::new();
        for _ in 0..50 {
            t.failed(ip("203.0.113.9"), "operator", t0);
        }
        assert!(t.check(ip("203.0.113.9"), "operator", t0).is_err());
        assert!(
            t.check(ip("10.0.0.5"), "operator", t0).is_ok(),
            "the operator's own client is not slowed"
        );
    }

    #[test]
    fn spraying_names_from_one_client_is_slowed_too() {
        let t0 = Instant::now();
        let mut t = Throttle::new();
        let a = ip("203.0.113.9");
        for i in 0..=FREE_PER_CLIENT {
            t.failed(a, &format!("user{i}"), t0);
        }
        assert!(t.check(a, "somebody-new", t0).is_err());
    }

    #[test]
    fn memory_is_bounded_whatever_is_sent() {
        let t0 = Instant::now();
        let mut t = Throttle::new();
        let long = "x".repeat(6_000);
        for i in 0..(3 * CAPACITY as u32) {
            let client = IpAddr::from(i.to_be_bytes());
            t.failed(client, &format!("{long}{i}"), t0 + Duration::from_millis(i as u64));
        }
        assert!(t.len() <= CAPACITY, "{}", t.len());
    }

    #[test]
    fn a_good_login_clears_the_name() {
        let t0 = Instant::now();
        let mut t = Throttle::new();
        let a = ip("10.0.0.1");
        for _ in 0..5 {
            t.failed(a, "op", t0);
        }
        t.succeeded(a, "op");
        assert!(t.check(a, "op", t0).is_ok());
    }
}
