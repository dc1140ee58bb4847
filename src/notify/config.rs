//! Notification configuration (`service.notify_file`): who is on call, how to
//! reach them, which alarms go to whom, and how escalation proceeds.
//!
//! ```toml
//! [settings]            # grouping, rate limit, retries, ack links
//! [smtp]                # the mail relay
//! [[webhook]]           # receivers: url, secret, format (mizuban | slack | teams)
//! [[person]]            # id, name, language, contacts in order
//! [[team]]              # rotation daily/weekly, hand-over at local time
//! [[override]]          # one-off swaps
//! [[policy]]            # escalation levels
//! [[route]]             # match -> policy, first match wins
//! ```

use crate::device::Priority;
use crate::model::SiteKind;
use chrono::{DateTime, NaiveDate, NaiveTime, Utc, Weekday};
use serde::Deserialize;
use std::collections::HashSet;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// A new group waits this long for more alarms of the same cause before its
    /// first message goes out (Alertmanager's group_wait).
    #[serde(default = "d_group_wait")]
    pub group_wait_s: u64,
    /// Alarms of the same cause join an open incident for this long after it opened.
    #[serde(default = "d_group_window")]
    pub group_window_s: u64,
    /// Updates to an open incident go out at most this often.
    #[serde(default = "d_group_interval")]
    pub group_interval_s: u64,
    /// What "the same cause" means: any of `area`, `condition`, `site`, `kind`, `priority`.
    #[serde(default = "d_group_by")]
    pub group_by: Vec<String>,
    /// How long an acknowledge link in a message works.
    #[serde(default = "d_ack_ttl")]
    pub ack_link_ttl_minutes: i64,
    /// At most this many messages per person per window; the rest become one summary.
    #[serde(default = "d_rate")]
    pub rate_limit_per_recipient: usize,
    #[serde(default = "d_rate_window")]
    pub rate_limit_window_minutes: i64,
    /// Attempts on one contact method before the next one is tried.
    #[serde(default = "d_attempts")]
    pub retry_max_attempts: u32,
    #[serde(default = "d_retry_base")]
    pub retry_base_s: u64,
    #[serde(default = "d_retry_max")]
    pub retry_max_s: u64,
    /// Where e-mails are also written as `.eml` files (for a human to read; unset: not).
    #[serde(default)]
    pub mail_copy_dir: Option<String>,
}

fn d_group_wait() -> u64 {
    30
}
fn d_group_window() -> u64 {
    3600
}
fn d_group_interval() -> u64 {
    300
}
fn d_group_by() -> Vec<String> {
    vec!["area".into(), "condition".into()]
}
fn d_ack_ttl() -> i64 {
    720
}
fn d_rate() -> usize {
    10
}
fn d_rate_window() -> i64 {
    15
}
fn d_attempts() -> u32 {
    6
}
fn d_retry_base() -> u64 {
    5
}
fn d_retry_max() -> u64 {
    300
}

