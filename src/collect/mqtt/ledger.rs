//! The ledger of what the collector owes the broker: every QoS 1 PUBLISH taken
//! in is registered here, marked done once it is durable (committed, or
//! quarantined, or a duplicate), and released for PUBACK in arrival order, as
//! MQTT 3.1.1 §4.6 requires (rumqttd, for one, stops delivering on an
//! out-of-order ack). Messages become durable out of order — a quarantined one
//! at once, a good one after its shard's commit, shards in parallel — so the
//! contiguous prefix of done messages is what can be acknowledged.
//!
//! Pure bookkeeping over values with the time passed in: no I/O, no channel.
//! The collector's tasks move what `done` releases to the broker and ask
//! `check` whether the intake is stalled.
//!
//! Each connection is a *generation*. After a reconnect nothing of the old
//! one may be acknowledged (the broker redelivers it, and its packet ids may
//! mean other messages now), so tickets of an earlier generation are ignored.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// A registered message: its connection generation and arrival number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    pub gen: u64,
    pub id: u64,
}

/// Why the intake is stalled, for health and the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Stall {
    /// Messages taken in and not yet acknowledged.
    pub owed: u64,
    /// How long nothing was acknowledged while messages were owed.
    pub for_s: u64,
    /// Acknowledgements are ready but not reaching the broker (our side of
    /// the connection is at fault: reconnecting helps). Otherwise the owed
    /// messages are still inside the pipeline or the store.
    pub acks_stuck: bool,
}

#[derive(Debug)]
pub struct Ledger<P> {
    gen: u64,
    next_id: u64,
    next_to_ack: u64,
    /// Registered and not yet released; `Some` once done.
    waiting: BTreeMap<u64, Option<P>>,
    /// Released in order, waiting to be handed to the client.
    ready: VecDeque<(u64, P)>,
    /// When the owed count last rose from zero (None: nothing owed).
    owed_since: Option<Instant>,
    last_progress: Instant,
    /// Set when a stall was detected; cleared by progress or by nothing being
    /// owed for a whole stall period.
    stalled_since: Option<Instant>,
    last_reset: Instant,
}

impl<P> Ledger<P> {
    pub fn new(now: Instant) -> Self {
        Self {
            gen: 0,
            next_id: 0,
            next_to_ack: 0,
            waiting: BTreeMap::new(),
            ready: VecDeque::new(),
            owed_since: None,
            last_progress: now,
            stalled_since: None,
            last_reset: now,
        }
    }

    pub fn generation(&self) -> u64 {
        self.gen
    }

    /// Messages of this connection taken in and not yet handed to the client.
    pub fn owed(&self) -> u64 {
        (self.waiting.len() + self.ready.len()) as u64
    }

    pub fn register(&mut self, now: Instant) -> Ticket {
        let id = self.next_id;
        self.next_id += 1;
        self.waiting.insert(id, None);
        self.owed_since.get_or_insert(now);
        Ticket { gen: self.gen, id }
    }

    /// Whether a ticket still belongs to the current connection.
    pub fn is_current(&self, t: Ticket) -> bool {
        t.gen == self.gen && t.id >= self.next_to_ack
    }

    /// Marks a message durable; moves the contiguous prefix to `ready`.
    /// Returns how many became ready (0 for a ticket of an old connection).
    pub fn done(&mut self, t: Ticket, payload: P) -> usize {
        if !self.is_current(t) {
            return 0;
        }
        self.waiting.insert(t.id, Some(payload));
        let mut n = 0;
        while let Some(entry) = self.waiting.first_entry() {
            if *entry.key() != self.next_to_ack || entry.get().is_none() {
                break;
            }
            let (_, p) = entry.remove_entry();
            self.ready.push_back((self.gen, p.expect("checked above")));
            self.next_to_ack += 1;
            n += 1;
        }
        n
    }

    /// The next acknowledgement to send, with its generation.
    pub fn pop_ready(&mut self) -> Option<(u64, P)> {
        self.ready.pop_front()
    }

