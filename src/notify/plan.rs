//! What to send, decided without sending: routing, grouping into incidents,
//! escalation, rate limits, summaries and briefs, as one synchronous planner
//! over a [`Ledger`] (where incidents and messages are kept).
//!
//! The live engine plans over the SQLite outbox inside one transaction and
//! then delivers; replay plans over [`MemLedger`], where every message counts
//! as delivered the moment it is planned, and reports what would have gone
//! out. The same code decides both, so "who would have been woken" in a
//! replay is what the live service would have done.

use super::config::NotifyConfig;
use super::message::{Episode, Held, IncidentPart, Kind, Message};
use super::{roster, route};
use crate::alarm::{Action, Alarm, AlarmState};
use crate::config::Config;
use crate::model::secret::{random_from, random_hex, sha256_hex};
use crate::model::Timestamp;
use crate::store::outbox::{Incident, OutboxRow};
use chrono::Duration;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};

/// Where the planner keeps its state and puts its messages.
pub trait Ledger {
    type Error;
    /// An alarm as it is now (also after it closed, while an incident holds it).
    fn alarm(&self, id: &str) -> Result<Option<Alarm>, Self::Error>;
    fn save_incident(&mut self, i: &Incident) -> Result<(), Self::Error>;
    /// Who has been told about an incident so far, first told first.
    fn notified(&self, incident: &str) -> Result<Vec<String>, Self::Error>;
    /// The contact method that last reached `person` about `incident`.
    fn last_contact(&self, incident: &str, person: &str) -> Result<Option<usize>, Self::Error>;
    /// When each message counted against `person`'s rate limit and created
    /// after `since` was created.
    fn counted_times(&self, person: &str, since: Timestamp) -> Result<Vec<Timestamp>, Self::Error>;
    /// How many there are (what the planner asks; see [`RateWindow`]).
    fn counted_since(&self, person: &str, since: Timestamp) -> Result<usize, Self::Error> {
        self.counted_times(person, since).map(|t| t.len())
    }
    /// Keeps the hash of an acknowledge link and its short code.
    fn grant(&mut self, g: &Grant) -> Result<(), Self::Error>;
    /// A new message; `lead` is the alarm it is mainly about.
    fn insert(&mut self, row: &OutboxRow, lead: Option<&str>) -> Result<(), Self::Error>;
    /// Messages held back by the rate limit, oldest first.
    fn held(&self) -> Result<Vec<OutboxRow>, Self::Error>;
    /// A held message went out inside a summary.
    fn summarized(&mut self, id: &str) -> Result<(), Self::Error>;
}

/// Each person's messages counted against the rate limit (their creation
/// times, oldest first) since the start of the window last asked for, kept
/// from step to step by the runner that owns the ledger. The window slides
/// with `now`, so after the first question per person a count costs
/// nothing: asking the ledger each time scanned the person's whole window
/// (with one recipient and 200 alerts a second, a minute's window is 12,000
/// rows per step: a twelfth of the CPU at 10,000 msg/s). Exact because the
/// planner is the only one that adds counted messages (a next contact
/// method's resend is not counted, held ones are not). A runner whose step
/// did not commit must [`RateWindow::clear`] it.
#[derive(Debug, Default)]
pub struct RateWindow {
    people: HashMap<String, Window>,
}

#[derive(Debug)]
struct Window {
    since: Timestamp,
    times: VecDeque<Timestamp>,
}

impl RateWindow {
    /// Forgets everything: the next count asks the ledger again.
    pub fn clear(&mut self) {
        self.people.clear();
    }

    fn count<L: Ledger + ?Sized>(&mut self, l: &L, person: &str, since: Timestamp) -> Result<usize, L::Error> {
        if let Some(w) = self.people.get_mut(person) {
            // A window that starts earlier than the one kept (the clock
            // went back) is asked afresh.
            if since >= w.since {
                while w.times.front().is_some_and(|t| *t <= since) {
                    w.times.pop_front();
                }
                w.since = since;
                return Ok(w.times.len());
            }
        }
        let mut times = l.counted_times(person, since)?;
        times.sort_unstable();
        let n = times.len();
        self.people.insert(
            person.to_string(),
            Window {
                since,
                times: times.into(),
            },
        );
        Ok(n)
    }

    fn add(&mut self, person: &str, created: Timestamp) {
        if let Some(w) = self.people.get_mut(person) {
            if created > w.since {
                let at = w.times.partition_point(|t| *t <= created);
                w.times.insert(at, created);
            }
        }
    }
}

/// A step's view of its ledger that counts each person's messages against
/// the rate limit through a [`RateWindow`].
struct Counted<'l, 'r, L: Ledger + ?Sized> {
    inner: &'l mut L,
    rates: std::cell::RefCell<&'r mut RateWindow>,
}

impl<L: Ledger + ?Sized> Ledger for Counted<'_, '_, L> {
    type Error = L::Error;
    fn alarm(&self, id: &str) -> Result<Option<Alarm>, L::Error> {
        self.inner.alarm(id)
    }
    fn save_incident(&mut self, i: &Incident) -> Result<(), L::Error> {
        self.inner.save_incident(i)
    }
    fn notified(&self, incident: &str) -> Result<Vec<String>, L::Error> {
        self.inner.notified(incident)
    }
    fn last_contact(&self, incident: &str, person: &str) -> Result<Option<usize>, L::Error> {
        self.inner.last_contact(incident, person)
    }
    fn counted_times(&self, person: &str, since: Timestamp) -> Result<Vec<Timestamp>, L::Error> {
        self.inner.counted_times(person, since)
    }
    fn counted_since(&self, person: &str, since: Timestamp) -> Result<usize, L::Error> {
        self.rates.borrow_mut().count(&*self.inner, person, since)
    }
    fn grant(&mut self, g: &Grant) -> Result<(), L::Error> {
        self.inner.grant(g)
    }
    fn insert(&mut self, row: &OutboxRow, lead: Option<&str>) -> Result<(), L::Error> {
        self.inner.insert(row, lead)?;
        // What the ledger counts: every new message but a held one.
        if row.state != "held" {
            self.rates.get_mut().add(&row.person, row.created_at);
        }
        Ok(())
    }
    fn held(&self) -> Result<Vec<OutboxRow>, L::Error> {
        self.inner.held()
    }
    fn summarized(&mut self, id: &str) -> Result<(), L::Error> {
        self.inner.summarized(id)
    }
}

/// An acknowledge link (its token's hash) and code for one person and incident.
pub struct Grant {
    pub token_hash: String,
    pub code: String,
    pub incident: String,
    pub person: String,
    pub channel: String,
    pub expires: Timestamp,
}