impl Default for Settings {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Smtp {
    pub host: String,
    #[serde(default = "d_smtp_port")]
    pub port: u16,
    pub from: String,
    /// STARTTLS before authenticating (a relay on the internet); off for a local relay.
    #[serde(default)]
    pub starttls: bool,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default = "d_smtp_timeout")]
    pub timeout_s: u64,
    /// Mails handed to the relay at once.
    #[serde(default = "d_smtp_in_flight")]
    pub max_in_flight: usize,
}
fn d_smtp_in_flight() -> usize {
    4
}
fn d_smtp_port() -> u16 {
    25
}
fn d_smtp_timeout() -> u64 {
    10
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// The contract in interfaces.md.
    Mizuban,
    /// `{"text": ...}` for Slack / Mattermost / Rocket.Chat incoming webhooks.
    Slack,
    /// A MessageCard for Microsoft Teams incoming webhooks.
    Teams,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    pub name: String,
    pub url: String,
    /// HMAC-SHA256 key for `X-Mizuban-Signature`.
    pub secret: String,
    #[serde(default = "d_format")]
    pub format: WebhookFormat,
    #[serde(default = "d_hook_timeout")]
    pub timeout_s: u64,
    /// Messages to this receiver in flight at once (its own connection
    /// pool): a storm queues in the outbox, never in sockets without bound.
    #[serde(default = "d_in_flight")]
    pub max_in_flight: usize,
}
fn d_in_flight() -> usize {
    16
}
fn d_format() -> WebhookFormat {
    WebhookFormat::Mizuban
}
fn d_hook_timeout() -> u64 {
    10
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Contact {
    /// `email` or `webhook`.
    pub kind: String,
    /// An address, or a webhook's name.
    pub to: String,
}

impl Contact {
    /// `kind:to`, as the outbox records it.
    pub fn channel(&self) -> String {
        format!("{}:{}", self.kind, self.to)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Person {
    pub id: String,
    pub name: String,
    #[serde(default = "d_lang")]
    pub language: String,
    /// Tried in order: the next one when the one before keeps failing.
    #[serde(rename = "contact")]
    pub contacts: Vec<Contact>,
}
fn d_lang() -> String {
    "ja".into()
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Rotation {
    Daily,
    Weekly,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Team {
    pub id: String,
    pub rotation: Rotation,
    /// Local time of the hand-over, `HH:MM`.
    pub handover: String,
    /// Weekly rotations: the day of the hand-over (`mon` … `sun`).
    #[serde(default)]
    pub handover_day: Option<String>,
    /// The local date the first member's first shift starts.
    pub start: NaiveDate,
    pub members: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Override {
    pub team: String,
    pub person: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Level {
    /// Minutes after the first message that this level is told (if still unacknowledged).
    pub after_minutes: f64,
    /// `team:ID` (whoever is on call) or `person:ID`.
    pub notify: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub id: String,
    #[serde(rename = "level")]
    pub levels: Vec<Level>,
    /// After the last level, tell it again this often until acknowledged.
    pub repeat_minutes: f64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub policy: String,
    #[serde(default)]
    pub sites: Vec<String>,
    #[serde(default)]
    pub areas: Vec<String>,
    #[serde(default)]
    pub kinds: Vec<SiteKind>,
    #[serde(default)]
    pub conditions: Vec<String>,
    #[serde(default)]
    pub priorities: Vec<Priority>,
    /// Local time window `HH:MM-HH:MM` (may wrap midnight); empty: any time.
    #[serde(default)]
    pub hours: Option<String>,
    /// Episodes over before anyone was paged (raised and cleared within the
    /// group wait, or reported by late data) go to the policy's first level
    /// as one short brief. `false`: the board only.
    #[serde(default = "d_true")]
    pub briefs: bool,
}

fn d_true() -> bool {
    true
}

/// A problem in the file: the `index`-th `[[table]]` entry's `field`.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub table: &'static str,
    pub index: usize,
    pub field: String,
    pub message: String,
}

impl Problem {
    fn at(table: &'static str, index: usize, field: &str, message: String) -> Self {
        Self {
            table,
            index,
            field: field.to_string(),
            message,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    #[serde(default)]
    pub settings: Settings,
    #[serde(default)]
    pub smtp: Option<Smtp>,
    #[serde(default, rename = "webhook")]
    pub webhooks: Vec<Webhook>,
    #[serde(default, rename = "person")]
    pub persons: Vec<Person>,
    #[serde(default, rename = "team")]
    pub teams: Vec<Team>,
    #[serde(default, rename = "override")]
    pub overrides: Vec<Override>,
    #[serde(default, rename = "policy")]
    pub policies: Vec<Policy>,
    #[serde(default, rename = "route")]
    pub routes: Vec<Route>,
}

pub fn parse_hhmm(s: &str) -> Option<NaiveTime> {
    NaiveTime::parse_from_str(s.trim(), "%H:%M").ok()
}

pub fn parse_weekday(s: &str) -> Option<Weekday> {
    s.parse::<Weekday>().ok()
}

impl NotifyConfig {
    pub fn person(&self, id: &str) -> Option<&Person> {
        self.persons.iter().find(|p| p.id == id)
    }
    pub fn webhook(&self, name: &str) -> Option<&Webhook> {
        self.webhooks.iter().find(|w| w.name == name)
    }
    pub fn policy(&self, id: &str) -> Option<&Policy> {
        self.policies.iter().find(|p| p.id == id)
    }

    /// Every inconsistency, each located at its entry and field: references
    /// to people, teams, webhooks, policies, sites and areas that do not
    /// exist, bad times, empty levels.
    pub fn validate(&self, sites: &[std::sync::Arc<crate::config::Site>]) -> Vec<Problem> {
        let mut e: Vec<Problem> = Vec::new();
        let site_ids: HashSet<&str> = sites.iter().map(|s| s.id.as_str()).collect();
        let areas: HashSet<&str> = sites.iter().map(|s| s.area.as_str()).collect();
        let persons: HashSet<&str> = self.persons.iter().map(|p| p.id.as_str()).collect();
        let teams: HashSet<&str> = self.teams.iter().map(|t| t.id.as_str()).collect();
        for (i, w) in self.webhooks.iter().enumerate() {
            if w.max_in_flight == 0 {
                e.push(Problem::at(
                    "webhook",
                    i,
                    "max_in_flight",
                    format!("webhook {}: max_in_flight must be at least 1", w.name),
                ));
            }
        }
        if self.smtp.as_ref().is_some_and(|s| s.max_in_flight == 0) {
            e.push(Problem::at(
                "smtp",
                0,
                "max_in_flight",
                "smtp: max_in_flight must be at least 1".into(),
            ));
        }
        for (i, p) in self.persons.iter().enumerate() {
            if !matches!(p.language.as_str(), "ja" | "en") {
                e.push(Problem::at(
                    "person",
                    i,
                    "language",
                    format!("person {}: language must be ja or en", p.id),
                ));
            }
            if p.contacts.is_empty() {
                e.push(Problem::at(
                    "person",
                    i,
                    "contact",
                    format!("person {} has no contact", p.id),
                ));
            }
            for c in &p.contacts {
                match c.kind.as_str() {
                    "email" if c.to.contains('@') => {}
                    "email" => e.push(Problem::at(
                        "person",
                        i,
                        "to",
                        format!("person {}: {:?} is not an address", p.id, c.to),
                    )),
                    "webhook" if self.webhook(&c.to).is_some() => {}
                    "webhook" => e.push(Problem::at(
                        "person",
                        i,
                        "to",
                        format!("person {}: no webhook named {:?}", p.id, c.to),
                    )),
                    other => e.push(Problem::at(
                        "person",
                        i,
                        "kind",
                        format!("person {}: contact kind {other:?} is not email or webhook", p.id),
                    )),
                }
                if c.kind == "email" && self.smtp.is_none() {
                    e.push(Problem::at(
                        "person",
                        i,
                        "smtp",
                        format!("person {} has an e-mail contact but there is no [smtp]", p.id),
                    ));
                }
            }
        }
        for (i, t) in self.teams.iter().enumerate() {
            if parse_hhmm(&t.handover).is_none() {
                e.push(Problem::at(
                    "team",
                    i,
                    "handover",
                    format!("team {}: {:?} is not HH:MM", t.id, t.handover),
                ));
            }
            if t.rotation == Rotation::Weekly && t.handover_day.as_deref().and_then(parse_weekday).is_none() {
                e.push(Problem::at(
                    "team",
                    i,
                    "handover_day",
                    format!("team {}: a weekly rotation needs handover_day (mon..sun)", t.id),
                ));
            }
            if t.members.is_empty() {
                e.push(Problem::at(
                    "team",
                    i,
                    "members",
                    format!("team {} has no members", t.id),
                ));
            }
            for m in &t.members {
                if !persons.contains(m.as_str()) {
                    e.push(Problem::at(
                        "team",
                        i,
                        "members",
                        format!("team {}: no person {m:?}", t.id),
                    ));
                }
            }
        }
        for (i, o) in self.overrides.iter().enumerate() {
            if !teams.contains(o.team.as_str()) {
                e.push(Problem::at(
                    "override",
                    i,
                    "team",
                    format!("override: no team {:?}", o.team),
                ));
            }
            if !persons.contains(o.person.as_str()) {
                e.push(Problem::at(
                    "override",
                    i,
                    "person",
                    format!("override: no person {:?}", o.person),
                ));
            }
            if o.to <= o.from {
                e.push(Problem::at(
                    "override",
                    i,
                    "to",
                    "override ends before it starts".into(),
                ));
            }
        }
        for (i, p) in self.policies.iter().enumerate() {
            if p.levels.is_empty() {
                e.push(Problem::at(
                    "policy",
                    i,
                    "level",
                    format!("policy {} has no levels", p.id),
                ));
            }
            if p.repeat_minutes <= 0.0 {
                e.push(Problem::at(
                    "policy",
                    i,
                    "repeat_minutes",
                    format!("policy {}: repeat_minutes must be above 0", p.id),
                ));
            }
            let mut last = -1.0;
            for l in &p.levels {
                if l.after_minutes < last {
                    e.push(Problem::at(
                        "policy",
                        i,
                        "after_minutes",
                        format!("policy {}: levels must be in time order", p.id),
                    ));
                }
                last = l.after_minutes;
                for target in &l.notify {
                    let ok = match target.split_once(':') {
                        Some(("team", id)) => teams.contains(id),
                        Some(("person", id)) => persons.contains(id),
                        _ => false,
                    };
                    if !ok {
                        e.push(Problem::at(
                            "policy",
                            i,
                            "notify",
                            format!("policy {}: {target:?} is not a known team:ID or person:ID", p.id),
                        ));
                    }
                }
            }
        }
        for (i, r) in self.routes.iter().enumerate() {
            if self.policy(&r.policy).is_none() {
                e.push(Problem::at(
                    "route",
                    i,
                    "policy",
                    format!("route: no policy {:?}", r.policy),
                ));
            }
            for site in &r.sites {
                if !site_ids.contains(site.as_str()) {
                    e.push(Problem::at(
                        "route",
                        i,
                        "sites",
                        format!("route: no site {site:?} is configured"),
                    ));
                }
            }
            for area in &r.areas {
                if !areas.contains(area.as_str()) {
                    e.push(Problem::at(
                        "route",
                        i,
                        "areas",
                        format!("route: no site is in area {area:?}"),
                    ));
                }
            }
            if let Some(h) = &r.hours {
                if super::route::parse_window(h).is_none() {
                    e.push(Problem::at(
                        "route",
                        i,
                        "hours",
                        format!("route: {h:?} is not HH:MM-HH:MM"),
                    ));
                }
            }
        }
        for g in &self.settings.group_by {
            if !matches!(g.as_str(), "area" | "condition" | "site" | "kind" | "priority") {
                e.push(Problem::at(
                    "settings",
                    0,
                    "group_by",
                    format!("{g:?} is not area, condition, site, kind or priority"),
                ));
            }
        }
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_akita_file_is_valid() {
        let n: NotifyConfig = toml::from_str(include_str!("../../config/akita-notify.toml")).unwrap();
        let cfg = crate::config::Config::load_embedded().unwrap();
        assert_eq!(n.validate(&cfg.sites), Vec::<Problem>::new());
        assert_eq!(n.routes.len(), 4);
    }

    #[test]
    fn dangling_references_are_reported() {
        let n: NotifyConfig = toml::from_str(
            r#"
[[person]]
id = "a"
name = "A"
contact = [{kind = "email", to = "a@x"}, {kind = "webhook", to = "nope"}]
[[team]]
id = "t"
rotation = "weekly"
handover = "25:00"
start = "2025-01-01"
members = ["a", "ghost"]
[[policy]]
id = "p"
repeat_minutes = 10
level = [{after_minutes = 0, notify = ["team:t", "team:missing"]}]
[[route]]
policy = "q"
hours = "late"
"#,
        )
        .unwrap();
        let fields: Vec<String> = n.validate(&[]).into_iter().map(|p| p.field).collect();
        for f in [
            "to",
            "smtp",
            "handover",
            "handover_day",
            "members",
            "notify",
            "policy",
            "hours",
        ] {
            assert!(fields.iter().any(|x| x == f), "{f} not reported: {fields:?}");
        }
    }
}