    /// An acknowledgement reached the client: progress.
    pub fn sent(&mut self, now: Instant) {
        self.last_progress = now;
        self.stalled_since = None;
        if self.owed() == 0 {
            self.owed_since = None;
        } else {
            self.owed_since = Some(now);
        }
    }

    /// The connection is gone or being replaced: start a new generation.
    pub fn reset(&mut self, now: Instant) {
        self.gen += 1;
        self.waiting.clear();
        self.ready.clear();
        self.next_to_ack = self.next_id;
        self.owed_since = None;
        self.last_reset = now;
    }

    /// Stalled: messages owed and nothing acknowledged for `after`.
    pub fn check(&mut self, now: Instant, after: Duration) -> Option<Stall> {
        let owed = self.owed();
        if owed == 0 {
            self.owed_since = None;
        }
        let waited = self
            .owed_since
            .map(|s| now.saturating_duration_since(s.max(self.last_progress)));
        if waited.is_some_and(|w| w >= after) {
            self.stalled_since.get_or_insert(now);
        } else if self.stalled_since.is_some()
            && owed == 0
            && now.saturating_duration_since(self.last_reset.max(self.last_progress)) >= after
        {
            // Nothing owed for a whole period since the last reconnect: over.
            self.stalled_since = None;
        }
        self.stalled_since.map(|_| Stall {
            owed,
            for_s: now.saturating_duration_since(self.last_progress).as_secs(),
            acks_stuck: !self.ready.is_empty(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn releases_in_arrival_order_whatever_order_they_finish() {
        let t0 = Instant::now();
        let mut l = Ledger::new(t0);
        let a = l.register(t0);
        let b = l.register(t0);
        let c = l.register(t0);
        assert_eq!(l.done(c, "c"), 0);
        assert_eq!(l.done(b, "b"), 0);
        assert_eq!(l.owed(), 3);
        assert_eq!(l.done(a, "a"), 3);
        let out: Vec<_> = std::iter::from_fn(|| l.pop_ready().map(|(_, p)| p)).collect();
        assert_eq!(out, vec!["a", "b", "c"]);
        assert_eq!(l.owed(), 0);
    }

    #[test]
    fn tickets_of_an_old_connection_release_nothing() {
        let t0 = Instant::now();
        let mut l = Ledger::new(t0);
        let old = l.register(t0);
        l.reset(t0);
        assert!(!l.is_current(old));
        assert_eq!(l.done(old, 1), 0);
        let new = l.register(t0);
        assert_eq!(l.done(new, 2), 1);
        assert_eq!(l.pop_ready(), Some((1, 2)));
    }

    #[test]
    fn a_stall_is_owed_messages_with_no_progress_and_ends_with_progress() {
        let t0 = Instant::now();
        let mut l = Ledger::new(t0);
        // Idle for a long time, then a message: not a stall yet.
        let a = l.register(t0 + s(100));
        assert_eq!(l.check(t0 + s(105), s(10)), None);
        let st = l.check(t0 + s(111), s(10)).expect("stalled");
        assert_eq!((st.owed, st.acks_stuck), (1, false));
        // Done but the ack is not reaching the client: stuck acks.
        l.done(a, ());
        assert!(l.check(t0 + s(112), s(10)).unwrap().acks_stuck);
        l.pop_ready();
        l.sent(t0 + s(113));
        assert_eq!(l.check(t0 + s(113), s(10)), None);
    }

    #[test]
    fn a_reconnect_does_not_hide_a_stall_until_a_quiet_period_passes() {
        let t0 = Instant::now();
        let mut l: Ledger<()> = Ledger::new(t0);
        l.register(t0);
        assert!(l.check(t0 + s(10), s(10)).is_some());
        l.reset(t0 + s(10));
        // Right after the reconnect nothing is owed, but it is still a stall.
        assert!(l.check(t0 + s(11), s(10)).is_some());
        // The broker redelivers and again nothing moves: still stalled.
        l.register(t0 + s(12));
        assert!(l.check(t0 + s(15), s(10)).is_some());
        l.reset(t0 + s(23));
        // Nothing owed for a whole period after the reconnect: over.
        assert!(l.check(t0 + s(34), s(10)).is_none());
    }
}