/// Where identifiers and secrets come from: random live, counted in replay
/// (the same inputs give the same output).
pub trait Ids {
    /// A message's idempotency key, kept across retries.
    fn message(&mut self, now: Timestamp) -> String;
    fn incident(&mut self, now: Timestamp) -> String;
    /// An acknowledge link's token and the short code typed from a phone.
    fn ack(&mut self) -> (String, String);
}

pub struct RandomIds;

impl Ids for RandomIds {
    fn message(&mut self, now: Timestamp) -> String {
        format!("n-{}-{}", now.format("%Y%m%d%H%M%S"), random_hex(6))
    }
    fn incident(&mut self, now: Timestamp) -> String {
        format!("i-{}-{}", now.format("%Y%m%d%H%M%S"), random_hex(4))
    }
    fn ack(&mut self) -> (String, String) {
        // 8 characters a person can type from a phone screen: no 0/O or 1/I/L.
        (random_hex(24), random_from(b"ABCDEFGHJKMNPQRSTUVWXYZ23456789", 8))
    }
}

/// Sequence-numbered ids, for a deterministic dry run.
#[derive(Default)]
pub struct CountedIds(u64);

impl CountedIds {
    fn next(&mut self) -> u64 {
        self.0 += 1;
        self.0
    }
}

impl Ids for CountedIds {
    fn message(&mut self, now: Timestamp) -> String {
        format!("n-{}-{:06}", now.format("%Y%m%d%H%M%S"), self.next())
    }
    fn incident(&mut self, now: Timestamp) -> String {
        format!("i-{}-{:06}", now.format("%Y%m%d%H%M%S"), self.next())
    }
    fn ack(&mut self) -> (String, String) {
        let n = self.next();
        (format!("dry-run-{n}"), format!("DRY{n:05}"))
    }
}

/// One journal row as the planner reads it.
#[derive(Debug, Clone)]
pub struct JournalRow {
    pub alarm_id: String,
    pub action: Action,
    pub notify: bool,
    /// The transition ended the occurrence (to `normal`).
    pub closes: bool,
}

impl JournalRow {
    /// The row a transition makes in the journal (the stores compute the
    /// same from their columns).
    pub fn of(t: &crate::alarm::Transition) -> Self {
        Self {
            alarm_id: t.alarm.id.clone(),
            action: t.action,
            notify: t.notify,
            closes: t.to == AlarmState::Normal,
        }
    }
}

/// Someone must still be paged about it: active and unacknowledged, and not
/// shelved, out of service or suppressed — exactly ISA-18.2's UNACK ACTIVE.
/// (Not `Alarm::needs_attention`, which also keeps acknowledged and returned
/// alarms on the board.)
pub fn must_page(a: &Alarm) -> bool {
    a.derive_state() == AlarmState::UnackActive
}

/// Over without anyone having seen it: cleared, never acknowledged, and not
/// kept from the operators on purpose (suppressed by design, out of service).
fn unseen_episode(a: &Alarm) -> bool {
    !a.active && !a.acked && a.suppressed_by.is_none() && !a.out_of_service
}

impl Planner<'_> {
    /// Over before anyone was paged, but only because mizuban saw its start
    /// and its end together (it was behind, or restarting): by the device's
    /// own clock the episode outlasted the group wait, so an instant master
    /// station would have paged it. It is paged now, raise then clear, as
    /// it happened — a page is never lost because mizuban was slow. An
    /// episode the device itself reported late (`late`) or that ended more
    /// than `late_after_s` ago is history by now and goes into a brief.
    fn owed_page(&self, a: &Alarm, now: Timestamp) -> bool {
        let wait = Duration::seconds(self.n.settings.group_wait_s as i64);
        let history = Duration::seconds(self.cfg.service.late_after_s as i64);
        unseen_episode(a)
            && !a.late
            && a.cleared_at
                .is_some_and(|c| c - a.raised_at >= wait && now - c <= history)
    }
}

fn mins(m: f64) -> Duration {
    Duration::milliseconds((m * 60_000.0) as i64)
}

pub struct Planner<'a> {
    pub cfg: &'a Config,
    pub n: &'a NotifyConfig,
    pub public_url: &'a str,
    pub ids: &'a mut dyn Ids,
}

