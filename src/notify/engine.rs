use super::config::{NotifyConfig, Person, WebhookFormat};
use super::db::{self, ms, Incident, OutboxRow};
use super::{render, roster, route};
use crate::alarm::{Alarm, AlarmOrigin, AlarmState, RaiseSpec};
use crate::config::Config;
use crate::device::Priority;
use crate::model::secret::{hmac_sha256_hex, random_from, random_hex, sha256_hex};
use crate::model::{Clock, Timestamp};
use crate::pipeline::{Command, Pipeline};
use crate::telemetry::metrics::ChannelResultLabel;
use crate::telemetry::Metrics;
use chrono::Duration;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How often the engine looks at the journal, its timers and the outbox.
const STEP: std::time::Duration = std::time::Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum AckError {
    #[error("unknown or mistyped acknowledgement link or code")]
    Unknown,
    #[error("this acknowledgement link has expired")]
    Expired,
    #[error("this acknowledgement link has already been used")]
    Used,
    #[error("{0}")]
    Failed(String),
}

/// How an acknowledgement from a message arrives: the link's token, or the
/// short code typed into another system.
#[derive(Debug, Clone, Copy)]
pub enum AckKey<'a> {
    Link(&'a str),
    Code(&'a str),
}

struct Grant {
    incident: String,
    person: String,
    /// The channel the link was sent through (`email`, `webhook`).
    channel: String,
    expires: Timestamp,
    used: bool,
    members: Vec<Alarm>,
}

impl From<rusqlite::Error> for AckError {
    fn from(e: rusqlite::Error) -> Self {
        AckError::Failed(e.to_string())
    }
}

struct Inner {
    cfg: Arc<Config>,
    n: Arc<NotifyConfig>,
    clock: Arc<dyn Clock>,
    pipeline: Pipeline,
    metrics: Arc<Metrics>,
    conn: Mutex<Connection>,
    http: reqwest::Client,
    smtp: Option<AsyncSmtpTransport<Tokio1Executor>>,
    public_url: String,
    /// People whose delivery failed with every contact method, and the site
    /// the `notification_failed` alarm was raised on (cleared on the next success).
    failing: Mutex<HashMap<String, crate::model::SiteId>>,
}

/// Handle to the notification engine: the API acknowledges through it and
/// reads who was told what.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

/// `n-<time>-<random>`: the message's idempotency key, kept across retries.
fn message_id(now: Timestamp) -> String {
    format!("n-{}-{}", now.format("%Y%m%d%H%M%S"), random_hex(6))
}

/// 8 characters a person can type from a phone screen: no 0/O or 1/I/L.
fn short_code() -> String {
    random_from(b"ABCDEFGHJKMNPQRSTUVWXYZ23456789", 8)
}

/// Someone must still be paged about it: active and unacknowledged, and not
/// shelved, out of service or suppressed — exactly ISA-18.2's UNACK ACTIVE.
/// (Not `Alarm::needs_attention`, which also keeps acknowledged and returned
/// alarms on the board.)
fn must_page(a: &Alarm) -> bool {
    a.derive_state() == AlarmState::UnackActive
}

fn mins(m: f64) -> Duration {
    Duration::milliseconds((m * 60_000.0) as i64)
}

impl Notifier {
    /// Opens the notification tables and starts the engine task.
    pub fn start(
        cfg: Arc<Config>,
        n: Arc<NotifyConfig>,
        clock: Arc<dyn Clock>,
        pipeline: Pipeline,
        metrics: Arc<Metrics>,
        public_url: String,
        mut commits: crate::store::Commits,
        cancel: CancellationToken,
    ) -> anyhow::Result<(Self, JoinHandle<()>)> {
        let conn = db::open(&cfg.store_path)?;
        let smtp = match &n.smtp {
            None => None,
            Some(s) => {
                let b = if s.starttls {
                    AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&s.host)?
                } else {
                    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&s.host)
                };
                let mut b = b
                    .port(s.port)
                    .timeout(Some(std::time::Duration::from_secs(s.timeout_s)));
                if let (Some(u), Some(p)) = (&s.username, &s.password) {
                    b = b.credentials(lettre::transport::smtp::authentication::Credentials::new(
                        u.clone(),
                        p.clone(),
                    ));
                }
                Some(b.build())
            }
        };
        let me = Self {
            inner: Arc::new(Inner {
                cfg,
                n,
                clock,
                pipeline,
                metrics,
                conn: Mutex::new(conn),
                http: reqwest::Client::builder().build()?,
                smtp,
                public_url: public_url.trim_end_matches('/').to_string(),
                failing: Mutex::new(HashMap::new()),
            }),
        };
        let engine = me.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(STEP);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    // New transitions committed: page now, not at the next step.
                    // A lag only means several commits are read at once (the
                    // engine follows the journal with its own cursor).
                    c = commits.recv() => match c {
                        Ok(c) if c.transitions.is_empty() => continue,
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    },
                    // Time-driven work: group waits, escalations, retries.
                    _ = tick.tick() => {}
                }
                // SQLite work off the async workers: it may wait for the
                // store's writer (busy timeout).
                let e = engine.clone();
                match tokio::task::spawn_blocking(move || e.plan()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "notification engine step failed; retrying");
                        continue;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "notification engine step panicked; retrying");
                        continue;
                    }
                }
                engine.deliver().await;
            }
        });
        Ok((me, task))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.inner.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Everything that decides what to send, in one transaction: follow the
    /// journal, flush groups, escalate, summarise held messages.
    fn plan(&self) -> rusqlite::Result<()> {
        let now = self.inner.clock.now();
        let mut c = self.lock();
        // Most steps have nothing to do: find that out with a read, so the
        // engine does not take the database's write lock ten times a second
        // from under the store's writer (the ingest path).
        let (work, pending) = db::work_due(&c, now)?;
        self.inner.metrics.notify_pending.set(pending);
        if !work {
            return Ok(());
        }
        // IMMEDIATE: take the write lock up front. A deferred transaction that
        // reads and then writes fails at once (SQLITE_BUSY_SNAPSHOT) whenever
        // the store's writer committed in between, instead of waiting its turn.
        let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut open = db::open_incidents(&tx)?;
        self.follow_journal(&tx, now, &mut open)?;
        for inc in open.iter_mut().filter(|i| !i.closed) {
            if inc.flush_at.is_some_and(|t| t <= now) {
                self.flush(&tx, inc, now)?;
                db::save_incident(&tx, inc)?;
            }
            if inc.next_level_at.is_some_and(|t| t <= now) {
                self.escalate(&tx, inc, now)?;
                db::save_incident(&tx, inc)?;
            }
        }
        self.summarise(&tx, now)?;
        self.inner.metrics.notify_pending.set(db::pending_count(&tx)?);
        tx.commit()
    }

    fn alarm(c: &Connection, id: &str) -> rusqlite::Result<Option<Alarm>> {
        let j: Option<String> = c
            .query_row("SELECT json FROM alarms WHERE id = ?1", [id], |r| r.get(0))
            .optional()?;
        Ok(j.and_then(|j| serde_json::from_str(&j).ok()))
    }

    fn members(c: &Connection, inc: &Incident) -> rusqlite::Result<Vec<Alarm>> {
        let mut v = Vec::new();
        for id in &inc.alarms {
            if let Some(a) = Self::alarm(c, id)? {
                v.push(a);
            }
        }
        Ok(v)
    }

    fn group_key(&self, policy: &str, a: &Alarm) -> String {
        let site = self.inner.cfg.site(a.site.as_str());
        let mut k = policy.to_string();
        for g in &self.inner.n.settings.group_by {
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

    /// Handles new journal rows against the open incidents (`open`, updated in place).
    fn follow_journal(&self, c: &Connection, now: Timestamp, open: &mut Vec<Incident>) -> rusqlite::Result<()> {
        let cur = db::cursor(c)?;
        let rows: Vec<(i64, String, String, bool)> = {
            let mut st = c.prepare_cached(
                "SELECT seq, alarm_id, action, notify FROM journal WHERE seq > ?1 ORDER BY seq LIMIT 1000",
            )?;
            let r = st.query_map([cur], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<_, i64>(3)? != 0))
            })?;
            r.collect::<rusqlite::Result<_>>()?
        };
        let Some(last) = rows.last().map(|r| r.0) else {
            return Ok(());
        };
        for (_, alarm_id, action, notify) in rows {
            if alarm_id.is_empty() {
                continue; // device commands
            }
            let Some(a) = Self::alarm(c, &alarm_id)? else { continue };
            let pos = open.iter().position(|i| !i.closed && i.alarms.contains(&alarm_id));
            match action.as_str() {
                "raise" | "confirm" | "unshelve" if notify => {
                    if let Some(p) = pos {
                        // Told again: a shelve ran out on an active alarm, or late
                        // data was confirmed. Start its escalation over.
                        let inc = &mut open[p];
                        if inc.first_sent_at.is_some() {
                            inc.first_sent_at = Some(now);
                            inc.level = 0;
                            inc.next_level_at = Some(now);
                            db::save_incident(c, inc)?;
                        }
                        continue;
                    }
                    let site = self.inner.cfg.site(a.site.as_str()).map(|s| s.as_ref());
                    let tz = self.inner.cfg.service.utc_offset_hours;
                    let Some(policy) = route::route(&self.inner.n, &a, site, now, tz) else {
                        continue;
                    };
                    let key = self.group_key(policy, &a);
                    let window = Duration::seconds(self.inner.n.settings.group_window_s as i64);
                    if let Some(inc) = open
                        .iter_mut()
                        .find(|i| !i.closed && i.group_key == key && i.opened_at + window > now)
                    {
                        inc.alarms.push(alarm_id.clone());
                        if inc.first_sent_at.is_some() {
                            if inc.next_level_at.is_none() {
                                // Everything before was handled; this one needs someone.
                                inc.first_sent_at = Some(now);
                                inc.level = 0;
                                inc.next_level_at = Some(now);
                            } else if inc.flush_at.is_none() {
                                let gap = Duration::seconds(self.inner.n.settings.group_interval_s as i64);
                                inc.flush_at = Some(inc.last_msg_at.map(|t| (t + gap).max(now)).unwrap_or(now));
                            }
                        }
                        db::save_incident(c, inc)?;
                    } else {
                        let inc = Incident {
                            id: format!("i-{}-{}", now.format("%Y%m%d%H%M%S"), random_hex(4)),
                            group_key: key,
                            policy: policy.to_string(),
                            site: a.site.as_str().to_string(),
                            opened_at: now,
                            first_sent_at: None,
                            flush_at: Some(now + Duration::seconds(self.inner.n.settings.group_wait_s as i64)),
                            last_msg_at: None,
                            level: 0,
                            next_level_at: None,
                            closed: false,
                            announced: 0,
                            alarms: vec![alarm_id.clone()],
                        };
                        db::save_incident(c, &inc)?;
                        open.push(inc);
                    }
                }
                "ack" | "shelve" | "out_of_service" | "suppress" | "clear" => {
                    let Some(p) = pos else { continue };
                    let inc = &mut open[p];
                    let members = Self::members(c, inc)?;
                    let told = inc.first_sent_at.is_some();
                    let single = inc.alarms.len() == 1;
                    if members.iter().all(|m| !m.active) {
                        // Back to normal: everyone who was told hears it.
                        inc.closed = true;
                        inc.next_level_at = None;
                        inc.flush_at = None;
                        if told {
                            let kind = if single { "alarm.cleared" } else { "incident.closed" };
                            self.tell_notified(c, inc, kind, &members, now)?;
                        }
                    } else if !members.iter().any(must_page) && inc.next_level_at.is_some() {
                        inc.next_level_at = None;
                        if told {
                            let kind = match action.as_str() {
                                "shelve" => Some("alarm.shelved"),
                                "ack" => Some("alarm.acknowledged"),
                                _ => None,
                            };
                            if let Some(kind) = kind {
                                self.tell_notified(c, inc, kind, &members, now)?;
                            }
                        }
                    }
                    db::save_incident(c, inc)?;
                }
                _ => {}
            }
        }
        db::set_cursor(c, last)?;
        Ok(())
    }

    /// The first message of a group after its wait, or an update to an open incident.
    fn flush(&self, c: &Connection, inc: &mut Incident, now: Timestamp) -> rusqlite::Result<()> {
        inc.flush_at = None;
        let members = Self::members(c, inc)?;
        if inc.first_sent_at.is_none() {
            if members.iter().any(must_page) {
                inc.first_sent_at = Some(now);
                inc.level = 0;
                inc.next_level_at = Some(now);
            }
            return Ok(());
        }
        if members.len() > inc.announced {
            let kind = if inc.announced <= 1 {
                "incident.opened"
            } else {
                "incident.updated"
            };
            self.tell_notified(c, inc, kind, &members, now)?;
            inc.announced = members.len();
            inc.last_msg_at = Some(now);
        }
        Ok(())
    }

    fn escalate(&self, c: &Connection, inc: &mut Incident, now: Timestamp) -> rusqlite::Result<()> {
        let members = Self::members(c, inc)?;
        let Some(policy) = self.inner.n.policy(&inc.policy) else {
            inc.next_level_at = None;
            return Ok(());
        };
        if !members.iter().any(must_page) || policy.levels.is_empty() {
            inc.next_level_at = None;
            return Ok(());
        }
        let idx = inc.level.min(policy.levels.len() - 1);
        let tz = self.inner.cfg.service.utc_offset_hours;
        let people = roster::resolve(&self.inner.n, &policy.levels[idx].notify, now, tz);
        let kind = match (inc.level, members.len() > 1) {
            (0, true) => "incident.opened",
            (0, false) => "alarm.raised",
            _ => "alarm.escalated",
        };
        for p in &people {
            self.enqueue(c, inc, p, kind, idx + 1, &members, now)?;
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

    fn tell_notified(
        &self,
        c: &Connection,
        inc: &Incident,
        kind: &str,
        members: &[Alarm],
        now: Timestamp,
    ) -> rusqlite::Result<()> {
        for p in db::notified(c, &inc.id)? {
            self.enqueue(c, inc, &p, kind, 0, members, now)?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn enqueue(
        &self,
        c: &Connection,
        inc: &Incident,
        person: &str,
        kind: &str,
        level: usize,
        members: &[Alarm],
        now: Timestamp,
    ) -> rusqlite::Result<()> {
        let Some(p) = self.inner.n.person(person) else {
            return Ok(());
        };
        // The contact method that last worked for this person about this
        // incident, so follow-ups do not rediscover a dead one first.
        let idx: usize = c
            .query_row(
                "SELECT contact_idx FROM outbox WHERE incident_id = ?1 AND person = ?2 AND state = 'sent' ORDER BY rowid DESC LIMIT 1",
                params![inc.id, person],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
            .map(|i| i as usize)
            .filter(|i| *i < p.contacts.len())
            .unwrap_or(0);
        let Some(contact) = p.contacts.get(idx) else {
            return Ok(());
        };
        let id = message_id(now);
        let lead = members.iter().find(|a| must_page(a)).or(members.first());
        let mut body = json!({
            "id": id, "type": kind, "sent_at": null,
            "alarm": lead, "recipient": person, "recipient_name": p.name, "language": p.language,
            "incident": {"id": inc.id, "count": members.len(), "alarms": members},
            "board_url": format!("{}/", self.inner.public_url),
        });
        if level > 0 {
            body["escalation_level"] = json!(level);
        }
        if matches!(
            kind,
            "alarm.raised" | "alarm.escalated" | "incident.opened" | "incident.updated"
        ) {
            let token = random_hex(24);
            let code = short_code();
            let expires = now + Duration::minutes(self.inner.n.settings.ack_link_ttl_minutes);
            c.execute(
                "INSERT INTO ack_tokens (token_hash, code, incident_id, person, channel, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![sha256_hex(&token), code, inc.id, person, contact.kind, ms(expires)],
            )?;
            body["ack_url"] = json!(format!("{}/ack/{token}", self.inner.public_url));
            body["ack_code"] = json!(code);
            body["ack_expires_at"] = json!(expires);
        }
        let window = Duration::minutes(self.inner.n.settings.rate_limit_window_minutes);
        let held = db::sent_since(c, person, now - window)? >= self.inner.n.settings.rate_limit_per_recipient;
        db::insert_outbox(
            c,
            &OutboxRow {
                id,
                incident_id: inc.id.clone(),
                kind: kind.to_string(),
                person: person.to_string(),
                contact_idx: idx,
                channel: contact.channel(),
                level,
                state: if held { "held" } else { "pending" }.into(),
                alarm_ids: members.iter().map(|a| a.id.clone()).collect(),
                body: body.to_string(),
                ..OutboxRow::due(now)
            },
        )
    }

    /// Held messages (over a person's rate limit) go out as one summary once
    /// the window allows another message.
    fn summarise(&self, c: &Connection, now: Timestamp) -> rusqlite::Result<()> {
        let held = db::outbox_where(c, "state = ?1", "held")?;
        let mut by_person: HashMap<String, Vec<OutboxRow>> = HashMap::new();
        for r in held {
            by_person.entry(r.person.clone()).or_default().push(r);
        }
        let window = Duration::minutes(self.inner.n.settings.rate_limit_window_minutes);
        for (person, rows) in by_person {
            if db::sent_since(c, &person, now - window)? >= self.inner.n.settings.rate_limit_per_recipient {
                continue;
            }
            let Some(p) = self.inner.n.person(&person) else {
                continue;
            };
            let Some(contact) = p.contacts.first() else { continue };
            let messages: Vec<Value> = rows
                .iter()
                .filter_map(|r| serde_json::from_str::<Value>(&r.body).ok())
                .map(
                    |b| json!({"id": b["id"], "type": b["type"], "alarm": b["alarm"], "incident": b["incident"]["id"]}),
                )
                .collect();
            let id = message_id(now);
            let body = json!({"id": id, "type": "summary", "sent_at": null, "recipient": person,
                "recipient_name": p.name, "language": p.language, "messages": messages,
                "board_url": format!("{}/", self.inner.public_url)});
            let mut ids: Vec<String> = rows.iter().flat_map(|r| r.alarm_ids.clone()).collect();
            ids.sort();
            ids.dedup();
            db::insert_outbox(
                c,
                &OutboxRow {
                    id,
                    kind: "summary".into(),
                    person: person.clone(),
                    channel: contact.channel(),
                    alarm_ids: ids,
                    body: body.to_string(),
                    ..OutboxRow::due(now)
                },
            )?;
            for r in rows {
                c.execute("UPDATE outbox SET state = 'summarized' WHERE id = ?1", [&r.id])?;
            }
        }
        Ok(())
    }

    /// Sends what is due, concurrently, and records each outcome. A message is
    /// marked sent only after the peer accepted it, so a crash in between
    /// sends it again with the same `id` (the receiver's idempotency key).
    async fn deliver(&self) {
        let now = self.inner.clock.now();
        let due = match db::due(&self.lock(), now, 32) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the outbox");
                return;
            }
        };
        if due.is_empty() {
            return;
        }
        let results = futures::future::join_all(due.iter().map(|r| self.send(r))).await;
        let now = self.inner.clock.now();
        for (row, res) in due.into_iter().zip(results) {
            let channel = row.channel.split(':').next().unwrap_or("").to_string();
            let label = |result: &str| ChannelResultLabel {
                channel: channel.clone(),
                result: result.into(),
            };
            match res {
                Ok(()) => {
                    self.inner.metrics.notify_attempts.get_or_create(&label("ok")).inc();
                    let r = self.lock().execute(
                        "UPDATE outbox SET state = 'sent', sent_at = ?2, attempts = attempts + 1, last_error = NULL WHERE id = ?1",
                        params![row.id, ms(now)],
                    );
                    if let Err(e) = r {
                        tracing::error!(error = %e, id = %row.id, "sent but cannot record it; it may be sent again with the same id");
                    }
                    let cleared = self
                        .inner
                        .failing
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&row.person);
                    if let Some(site) = cleared {
                        self.report_failure(&row.person, site, false, "").await;
                    }
                }
                Err(e) => {
                    self.inner.metrics.notify_attempts.get_or_create(&label("error")).inc();
                    tracing::warn!(id = %row.id, to = %row.person, channel = %row.channel, attempt = row.attempts + 1, error = %e, "notification not delivered");
                    if let Err(e) = self.after_failure(&row, &e, now).await {
                        tracing::error!(error = %e, "cannot record a delivery failure");
                    }
                }
            }
        }
    }

    async fn after_failure(&self, row: &OutboxRow, err: &str, now: Timestamp) -> rusqlite::Result<()> {
        let s = &self.inner.n.settings;
        let attempts = row.attempts + 1;
        let mut give_up_site = None;
        {
            let c = self.lock();
            if attempts < s.retry_max_attempts {
                // Exponential backoff with ±25 % jitter, so a receiver coming
                // back is not hit by every sender at the same instant.
                let base = (s.retry_base_s as f64) * 2f64.powi(attempts as i32 - 1);
                let delay = base.min(s.retry_max_s as f64) * rand::random_range(0.75..1.25);
                c.execute(
                    "UPDATE outbox SET attempts = ?2, last_error = ?3, next_at = ?4 WHERE id = ?1",
                    params![
                        row.id,
                        attempts,
                        err,
                        ms(now + Duration::milliseconds((delay * 1000.0) as i64))
                    ],
                )?;
                return Ok(());
            }
            c.execute(
                "UPDATE outbox SET state = 'failed', attempts = ?2, last_error = ?3 WHERE id = ?1",
                params![row.id, attempts, err],
            )?;
            self.inner.metrics.notify_failed.inc();
            // The next contact method of the same person, same message.
            let person = self.inner.n.person(&row.person);
            match person.and_then(|p| p.contacts.get(row.contact_idx + 1)) {
                Some(next) => {
                    let id = format!(
                        "{}-c{}",
                        row.id.split("-c").next().unwrap_or(&row.id),
                        row.contact_idx + 1
                    );
                    let mut body: Value = serde_json::from_str(&row.body).unwrap_or(Value::Null);
                    body["id"] = json!(id);
                    db::insert_outbox(
                        &c,
                        &OutboxRow {
                            id,
                            incident_id: row.incident_id.clone(),
                            kind: row.kind.clone(),
                            person: row.person.clone(),
                            contact_idx: row.contact_idx + 1,
                            channel: next.channel(),
                            level: row.level,
                            alarm_ids: row.alarm_ids.clone(),
                            body: body.to_string(),
                            ..OutboxRow::due(now)
                        },
                    )?;
                }
                None => {
                    let site = db::incident(&c, &row.incident_id)?
                        .map(|i| i.site)
                        .or_else(|| self.inner.cfg.sites.first().map(|s| s.id.as_str().to_string()));
                    give_up_site = site;
                }
            }
        }
        // Every way of reaching this person failed: the board must show it.
        if let Some(site) = give_up_site.and_then(|s| crate::model::SiteId::new(&s).ok()) {
            self.inner
                .failing
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(row.person.clone(), site.clone());
            self.report_failure(&row.person, site, true, err).await;
        }
        Ok(())
    }

    async fn report_failure(&self, person: &str, site: crate::model::SiteId, active: bool, err: &str) {
        let Some(s) = self.inner.cfg.site(site.as_str()) else {
            return;
        };
        let spec = RaiseSpec {
            site: s.id.clone(),
            device: s.device.clone(),
            source: format!("notify:{person}"),
            condition: "notification_failed".into(),
            origin: AlarmOrigin::Comm,
            priority: Priority::High,
            value: None,
            limit: None,
            message: format!("Could not notify {person} by any contact method: {err}"),
            message_ja: format!("{person} への通知が全ての連絡手段で失敗: {err}"),
            suppressed_by: vec![],
        };
        if let Err(e) = self.inner.pipeline.external(spec, active).await {
            tracing::error!(error = %e, "cannot report a notification failure");
        }
    }

    async fn send(&self, row: &OutboxRow) -> Result<(), String> {
        let mut body: Value = serde_json::from_str(&row.body).map_err(|e| e.to_string())?;
        body["sent_at"] = json!(render::now_rfc3339(chrono::Utc::now()));
        let person = self.inner.n.person(&row.person).ok_or("person no longer configured")?;
        let (kind, to) = row.channel.split_once(':').ok_or("bad channel")?;
        match kind {
            "webhook" => self.send_webhook(to, &body, person).await,
            "email" => self.send_email(to, &body, person, &row.id).await,
            other => Err(format!("unknown channel {other}")),
        }
    }

    async fn send_webhook(&self, name: &str, body: &Value, person: &Person) -> Result<(), String> {
        let hook = self.inner.n.webhook(name).ok_or("webhook no longer configured")?;
        let ja = person.language == "ja";
        let tz = self.inner.cfg.service.utc_offset_hours;
        let payload = match hook.format {
            WebhookFormat::Mizuban => body.clone(),
            WebhookFormat::Slack => render::chat(body, false, ja, tz, &self.inner.cfg.service.name),
            WebhookFormat::Teams => render::chat(body, true, ja, tz, &self.inner.cfg.service.name),
        };
        let bytes = serde_json::to_vec(&payload).map_err(|e| e.to_string())?;
        let sig = hmac_sha256_hex(hook.secret.as_bytes(), &bytes);
        let r = self
            .inner
            .http
            .post(&hook.url)
            .timeout(std::time::Duration::from_secs(hook.timeout_s))
            .header("content-type", "application/json")
            .header("x-mizuban-signature", format!("sha256={sig}"))
            .header("idempotency-key", body["id"].as_str().unwrap_or(""))
            .body(bytes)
            .send()
            .await
            .map_err(|e| format!("webhook {name}: {e}"))?;
        if r.status().is_success() {
            Ok(())
        } else {
            Err(format!("webhook {name}: HTTP {}", r.status()))
        }
    }

    async fn send_email(&self, to: &str, body: &Value, person: &Person, id: &str) -> Result<(), String> {
        let smtp = self.inner.smtp.as_ref().ok_or("no [smtp] configured")?;
        let from = &self.inner.n.smtp.as_ref().ok_or("no [smtp] configured")?.from;
        let ja = person.language == "ja";
        let (subject, text) = render::email(
            body,
            ja,
            self.inner.cfg.service.utc_offset_hours,
            &self.inner.cfg.service.name,
        );
        let msg = lettre::Message::builder()
            .from(from.parse().map_err(|e| format!("from {from:?}: {e}"))?)
            .to(format!("{} <{to}>", person.name)
                .parse()
                .map_err(|e| format!("to {to:?}: {e}"))?)
            .subject(subject)
            .message_id(Some(format!("<{id}@mizuban>")))
            .header(lettre::message::header::ContentType::TEXT_PLAIN)
            .body(text)
            .map_err(|e| e.to_string())?;
        if let Some(dir) = &self.inner.n.settings.mail_copy_dir {
            let _ = std::fs::create_dir_all(dir);
            let _ = std::fs::write(std::path::Path::new(dir).join(format!("{id}.eml")), msg.formatted());
        }
        smtp.send(msg).await.map(|_| ()).map_err(|e| format!("smtp: {e}"))
    }

    // ---- used by the HTTP API ----

    /// Acknowledges, as the person the link or code was sent to, every alarm of
    /// its incident that still needs it. Single use: all links and codes of
    /// that person for that incident stop working.
    pub async fn ack(&self, key: AckKey<'_>, comment: Option<String>) -> Result<Vec<Alarm>, AckError> {
        let now = self.inner.clock.now();
        let g = self.grant(key)?;
        if g.used {
            return Err(AckError::Used);
        }
        if now > g.expires {
            return Err(AckError::Expired);
        }
        let how = match key {
            AckKey::Code(_) => "via ack code".to_string(),
            AckKey::Link(_) => format!("via {} link", g.channel),
        };
        let why = match comment.filter(|c| !c.trim().is_empty()) {
            Some(c) => format!("{c} ({how})"),
            None => how,
        };
        let mut out = Vec::new();
        for a in g.members.iter().filter(|a| !a.acked && !a.is_closed()) {
            match self
                .inner
                .pipeline
                .command(Command::Ack {
                    id: a.id.clone(),
                    who: g.person.clone(),
                    comment: Some(why.clone()),
                })
                .await
            {
                Ok(a) => out.push(a),
                Err(e) => tracing::warn!(alarm = %a.id, error = %e, "ack from a message: alarm not acknowledgeable"),
            }
        }
        self.lock().execute(
            "UPDATE ack_tokens SET used_at = ?3 WHERE incident_id = ?1 AND person = ?2",
            params![g.incident, g.person, ms(now)],
        )?;
        Ok(out)
    }

    /// What an ack link is about, for the confirmation page (no state change):
    /// the person it was sent to and the incident's alarms.
    pub fn describe_link(&self, token: &str) -> Result<(String, Vec<Alarm>), AckError> {
        let g = self.grant(AckKey::Link(token))?;
        Ok((g.person, g.members))
    }

    /// The link or code as stored, with its incident's alarms as they are now.
    fn grant(&self, key: AckKey<'_>) -> Result<Grant, AckError> {
        let c = self.lock();
        let (column, value) = match key {
            AckKey::Link(t) => ("token_hash", sha256_hex(t)),
            AckKey::Code(code) => ("code", code.trim().to_ascii_uppercase()),
        };
        let (incident, person, channel, expires, used): (String, String, String, i64, Option<i64>) = c
            .query_row(
                &format!(
                    "SELECT incident_id, person, channel, expires_at, used_at FROM ack_tokens WHERE {column} = ?1"
                ),
                [value],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()?
            .ok_or(AckError::Unknown)?;
        let inc = db::incident(&c, &incident)?.ok_or(AckError::Unknown)?;
        let members = Self::members(&c, &inc)?;
        Ok(Grant {
            incident,
            person,
            channel,
            expires: db::from_ms(expires),
            used: used.is_some(),
            members,
        })
    }

    /// Every message about an alarm: to whom, through what, when, delivered or not.
    pub fn notifications_for(&self, alarm_id: &str) -> rusqlite::Result<Vec<OutboxRow>> {
        let c = self.lock();
        let like = format!("%\"{}\"%", alarm_id.replace('"', ""));
        db::outbox_where(&c, "alarm_ids LIKE ?1", &like)
    }

    /// Recent messages, optionally of one state (`pending`, `sent`, `failed`, `held`, `summarized`).
    /// Pages sent in `[from, to)`, for the KPIs.
    pub fn pages_between(&self, from: Timestamp, to: Timestamp) -> rusqlite::Result<Vec<crate::alarm::kpi::Page>> {
        Ok(db::sent_between(&self.lock(), from, to)?
            .into_iter()
            .map(|(person, at)| crate::alarm::kpi::Page { at, person })
            .collect())
    }

    pub fn recent(&self, state: Option<&str>, limit: usize) -> rusqlite::Result<Vec<OutboxRow>> {
        db::recent(&self.lock(), state, limit)
    }

    /// Who is on call now, per team.
    pub fn on_call(&self) -> Vec<(String, Option<String>)> {
        let now = self.inner.clock.now();
        let tz = self.inner.cfg.service.utc_offset_hours;
        self.inner
            .n
            .teams
            .iter()
            .map(|t| {
                (
                    t.id.clone(),
                    roster::on_call(&self.inner.n, t, now, tz).map(str::to_string),
                )
            })
            .collect()
    }
}