impl Planner<'_> {
    /// One planning step at `now`: the new journal rows, then the groups and
    /// escalations that are due, then held messages that may go out as a
    /// summary. `open` holds the open incidents and is updated in place;
    /// `rates` is kept by the caller from step to step.
    pub fn step<L: Ledger + ?Sized>(
        &mut self,
        l: &mut L,
        rows: &[JournalRow],
        open: &mut Vec<Incident>,
        now: Timestamp,
        rates: &mut RateWindow,
    ) -> Result<(), L::Error> {
        let l = &mut Counted {
            inner: l,
            rates: rates.into(),
        };
        self.follow(l, rows, open, now)?;
        for inc in open.iter_mut().filter(|i| !i.closed) {
            if inc.flush_at.is_some_and(|t| t <= now) {
                self.flush(l, inc, now)?;
                l.save_incident(inc)?;
            }
            if inc.next_level_at.is_some_and(|t| t <= now) {
                self.escalate(l, inc, now)?;
                l.save_incident(inc)?;
            }
        }
        open.retain(|i| !i.closed);
        self.summarise(l, now)
    }

    /// The next moment a step has time-driven work (a group wait or an
    /// escalation), for a runner that does not look every 100 ms.
    pub fn next_due(open: &[Incident]) -> Option<Timestamp> {
        open.iter()
            .filter(|i| !i.closed)
            .flat_map(|i| [i.flush_at, i.next_level_at])
            .flatten()
            .min()
    }

    fn members<L: Ledger + ?Sized>(l: &L, inc: &Incident) -> Result<Vec<Alarm>, L::Error> {
        let mut v = Vec::with_capacity(inc.alarms.len());
        for id in &inc.alarms {
            if let Some(a) = l.alarm(id)? {
                v.push(a);
            }
        }
        Ok(v)
    }

    fn group_key(&self, policy: &str, a: &Alarm) -> String {
        let site = self.cfg.site(a.site.as_str());
        let mut k = policy.to_string();
        for g in &self.n.settings.group_by {
            k.push('|');
            match g.as_str() {
                "area" => k.push_str(site.map(|s| s.area.as_str()).unwrap_or("")),
                "kind" => k.push_str(site.map(|s| s.kind.as_str()).unwrap_or("")),
                "site" => k.push_str(a.site.as_str()),
                "priority" => k.push_str(a.priority.as_str()),
                _ => k.push_str(&a.condition),
            }
        }
        k
    }

    /// How long the first message about an alarm waits (beyond the group
    /// wait) when mizuban learned of it late: see [`Planner::first_flush`].
    const CATCH_UP_S: i64 = 2;

    /// When a new incident's first message goes out: after the group wait;
    /// and when mizuban learned of the alarm more than `late_after_s` after
    /// it began (a backlog after an outage or a restart, an hourly upload),
    /// not before [`Self::CATCH_UP_S`] either. The rest of that backlog is
    /// already at the broker and lands within it, so an episode the backlog
    /// shows over is told as it was (a brief), whatever the order in which
    /// its raise and its clear happened to be committed. A live alarm is
    /// not held.
    fn first_flush(&self, a: &Alarm, now: Timestamp) -> Timestamp {
        let mut wait = Duration::seconds(self.n.settings.group_wait_s as i64);
        if a.detected_at - a.raised_at > Duration::seconds(self.cfg.service.late_after_s as i64) {
            wait = wait.max(Duration::seconds(Self::CATCH_UP_S));
        }
        now + wait
    }

    fn new_incident(&mut self, key: String, policy: &str, a: &Alarm, now: Timestamp) -> Incident {
        let flush_at = self.first_flush(a, now);
        Incident {
            id: self.ids.incident(now),
            group_key: key,
            policy: policy.to_string(),
            site: a.site.as_str().to_string(),
            opened_at: now,
            first_sent_at: None,
            flush_at: Some(flush_at),
            last_msg_at: None,
            level: 0,
            next_level_at: None,
            closed: false,
            announced: 0,
            alarms: vec![a.id.clone()],
        }
    }

    /// Handles new journal rows against the open incidents.
    fn follow<L: Ledger + ?Sized>(
        &mut self,
        l: &mut L,
        rows: &[JournalRow],
        open: &mut Vec<Incident>,
        now: Timestamp,
    ) -> Result<(), L::Error> {
        let tz = self.cfg.service.utc_offset_hours;
        let window = Duration::seconds(self.n.settings.group_window_s as i64);
        for row in rows {
            if row.alarm_id.is_empty() {
                continue; // device commands
            }
            let Some(a) = l.alarm(&row.alarm_id)? else { continue };
            let pos = open.iter().position(|i| !i.closed && i.alarms.contains(&row.alarm_id));
            match row.action {
                Action::Raise | Action::Confirm | Action::Unshelve if row.notify => {
                    if let Some(p) = pos {
                        // Told again: a shelve ran out on an active alarm, or late
                        // data was confirmed. Start its escalation over.
                        let inc = &mut open[p];
                        if inc.first_sent_at.is_some() {
                            inc.first_sent_at = Some(now);
                            inc.level = 0;
                            inc.next_level_at = Some(now);
                            l.save_incident(inc)?;
                        }
                        continue;
                    }
                    let site = self.cfg.site(a.site.as_str()).map(|s| s.as_ref());
                    let Some(r) = route::find(self.n, &a, site, now, tz) else {
                        continue;
                    };
                    let key = self.group_key(&r.policy, &a);
                    if let Some(inc) = open
                        .iter_mut()
                        .find(|i| !i.closed && i.group_key == key && i.opened_at + window > now)
                    {
                        inc.alarms.push(row.alarm_id.clone());
                        if inc.first_sent_at.is_some() {
                            if inc.next_level_at.is_none() {
                                // Everything before was handled; this one needs someone.
                                inc.first_sent_at = Some(now);
                                inc.level = 0;
                                inc.next_level_at = Some(now);
                            } else if inc.flush_at.is_none() {
                                let gap = Duration::seconds(self.n.settings.group_interval_s as i64);
                                inc.flush_at = Some(inc.last_msg_at.map(|t| (t + gap).max(now)).unwrap_or(now));
                            }
                        } else if inc.flush_at.is_none() {
                            // An untold group whose wait is over (all of it was
                            // acknowledged or shelved before): look again now.
                            inc.flush_at = Some(now);
                        }
                        l.save_incident(inc)?;
                    } else {
                        let inc = self.new_incident(key, &r.policy, &a, now);
                        l.save_incident(&inc)?;
                        open.push(inc);
                    }
                }
                // An episode that was over when its data arrived: never paged
                // as it happened, so it goes into a brief for the group.
                Action::Clear if a.late && pos.is_none() && unseen_episode(&a) => {
                    let site = self.cfg.site(a.site.as_str()).map(|s| s.as_ref());
                    let Some(r) = route::find(self.n, &a, site, now, tz).filter(|r| r.briefs) else {
                        continue;
                    };
                    let key = self.group_key(&r.policy, &a);
                    if let Some(inc) = open.iter_mut().find(|i| {
                        !i.closed && i.first_sent_at.is_none() && i.group_key == key && i.opened_at + window > now
                    }) {
                        inc.alarms.push(row.alarm_id.clone());
                        inc.flush_at = inc.flush_at.or(Some(now));
                        l.save_incident(inc)?;
                    } else {
                        let inc = self.new_incident(key, &r.policy, &a, now);
                        l.save_incident(&inc)?;
                        open.push(inc);
                    }
                }
                Action::Ack | Action::Shelve | Action::OutOfService | Action::Suppress | Action::Clear => {
                    if row.closes && a.told && a.reactivations > 0 && !a.late {
                        // Its re-raises were one occurrence, one page: counted here.
                        self.tell_reactivations(l, &a, pos.map(|p| &open[p]), now)?;
                    }
                    let Some(p) = pos else { continue };
                    let inc = &mut open[p];
                    let members = Self::members(l, inc)?;
                    let told = inc.first_sent_at.is_some();
                    let single = inc.alarms.len() == 1;
                    if members.iter().all(|m| !m.active) {
                        inc.next_level_at = None;
                        if told {
                            // Back to normal: everyone who was told hears it.
                            inc.closed = true;
                            inc.flush_at = None;
                            let kind = if single {
                                Kind::AlarmCleared
                            } else {
                                Kind::IncidentClosed
                            };
                            self.tell_notified(l, inc, kind, &members, now)?;
                        } else if inc.flush_at.is_some()
                            && members
                                .iter()
                                .any(|m| self.owed_page(m, now) || (unseen_episode(m) && self.briefs(inc)))
                        {
                            // Over within the group wait and nobody saw it:
                            // kept open so its wait ends in one brief (or in
                            // the page it is owed, see `owed_page`).
                        } else {
                            inc.closed = true;
                            inc.flush_at = None;
                        }
                    } else if !members.iter().any(must_page) && inc.next_level_at.is_some() {
                        inc.next_level_at = None;
                        if told {
                            let kind = match row.action {
                                Action::Shelve => Some(Kind::AlarmShelved),
                                Action::Ack => Some(Kind::AlarmAcknowledged),
                                _ => None,
                            };
                            if let Some(kind) = kind {
                                self.tell_notified(l, inc, kind, &members, now)?;
                            }
                        }
                    }
                    l.save_incident(inc)?;
                }
                // Nothing to tell: a raise or return nobody is to hear of
                // (suppressed, late, shelved), a way back into view that is
                // told by its own raise, history, or a device command.
                Action::Raise
                | Action::Confirm
                | Action::Unshelve
                | Action::Unsuppress
                | Action::ReturnToService
                | Action::Late
                | Action::Command => {}
            }
        }
        Ok(())
    }

    /// An occurrence that came back after it first returned to normal (its
    /// re-raises not paged one by one: nobody had acknowledged it, so it was
    /// still the same occurrence), now over: one `alarm.reactivated` saying
    /// how many times, from its first raise to its last return. To the people
    /// of its incident if that is still open; else to the first level of its
    /// route's policy, as on call now (the incident closed with the told
    /// return to normal).
    fn tell_reactivations<L: Ledger + ?Sized>(
        &mut self,
        l: &mut L,
        a: &Alarm,
        inc: Option<&Incident>,
        now: Timestamp,
    ) -> Result<(), L::Error> {
        let members = std::slice::from_ref(a);
        if let Some(inc) = inc {
            return self.tell_notified(l, inc, Kind::AlarmReactivated, members, now);
        }
        let tz = self.cfg.service.utc_offset_hours;
        let site = self.cfg.site(a.site.as_str()).map(|s| s.as_ref());
        let Some(r) = route::find(self.n, a, site, now, tz) else {
            return Ok(());
        };
        let Some(level) = self.n.policy(&r.policy).and_then(|p| p.levels.first()) else {
            return Ok(());
        };
        let people = roster::resolve(self.n, &level.notify, now, tz);
        let key = self.group_key(&r.policy, a);
        let mut inc = self.new_incident(key, &r.policy, a, now);
        // Told and over in one message.
        inc.flush_at = None;
        inc.first_sent_at = Some(now);
        inc.last_msg_at = Some(now);
        inc.closed = true;
        l.save_incident(&inc)?;
        for p in &people {
            self.enqueue(l, &inc, p, Kind::AlarmReactivated, 0, members, now)?;
        }
        Ok(())
    }

    /// Whether the route that opened the incident sends briefs.
    fn briefs(&self, inc: &Incident) -> bool {
        self.n
            .routes
            .iter()
            .filter(|r| r.policy == inc.policy)
            .any(|r| r.briefs)
    }

    /// The first message of a group after its wait, or an update to an open incident.
    fn flush<L: Ledger + ?Sized>(&mut self, l: &mut L, inc: &mut Incident, now: Timestamp) -> Result<(), L::Error> {
        inc.flush_at = None;
        let members = Self::members(l, inc)?;
        if inc.first_sent_at.is_none() {
            if members.iter().any(must_page) {
                inc.first_sent_at = Some(now);
                inc.level = 0;
                inc.next_level_at = Some(now);
            } else if members.iter().all(|m| !m.active) && members.iter().any(|m| self.owed_page(m, now)) {
                // Over only in mizuban's view: paged as it happened, then
                // at once told that it is back to normal.
                inc.first_sent_at = Some(now);
                inc.level = 0;
                self.page_level(l, inc, &members, now)?;
                let kind = if members.len() == 1 {
                    Kind::AlarmCleared
                } else {
                    Kind::IncidentClosed
                };
                self.tell_notified(l, inc, kind, &members, now)?;
                inc.next_level_at = None;
                inc.closed = true;
            } else if members.iter().all(|m| !m.active) {
                // All over before anyone was paged: one short brief to the
                // first level, unless everything was seen on the board.
                let unseen: Vec<Alarm> = members.into_iter().filter(unseen_episode).collect();
                if !unseen.is_empty() && self.briefs(inc) {
                    self.brief(l, inc, &unseen, now)?;
                }
                inc.closed = true;
            }
            return Ok(());
        }
        if members.len() > inc.announced {
            let kind = if inc.announced <= 1 {
                Kind::IncidentOpened
            } else {
                Kind::IncidentUpdated
            };
            self.tell_notified(l, inc, kind, &members, now)?;
            inc.announced = members.len();
            inc.last_msg_at = Some(now);
        }
        Ok(())
    }

    fn brief<L: Ledger + ?Sized>(
        &mut self,
        l: &mut L,
        inc: &Incident,
        members: &[Alarm],
        now: Timestamp,
    ) -> Result<(), L::Error> {
        let Some(policy) = self.n.policy(&inc.policy) else {
            return Ok(());
        };
        let Some(first) = policy.levels.first() else {
            return Ok(());
        };
        let tz = self.cfg.service.utc_offset_hours;
        let kind = if members.len() > 1 {
            Kind::IncidentBrief
        } else {
            Kind::AlarmBrief
        };
        for p in roster::resolve(self.n, &first.notify, now, tz) {
            self.enqueue(l, inc, &p, kind, 0, members, now)?;
        }
        Ok(())
    }

    fn escalate<L: Ledger + ?Sized>(&mut self, l: &mut L, inc: &mut Incident, now: Timestamp) -> Result<(), L::Error> {
        let members = Self::members(l, inc)?;
        if !members.iter().any(must_page) {
            inc.next_level_at = None;
            return Ok(());
        }
        self.page_level(l, inc, &members, now)
    }

    /// Sends the incident's current escalation level and moves it on.
    fn page_level<L: Ledger + ?Sized>(
        &mut self,
        l: &mut L,
        inc: &mut Incident,
        members: &[Alarm],
        now: Timestamp,
    ) -> Result<(), L::Error> {
        let Some(policy) = self.n.policy(&inc.policy) else {
            inc.next_level_at = None;
            return Ok(());
        };
        if policy.levels.is_empty() {
            inc.next_level_at = None;
            return Ok(());
        }
        let idx = inc.level.min(policy.levels.len() - 1);
        let tz = self.cfg.service.utc_offset_hours;
        let people = roster::resolve(self.n, &policy.levels[idx].notify, now, tz);
        let kind = match (inc.level, members.len() > 1) {
            (0, true) => Kind::IncidentOpened,
            (0, false) => Kind::AlarmRaised,
            _ => Kind::AlarmEscalated,
        };
        for p in &people {
            self.enqueue(l, inc, p, kind, idx + 1, members, now)?;
        }
        if people.is_empty() {
            tracing::error!(incident = %inc.id, level = idx + 1, "escalation level resolves to nobody");
        }
        inc.announced = members.len();
        inc.last_msg_at = Some(now);
        inc.level += 1;
        let base = inc.first_sent_at.unwrap_or(now);
        inc.next_level_at = Some(if inc.level < policy.levels.len() {
            base + mins(policy.levels[inc.level].after_minutes)
        } else {
            now + mins(policy.repeat_minutes)
        });
        Ok(())
    }

    fn tell_notified<L: Ledger + ?Sized>(
        &mut self,
        l: &mut L,
        inc: &Incident,
        kind: Kind,
        members: &[Alarm],
        now: Timestamp,
    ) -> Result<(), L::Error> {
        for p in l.notified(&inc.id)? {
            self.enqueue(l, inc, &p, kind, 0, members, now)?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn enqueue<L: Ledger + ?Sized>(
        &mut self,
        l: &mut L,
        inc: &Incident,
        person: &str,
        kind: Kind,
        level: usize,
        members: &[Alarm],
        now: Timestamp,
    ) -> Result<(), L::Error> {
        let Some(p) = self.n.person(person) else {
            return Ok(());
        };
        // The contact method that last worked for this person about this
        // incident, so follow-ups do not rediscover a dead one first.
        let idx = l
            .last_contact(&inc.id, person)?
            .filter(|i| *i < p.contacts.len())
            .unwrap_or(0);
        let Some(contact) = p.contacts.get(idx) else {
            return Ok(());
        };
        let id = self.ids.message(now);
        let lead = members.iter().find(|a| must_page(a)).or(members.first());
        let mut body = Message {
            id: id.clone(),
            kind,
            sent_at: None,
            alarm: lead.cloned(),
            recipient: person.to_string(),
            recipient_name: p.name.clone(),
            language: p.language.clone(),
            incident: Some(IncidentPart {
                id: inc.id.clone(),
                count: members.len(),
                alarms: members.to_vec(),
            }),
            board_url: format!("{}/", self.public_url),
            escalation_level: (level > 0).then_some(level),
            episode: None,
            ack_url: None,
            ack_code: None,
            ack_expires_at: None,
            messages: None,
        };
        if kind.is_brief() {
            // What the person reads first: when it began and ended, and when
            // the data behind it arrived if that was after the fact.
            body.episode = Some(Episode {
                from: members.iter().map(|a| a.raised_at).min(),
                to: members.iter().filter_map(|a| a.cleared_at).max(),
                reported_at: members.iter().filter(|a| a.late).map(|a| a.detected_at).max(),
                sites: distinct_sites(members),
            });
        }
        if kind.asks_ack() {
            let (token, code) = self.ids.ack();
            let expires = now + Duration::minutes(self.n.settings.ack_link_ttl_minutes);
            l.grant(&Grant {
                token_hash: sha256_hex(&token),
                code: code.clone(),
                incident: inc.id.clone(),
                person: person.to_string(),
                channel: contact.kind.clone(),
                expires,
            })?;
            body.ack_url = Some(format!("{}/ack/{token}", self.public_url));
            body.ack_code = Some(code);
            body.ack_expires_at = Some(expires);
        }
        let window = Duration::minutes(self.n.settings.rate_limit_window_minutes);
        let held = l.counted_since(person, now - window)? >= self.n.settings.rate_limit_per_recipient;
        l.insert(
            &OutboxRow {
                incident_id: inc.id.clone(),
                contact_idx: idx,
                channel: contact.channel(),
                level,
                state: if held { "held" } else { "pending" }.into(),
                alarm_ids: members.iter().map(|a| a.id.clone()).collect(),
                ..OutboxRow::due(now, body)
            },
            lead.map(|a| a.id.as_str()),
        )
    }

    /// Held messages (over a person's rate limit) go out as one summary once
    /// the window allows another message.
    fn summarise<L: Ledger + ?Sized>(&mut self, l: &mut L, now: Timestamp) -> Result<(), L::Error> {
        let held = l.held()?;
        if held.is_empty() {
            return Ok(());
        }
        // Per person, in the order they were first held.
        let mut by_person: Vec<(String, Vec<OutboxRow>)> = Vec::new();
        for r in held {
            match by_person.iter_mut().find(|(p, _)| *p == r.person) {
                Some((_, v)) => v.push(r),
                None => by_person.push((r.person.clone(), vec![r])),
            }
        }
        let window = Duration::minutes(self.n.settings.rate_limit_window_minutes);
        for (person, rows) in by_person {
            if l.counted_since(&person, now - window)? >= self.n.settings.rate_limit_per_recipient {
                continue;
            }
            let Some(p) = self.n.person(&person) else {
                continue;
            };
            let Some(contact) = p.contacts.first() else { continue };
            let messages: Vec<Held> = rows
                .iter()
                .map(|r| &r.body)
                .map(|b| Held {
                    id: b.id.clone(),
                    kind: b.kind,
                    alarm: b.alarm.clone(),
                    incident: b.incident.as_ref().map(|i| i.id.clone()),
                })
                .collect();
            let id = self.ids.message(now);
            let body = Message {
                id: id.clone(),
                kind: Kind::Summary,
                sent_at: None,
                alarm: None,
                recipient: person.clone(),
                recipient_name: p.name.clone(),
                language: p.language.clone(),
                incident: None,
                board_url: format!("{}/", self.public_url),
                escalation_level: None,
                episode: None,
                ack_url: None,
                ack_code: None,
                ack_expires_at: None,
                messages: Some(messages),
            };
            let mut ids: Vec<String> = rows.iter().flat_map(|r| r.alarm_ids.clone()).collect();
            ids.sort();
            ids.dedup();
            l.insert(
                &OutboxRow {
                    channel: contact.channel(),
                    alarm_ids: ids,
                    ..OutboxRow::due(now, body)
                },
                None,
            )?;
            for r in rows {
                l.summarized(&r.id)?;
            }
        }
        Ok(())
    }
}

fn distinct_sites(members: &[Alarm]) -> usize {
    let mut s: Vec<&str> = members.iter().map(|a| a.site.as_str()).collect();
    s.sort_unstable();
    s.dedup();
    s.len()
}

/// A message the dry run would have sent, as interfaces.md's replay JSON
/// lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DryMessage {
    pub at: Timestamp,
    #[serde(rename = "type")]
    pub kind: Kind,
    /// The alarm it is mainly about (none for a summary of held messages).
    pub alarm: Option<String>,
    pub incident: String,
    pub recipient: String,
    pub channel: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub escalation_level: Option<usize>,
    /// Every alarm the message is about.
    pub alarms: Vec<String>,
}

/// The planner's state in memory, for replay: every planned message counts
/// as delivered at once by its first contact method (a dry run has no
/// receivers to fail), and nobody acknowledges from a message.
#[derive(Default)]
pub struct MemLedger {
    alarms: HashMap<String, Alarm>,
    /// Who was told per open incident.
    told: HashMap<String, Vec<String>>,
    /// Per person, when each message counted against the rate limit was made.
    counted: HashMap<String, VecDeque<Timestamp>>,
    held: Vec<OutboxRow>,
    /// What would have been sent, in order.
    pub sent: Vec<DryMessage>,
    /// Messages held by the rate limit (and later summarised).
    pub held_total: u64,
    /// How far back the rate limit looks (older counts are dropped).
    window: Duration,
}

impl MemLedger {
    pub fn new(n: &NotifyConfig) -> Self {
        Self {
            window: Duration::minutes(n.settings.rate_limit_window_minutes),
            ..Default::default()
        }
    }

    /// The alarm as the engine just changed it.
    pub fn update(&mut self, a: &Alarm) {
        self.alarms.insert(a.id.clone(), a.clone());
    }

    /// When the rate limit next lets a held message out as a summary: for
    /// each person with held messages, the moment the oldest message still
    /// counted against them leaves the window.
    pub fn next_release(&self, n: &NotifyConfig) -> Option<Timestamp> {
        let limit = n.settings.rate_limit_per_recipient.max(1);
        let mut people: Vec<&str> = self.held.iter().map(|r| r.person.as_str()).collect();
        people.sort_unstable();
        people.dedup();
        people
            .into_iter()
            .filter(|p| n.person(p).is_some_and(|p| !p.contacts.is_empty()))
            .map(|p| {
                let q = self.counted.get(p);
                match q.filter(|q| q.len() >= limit) {
                    Some(q) => q[q.len() - limit] + self.window + Duration::milliseconds(1),
                    None => Timestamp::MIN_UTC,
                }
            })
            .min()
    }

    /// Forgets alarms no open incident holds (memory stays flat over a year).
    pub fn forget(&mut self, open: &[Incident]) {
        if self.alarms.len() <= open.iter().map(|i| i.alarms.len()).sum::<usize>() {
            return;
        }
        let keep: std::collections::HashSet<&str> =
            open.iter().flat_map(|i| i.alarms.iter().map(String::as_str)).collect();
        self.alarms.retain(|id, _| keep.contains(id.as_str()));
    }
}

impl Ledger for MemLedger {
    type Error = std::convert::Infallible;

    fn alarm(&self, id: &str) -> Result<Option<Alarm>, Self::Error> {
        Ok(self.alarms.get(id).cloned())
    }
    fn save_incident(&mut self, i: &Incident) -> Result<(), Self::Error> {
        if i.closed {
            self.told.remove(&i.id);
        }
        Ok(())
    }
    fn notified(&self, incident: &str) -> Result<Vec<String>, Self::Error> {
        Ok(self.told.get(incident).cloned().unwrap_or_default())
    }
    fn last_contact(&self, _: &str, _: &str) -> Result<Option<usize>, Self::Error> {
        Ok(None)
    }
    fn counted_times(&self, person: &str, since: Timestamp) -> Result<Vec<Timestamp>, Self::Error> {
        Ok(self
            .counted
            .get(person)
            .map_or(Vec::new(), |q| q.iter().copied().filter(|t| *t > since).collect()))
    }
    fn grant(&mut self, _: &Grant) -> Result<(), Self::Error> {
        Ok(())
    }
    fn insert(&mut self, row: &OutboxRow, lead: Option<&str>) -> Result<(), Self::Error> {
        if row.kind != Kind::Summary && !row.incident_id.is_empty() {
            let told = self.told.entry(row.incident_id.clone()).or_default();
            if !told.contains(&row.person) {
                told.push(row.person.clone());
            }
        }
        if row.state == "held" {
            self.held_total += 1;
            self.held.push(row.clone());
            return Ok(());
        }
        let q = self.counted.entry(row.person.clone()).or_default();
        while q.front().is_some_and(|t| *t <= row.created_at - self.window) {
            q.pop_front();
        }
        q.push_back(row.created_at);
        self.sent.push(DryMessage {
            at: row.created_at,
            kind: row.kind,
            alarm: lead.map(str::to_string),
            incident: row.incident_id.clone(),
            recipient: row.person.clone(),
            channel: row.channel.clone(),
            escalation_level: (row.level > 0).then_some(row.level),
            alarms: row.alarm_ids.clone(),
        });
        Ok(())
    }
    fn held(&self) -> Result<Vec<OutboxRow>, Self::Error> {
        Ok(self.held.clone())
    }
    fn summarized(&mut self, id: &str) -> Result<(), Self::Error> {
        self.held.retain(|r| r.id != id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alarm::{AlarmOrigin, RaiseSpec, Registry};
    use chrono::{DateTime, Utc};

    fn at(s: &str) -> Timestamp {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn notify(group_wait_s: u64) -> NotifyConfig {
        toml::from_str(&format!(
            r#"
[settings]
group_wait_s = {group_wait_s}
group_window_s = 0
group_by = ["site", "condition"]
[[webhook]]
name = "hook"
url = "http://127.0.0.1:9/hook"
secret = "s"
[[person]]
id = "tanaka"
name = "田中"
contact = [{{kind = "webhook", to = "hook"}}]
[[policy]]
id = "p"
repeat_minutes = 1440
level = [{{after_minutes = 0, notify = ["person:tanaka"]}}]
[[route]]
policy = "p"
"#
        ))
        .expect("notify config parses")
    }

    /// B17's pressure below its limit, as its rule raises it.
    fn low_pressure(site: &crate::config::Site) -> RaiseSpec {
        RaiseSpec {
            site: site.id.clone(),
            device: site.device.clone(),
            source: "B17.p".into(),
            condition: "pressure_low".into(),
            origin: AlarmOrigin::Rule,
            priority: crate::device::Priority::High,
            value: Some(0.1),
            limit: Some(0.15),
            message: "Pressure low".into(),
            message_ja: "配水圧 低".into(),
            suppressed_by: vec![],
        }
    }

    /// One pressure episode of B17 from `from` to `to`, as the engine
    /// journals it: the raise and the clear, both told.
    fn episode(from: &str, to: &str, now: Timestamp) -> (Alarm, Vec<JournalRow>) {
        let cfg = Config::load_embedded().unwrap();
        let site = cfg.site("B17").unwrap().clone();
        let mut reg = Registry::new();
        let spec = low_pressure(&site);
        let key = spec.key();
        let raised = reg.raise(spec, at(from), now);
        let cleared = reg.clear(&key, at(to), now, Some(0.4));
        let a = cleared.last().unwrap().alarm.clone();
        let rows = raised.iter().chain(&cleared).map(JournalRow::of).collect();
        (a, rows)
    }

    /// Planning steps, each `(the alarm as it now stands, the journal rows
    /// read, at)`: what had been sent after each step.
    fn steps(n: &NotifyConfig, steps: Vec<(Option<Alarm>, Vec<JournalRow>, Timestamp)>) -> Vec<Vec<Kind>> {
        let cfg = Config::load_embedded().unwrap();
        let mut ledger = MemLedger::new(n);
        let mut ids = CountedIds::default();
        let mut planner = Planner {
            cfg: &cfg,
            n,
            public_url: "http://x",
            ids: &mut ids,
        };
        let mut open = Vec::new();
        let mut rates = RateWindow::default();
        let mut after = Vec::new();
        for (a, rows, now) in steps {
            if let Some(a) = a {
                ledger.update(&a);
            }
            let Ok(()) = planner.step(&mut ledger, &rows, &mut open, now, &mut rates);
            after.push(ledger.sent.iter().map(|m| m.kind).collect());
        }
        after
    }

    /// What the planner sends when it first sees an episode (raise and clear
    /// read together, as when mizuban was behind) at `now`.
    fn sent(group_wait_s: u64, from: &str, to: &str, now: &str) -> Vec<Kind> {
        let now = at(now);
        let (a, rows) = episode(from, to, now);
        // The group wait runs its course (and the catch-up of an alarm
        // learned late, see Planner::first_flush).
        let later = now + Duration::seconds(group_wait_s as i64 + Planner::CATCH_UP_S + 1);
        let mut after = steps(&notify(group_wait_s), vec![(Some(a), rows, now), (None, vec![], later)]);
        after.pop().unwrap()
    }

    #[test]
    fn an_episode_seen_late_because_mizuban_was_behind_is_paged_as_it_happened() {
        // 40 s by the device's clock, no group wait: an instant master station
        // would have paged the raise and the clear; so do we, though both
        // were read in one step.
        assert_eq!(
            sent(
                0,
                "2026-12-01T02:10:00Z",
                "2026-12-01T02:10:40Z",
                "2026-12-01T02:10:41Z"
            ),
            [Kind::AlarmRaised, Kind::AlarmCleared]
        );
        // It outlasted a 30 s group wait too.
        assert_eq!(
            sent(
                30,
                "2026-12-01T02:10:00Z",
                "2026-12-01T02:10:40Z",
                "2026-12-01T02:10:41Z"
            ),
            [Kind::AlarmRaised, Kind::AlarmCleared]
        );
    }

    #[test]
    fn a_blip_inside_the_group_wait_or_long_over_is_a_brief() {
        // Over within the group wait by the device's own clock: a brief.
        assert_eq!(
            sent(
                60,
                "2026-12-01T02:10:00Z",
                "2026-12-01T02:10:40Z",
                "2026-12-01T02:10:41Z"
            ),
            [Kind::AlarmBrief]
        );
        // Ended longer ago than late_after_s (900 s) when first seen: history.
        assert_eq!(
            sent(
                0,
                "2026-12-01T02:10:00Z",
                "2026-12-01T02:10:40Z",
                "2026-12-01T03:10:00Z"
            ),
            [Kind::AlarmBrief]
        );
    }

    #[test]
    fn an_alarm_learned_late_waits_for_the_rest_of_its_backlog_and_a_live_one_does_not() {
        let cfg = Config::load_embedded().unwrap();
        let site = cfg.site("B17").unwrap().clone();
        // (raised, cleared, read at): the raise is read at `now`, the clear
        // a moment later in the next commit; what went out by then, and
        // after the catch-up.
        let run = |raised: &str, cleared: &str, now: &str| {
            let now = at(now);
            let soon = now + Duration::milliseconds(50);
            let mut reg = Registry::new();
            let spec = low_pressure(&site);
            let key = spec.key();
            let raise = reg.raise(spec, at(raised), now);
            let clear = reg.clear(&key, at(cleared), soon, Some(0.4));
            let read = |ts: &[crate::alarm::Transition], t| {
                (
                    Some(ts.last().unwrap().alarm.clone()),
                    ts.iter().map(JournalRow::of).collect(),
                    t,
                )
            };
            let after = steps(
                &notify(0),
                vec![
                    read(&raise, now),
                    read(&clear, soon),
                    (None, vec![], now + Duration::seconds(3)),
                ],
            );
            (after[1].clone(), after[2].clone())
        };
        // Learned an hour after it began (late_after_s is 900 s), over 50 min
        // ago by the device's clock: held, then told as the brief it is.
        assert_eq!(
            run("2026-12-01T02:10:00Z", "2026-12-01T02:20:00Z", "2026-12-01T03:10:00Z"),
            (vec![], vec![Kind::AlarmBrief])
        );
        // Live: paged at once, then cleared.
        assert_eq!(
            run("2026-12-01T03:10:00Z", "2026-12-01T03:10:40Z", "2026-12-01T03:10:00Z"),
            (
                vec![Kind::AlarmRaised, Kind::AlarmCleared],
                vec![Kind::AlarmRaised, Kind::AlarmCleared]
            )
        );
    }

    /// A ledger that only stores rows and counts how often it is asked.
    #[derive(Default)]
    struct Rows {
        rows: Vec<OutboxRow>,
        asked: std::cell::Cell<usize>,
    }

    impl Ledger for Rows {
        type Error = std::convert::Infallible;
        fn alarm(&self, _: &str) -> Result<Option<Alarm>, Self::Error> {
            Ok(None)
        }
        fn save_incident(&mut self, _: &Incident) -> Result<(), Self::Error> {
            Ok(())
        }
        fn notified(&self, _: &str) -> Result<Vec<String>, Self::Error> {
            Ok(vec![])
        }
        fn last_contact(&self, _: &str, _: &str) -> Result<Option<usize>, Self::Error> {
            Ok(None)
        }
        fn counted_times(&self, person: &str, since: Timestamp) -> Result<Vec<Timestamp>, Self::Error> {
            self.asked.set(self.asked.get() + 1);
            Ok(self
                .rows
                .iter()
                .filter(|r| r.person == person && r.created_at > since && r.state != "held")
                .map(|r| r.created_at)
                .collect())
        }
        fn grant(&mut self, _: &Grant) -> Result<(), Self::Error> {
            Ok(())
        }
        fn insert(&mut self, row: &OutboxRow, _: Option<&str>) -> Result<(), Self::Error> {
            self.rows.push(row.clone());
            Ok(())
        }
        fn held(&self) -> Result<Vec<OutboxRow>, Self::Error> {
            Ok(vec![])
        }
        fn summarized(&mut self, _: &str) -> Result<(), Self::Error> {
            Ok(())
        }
    }

    #[test]
    fn a_persons_count_is_asked_once_and_kept_exact_as_steps_add_messages_and_the_window_slides() {
        let now = at("2026-12-01T02:10:00Z");
        let since = now - Duration::minutes(15);
        let row = |person: &str, state: &str, created: Timestamp| {
            let body = serde_json::from_value(serde_json::json!({"id": "m", "type": "alarm.raised", "sent_at": null,
                "recipient": person, "recipient_name": person, "language": "en", "board_url": "http://x/"}))
            .unwrap();
            OutboxRow {
                person: person.into(),
                state: state.into(),
                ..OutboxRow::due(created, body)
            }
        };
        let mut inner = Rows::default();
        // Before the step: two counted in the window, one too old, one held.
        for (state, t) in [
            ("sent", now - Duration::minutes(1)),
            ("pending", now),
            ("sent", now - Duration::minutes(20)),
            ("held", now),
        ] {
            inner.rows.push(row("sato", state, t));
        }
        let mut rates = RateWindow::default();
        let mut l = Counted {
            inner: &mut inner,
            rates: (&mut rates).into(),
        };
        assert_eq!(l.counted_since("sato", since), Ok(2));
        l.insert(&row("sato", "pending", now), None).unwrap();
        l.insert(&row("sato", "held", now), None).unwrap();
        l.insert(&row("sato", "pending", now), None).unwrap();
        assert_eq!(
            l.counted_since("sato", since),
            Ok(4),
            "the step's own messages, held ones not"
        );
        assert_eq!(l.counted_since("ito", since), Ok(0), "another person");
        assert_eq!(inner.asked.get(), 2, "once per person");
        // A step 14½ minutes on: the window slid past the message of 02:09,
        // and the count is kept, not asked again.
        let later = now + Duration::seconds(870);
        let mut l = Counted {
            inner: &mut inner,
            rates: (&mut rates).into(),
        };
        assert_eq!(l.counted_since("sato", later - Duration::minutes(15)), Ok(3));
        l.insert(&row("sato", "pending", later), None).unwrap();
        assert_eq!(l.counted_since("sato", later - Duration::minutes(15)), Ok(4));
        assert_eq!(inner.asked.get(), 2, "kept from step to step");
        assert_eq!(
            inner.counted_since("sato", later - Duration::minutes(15)),
            Ok(4),
            "what the ledger itself says"
        );
        inner.asked.set(2);
        // A window that starts earlier than the one kept is asked afresh.
        let wider = now - Duration::minutes(30);
        let l = Counted {
            inner: &mut inner,
            rates: (&mut rates).into(),
        };
        assert_eq!(l.counted_since("sato", wider), Ok(6));
        assert_eq!(inner.asked.get(), 3);
        // After a step that did not commit, everything is asked again.
        rates.clear();
        let l = Counted {
            inner: &mut inner,
            rates: (&mut rates).into(),
        };
        assert_eq!(l.counted_since("sato", wider), Ok(6));
        assert_eq!(inner.asked.get(), 4);
    }

    /// A logger chattering after its return to normal was told: one page
    /// and one return, then its re-raises (one occurrence, not paged one by
    /// one) counted in one `alarm.reactivated` once it is over.
    #[test]
    fn a_chattering_occurrence_is_paged_once_and_its_comebacks_counted_when_over() {
        let cfg = Config::load_embedded().unwrap();
        let n = notify(0);
        let site = cfg.site("B17").unwrap().clone();
        let t = |s: i64| at("2026-12-01T02:10:00Z") + Duration::seconds(s);
        /// One logger's alarm and the planner, stepped after each transition
        /// as the live engine steps it.
        struct Desk<'c> {
            cfg: &'c Config,
            n: &'c NotifyConfig,
            spec: RaiseSpec,
            reg: Registry,
            ledger: MemLedger,
            ids: CountedIds,
            open: Vec<Incident>,
            rates: RateWindow,
        }
        impl Desk<'_> {
            fn feed(&mut self, tr: Vec<crate::alarm::Transition>, now: Timestamp) {
                let rows: Vec<JournalRow> = tr.iter().map(JournalRow::of).collect();
                for t in &tr {
                    self.ledger.update(&t.alarm);
                }
                let mut planner = Planner {
                    cfg: self.cfg,
                    n: self.n,
                    public_url: "http://x",
                    ids: &mut self.ids,
                };
                let Ok(()) = planner.step(&mut self.ledger, &rows, &mut self.open, now, &mut self.rates);
            }
            fn raise(&mut self, now: Timestamp) {
                let tr = self.reg.raise(self.spec.clone(), now, now);
                self.feed(tr, now);
            }
            fn clear(&mut self, now: Timestamp) {
                let tr = self.reg.clear(&self.spec.key(), now, now, Some(0.4));
                self.feed(tr, now);
            }
            /// Acknowledges it; how often it had come back.
            fn ack(&mut self, now: Timestamp) -> (String, u32) {
                let id = self.reg.get_key(&self.spec.key()).unwrap().id.clone();
                let acked = self.reg.ack(&id, "sato", None, now).unwrap();
                let n = acked.alarm.reactivations;
                self.feed(vec![acked], now);
                (id, n)
            }
            fn kinds(&self) -> Vec<Kind> {
                self.ledger.sent.iter().map(|m| m.kind).collect()
            }
        }
        let desk = || Desk {
            cfg: &cfg,
            n: &n,
            spec: low_pressure(&site),
            reg: Registry::new(),
            ledger: MemLedger::new(&n),
            ids: CountedIds::default(),
            open: Vec::new(),
            rates: RateWindow::default(),
        };
        let mut d = desk();
        d.raise(t(0));
        d.clear(t(5));
        for k in 0..3 {
            d.raise(t(10 + 10 * k));
            d.clear(t(12 + 10 * k));
        }
        assert_eq!(
            d.kinds(),
            [Kind::AlarmRaised, Kind::AlarmCleared],
            "the comebacks are not paged one by one"
        );
        let (id, reactivations) = d.ack(t(60));
        assert_eq!(reactivations, 3);
        assert_eq!(
            d.kinds(),
            [Kind::AlarmRaised, Kind::AlarmCleared, Kind::AlarmReactivated],
            "once over, the comebacks are counted in one message"
        );
        let last = d.ledger.sent.last().unwrap();
        assert_eq!(
            (last.alarm.as_deref(), last.recipient.as_str()),
            (Some(id.as_str()), "tanaka")
        );
        // Acknowledged at once after its first return: nothing to count.
        let mut d = desk();
        d.raise(t(0));
        d.clear(t(5));
        d.ack(t(6));
        assert_eq!(d.kinds(), [Kind::AlarmRaised, Kind::AlarmCleared]);
    }
}
