use super::config::{NotifyConfig, Person, WebhookFormat};
use super::message::Message;
use super::plan::{Planner, RandomIds};
use super::{render, roster};
use crate::alarm::{Alarm, AlarmOrigin, RaiseSpec};
use crate::config::Config;
use crate::device::Priority;
use crate::model::secret::{hmac_sha256_hex, sha256_hex};
use crate::model::{Clock, Timestamp};
use crate::pipeline::{Command, Pipeline};
use crate::store::outbox::{Outbox, OutboxRow, TokenKey};
use crate::store::StoreError;
use crate::telemetry::metrics::ChannelResultLabel;
use crate::telemetry::Metrics;
use chrono::{Duration, SubsecRound};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How often the engine looks at its timers (group waits, escalations,
/// retries) when nothing was committed.
const STEP: std::time::Duration = std::time::Duration::from_millis(100);

/// Messages being delivered at once, all receivers together; more wait in
/// the outbox (durable), not in memory.
const IN_FLIGHT_MAX: usize = 1024;

/// How long a stopping engine waits for deliveries under way, so what was
/// delivered is recorded and not sent again after the restart.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(3);

/// One receiver's own connection pool and its bound on messages in flight.
struct Lane {
    http: reqwest::Client,
    slots: Arc<tokio::sync::Semaphore>,
}

/// A delivery that finished, waiting to be recorded.
type Finished = (OutboxRow, Result<(), String>);

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

impl From<StoreError> for AckError {
    fn from(e: StoreError) -> Self {
        AckError::Failed(e.to_string())
    }
}

struct Inner {
    cfg: Arc<Config>,
    n: Arc<NotifyConfig>,
    clock: Arc<dyn Clock>,
    pipeline: Pipeline,
    metrics: Arc<Metrics>,
    outbox: Outbox,
    /// Per webhook (by name): a pool and a bound of its own, so a slow
    /// receiver does not hold up the others.
    hooks: HashMap<String, Lane>,
    smtp: Option<AsyncSmtpTransport<Tokio1Executor>>,
    mail_slots: Arc<tokio::sync::Semaphore>,
    /// Messages being sent now: not handed out again until their outcome
    /// is recorded.
    in_flight: Mutex<std::collections::HashSet<String>>,
    public_url: String,
    /// People whose delivery failed with every contact method, and the site
    /// the `notification_failed` alarm was raised on (cleared on the next success).
    failing: Mutex<HashMap<String, crate::model::SiteId>>,
    /// Alarms a delivered message was about (an alarm's `paged`).
    paged: Mutex<std::collections::HashSet<String>>,
    /// Each person's rate-limit window, kept from step to step.
    rates: Mutex<super::plan::RateWindow>,
}

/// Handle to the notification engine: the API acknowledges through it and
/// reads who was told what.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
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
        let outbox = Outbox::open_at(&cfg.store_location())?;
        let paged = outbox.sent_alarm_ids()?;
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
        let mut hooks = HashMap::new();
        for h in &n.webhooks {
            let http = reqwest::Client::builder()
                .pool_max_idle_per_host(h.max_in_flight.max(1))
                .tcp_nodelay(true)
                .build()?;
            let slots = Arc::new(tokio::sync::Semaphore::new(h.max_in_flight.max(1)));
            hooks.insert(h.name.clone(), Lane { http, slots });
        }
        let mail_slots = Arc::new(tokio::sync::Semaphore::new(
            n.smtp.as_ref().map_or(1, |s| s.max_in_flight.max(1)),
        ));
        let me = Self {
            inner: Arc::new(Inner {
                cfg,
                n,
                clock,
                pipeline,
                metrics,
                outbox,
                hooks,
                smtp,
                mail_slots,
                in_flight: Mutex::new(Default::default()),
                public_url: public_url.trim_end_matches('/').to_string(),
                failing: Mutex::new(HashMap::new()),
                paged: Mutex::new(paged),
                rates: Mutex::new(Default::default()),
            }),
        };
        let engine = me.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(STEP);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Bounded by the in-flight cap: each delivery in flight reports
            // once, so a report never waits for room (policy: never full).
            let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<Finished>(IN_FLIGHT_MAX);
            let mut finished: Vec<Finished> = Vec::new();
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
                    // A delivery finished: record it, and let what waited
                    // behind it (the same person's next message) go.
                    Some(d) = done_rx.recv() => finished.push(d),
                    // Time-driven work: group waits, escalations, retries.
                    _ = tick.tick() => {}
                }
                // Whatever else finished or was committed meanwhile is
                // handled in this same round: under load the rounds grow,
                // their number does not.
                while let Ok(d) = done_rx.try_recv() {
                    finished.push(d);
                }
                while let Ok(_) | Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) = commits.try_recv() {}
                // Failures first, one by one (retry, next contact method, or
                // give up); deliveries are recorded by the planning step.
                let (ok, failed): (Vec<_>, Vec<_>) =
                    std::mem::take(&mut finished).into_iter().partition(|(_, r)| r.is_ok());
                if !failed.is_empty() {
                    engine.record_failures(failed).await;
                }
                // SQLite work off the async workers: it may wait for the
                // store's writer (busy timeout). One transaction records what
                // was delivered and plans; the due messages are read after it.
                let e = engine.clone();
                let sent: Vec<String> = ok.iter().map(|(r, _)| r.id.clone()).collect();
                let busy = engine.inner.in_flight.lock().unwrap_or_else(|p| p.into_inner()).len();
                let due = match tokio::task::spawn_blocking(move || e.plan(&sent, busy < IN_FLIGHT_MAX)).await {
                    Ok(Ok(due)) => due,
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "notification engine step failed; retrying");
                        // Not recorded yet: kept (and still in flight, so
                        // not sent again) for the next round.
                        finished = ok;
                        continue;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "notification engine step panicked; retrying");
                        finished = ok;
                        continue;
                    }
                };
                engine.delivered(ok).await;
                engine.dispatch(due, &done_tx);
            }
            // Let deliveries under way finish and be recorded, so they are
            // not sent again after a restart (if they are, the receiver sees
            // the same id).
            let deadline = tokio::time::Instant::now() + DRAIN;
            while !engine
                .inner
                .in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty()
            {
                match tokio::time::timeout_at(deadline, done_rx.recv()).await {
                    Ok(Some(d)) => engine.record(d).await,
                    _ => break,
                }
            }
        });
        Ok((me, task))
    }

    /// Everything that decides what to send, in one transaction: follow the
    /// journal, flush groups, escalate, summarise held messages (the
    /// [`Planner`], over the outbox tables).
    /// `sent` were delivered since the last step and are recorded in the
    /// same transaction. Returns the messages due now (none when `room` is
    /// false: everything that may be in flight is).
    fn plan(&self, sent: &[String], room: bool) -> Result<Vec<OutboxRow>, StoreError> {
        let now = self.inner.clock.now();
        let mut rates = self.inner.rates.lock().unwrap_or_else(|p| p.into_inner());
        let window: &mut super::plan::RateWindow = &mut rates;
        let planned = self.inner.outbox.plan(now, sent, |ledger, journal, open| {
            let mut planner = Planner {
                cfg: &self.inner.cfg,
                n: &self.inner.n,
                public_url: &self.inner.public_url,
                ids: &mut RandomIds,
            };
            planner.step(ledger, journal, open, now, window).map(|_| ())
        });
        let pending = match planned {
            Ok(p) => p,
            Err(e) => {
                // The step's counts were not committed with it.
                rates.clear();
                return Err(e);
            }
        };
        self.inner.metrics.notify_pending.set(pending);
        if !room {
            return Ok(Vec::new());
        }
        // Rows in flight are still pending, so ask for enough to see past them.
        self.inner.outbox.due(now, IN_FLIGHT_MAX)
    }

    /// Hands out what is due: each message is sent by a task of its own,
    /// bounded by its receiver's lane, and reports back on `done`. A message
    /// is marked sent only after the peer accepted it, so a crash in between
    /// sends it again with the same `id` (the receiver's idempotency key).
    /// A person's messages about one incident go one at a time, in order
    /// (the outbox does not hand out the next before the last is recorded).
    fn dispatch(&self, due: Vec<OutboxRow>, done: &tokio::sync::mpsc::Sender<Finished>) {
        let mut in_flight = self.inner.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        for row in due {
            if in_flight.len() >= IN_FLIGHT_MAX {
                break;
            }
            if !in_flight.insert(row.id.clone()) {
                continue;
            }
            let me = self.clone();
            let done = done.clone();
            tokio::spawn(async move {
                let res = me.send(&row).await;
                let _ = done.send((row, res)).await; // closed only when the engine stopped
            });
        }
    }

    /// Records one delivery that finished while the engine stops.
    async fn record(&self, d: Finished) {
        if d.1.is_err() {
            return self.record_failures(vec![d]).await;
        }
        let now = self.inner.clock.now();
        let me = self.clone();
        let id = d.0.id.clone();
        match tokio::task::spawn_blocking(move || me.inner.outbox.mark_sent(&id, now)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, id = %d.0.id, "sent but cannot record it; it may be sent again with the same id")
            }
            Err(e) => tracing::error!(error = %e, "recording a delivery panicked"),
        }
        self.delivered(vec![d]).await;
    }

    /// After deliveries were recorded: counted, their alarms paged, a
    /// person's failure cleared, and out of flight.
    async fn delivered(&self, ok: Vec<Finished>) {
        for (row, _) in &ok {
            self.count_attempt(row, "ok");
            self.inner
                .paged
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(row.alarm_ids.iter().cloned());
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
        let mut in_flight = self.inner.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        for (row, _) in &ok {
            in_flight.remove(&row.id);
        }
    }

    /// Failed deliveries, one by one: retry, the next contact method, or give up.
    async fn record_failures(&self, failed: Vec<Finished>) {
        let now = self.inner.clock.now();
        for (row, res) in &failed {
            let e = res.as_ref().err().map(String::as_str).unwrap_or("");
            self.count_attempt(row, "error");
            tracing::warn!(id = %row.id, to = %row.person, channel = %row.channel, attempt = row.attempts + 1, error = %e, "notification not delivered");
            if let Err(e) = self.after_failure(row, e, now).await {
                tracing::error!(error = %e, "cannot record a delivery failure");
            }
        }
        let mut in_flight = self.inner.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        for (row, _) in &failed {
            in_flight.remove(&row.id);
        }
    }

    fn count_attempt(&self, row: &OutboxRow, result: &str) {
        let channel = row.channel.split(':').next().unwrap_or("").to_string();
        self.inner
            .metrics
            .notify_attempts
            .get_or_create(&ChannelResultLabel {
                channel,
                result: result.into(),
            })
            .inc();
    }

    async fn after_failure(&self, row: &OutboxRow, err: &str, now: Timestamp) -> Result<(), StoreError> {
        let s = &self.inner.n.settings;
        let attempts = row.attempts + 1;
        let mut give_up_site = None;
        {
            let outbox = &self.inner.outbox;
            if attempts < s.retry_max_attempts {
                // Exponential backoff with ±25 % jitter, so a receiver coming
                // back is not hit by every sender at the same instant.
                let base = (s.retry_base_s as f64) * 2f64.powi(attempts as i32 - 1);
                let delay = base.min(s.retry_max_s as f64) * rand::random_range(0.75..1.25);
                outbox.retry_at(
                    &row.id,
                    attempts,
                    err,
                    now + Duration::milliseconds((delay * 1000.0) as i64),
                )?;
                return Ok(());
            }
            outbox.mark_failed(&row.id, attempts, err)?;
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
                    let body = Message { id, ..row.body.clone() };
                    outbox.insert(&OutboxRow {
                        incident_id: row.incident_id.clone(),
                        contact_idx: row.contact_idx + 1,
                        channel: next.channel(),
                        level: row.level,
                        alarm_ids: row.alarm_ids.clone(),
                        ..OutboxRow::due(now, body)
                    })?;
                }
                None => {
                    let site = outbox
                        .incident(&row.incident_id)?
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
        // Stamped to the millisecond, as the payload has always carried it.
        let body = Message {
            sent_at: Some(chrono::Utc::now().trunc_subsecs(3)),
            ..row.body.clone()
        };
        let person = self.inner.n.person(&row.person).ok_or("person no longer configured")?;
        let (kind, to) = row.channel.split_once(':').ok_or("bad channel")?;
        match kind {
            "webhook" => self.send_webhook(to, &body, person).await,
            "email" => self.send_email(to, &body, person, &row.id).await,
            other => Err(format!("unknown channel {other}")),
        }
    }

    async fn send_webhook(&self, name: &str, body: &Message, person: &Person) -> Result<(), String> {
        let hook = self.inner.n.webhook(name).ok_or("webhook no longer configured")?;
        let lane = self.inner.hooks.get(name).ok_or("webhook no longer configured")?;
        let ja = person.language == "ja";
        let tz = self.inner.cfg.service.utc_offset_hours;
        let payload = match hook.format {
            WebhookFormat::Mizuban => serde_json::to_value(body).map_err(|e| e.to_string())?,
            WebhookFormat::Slack => render::chat(body, false, ja, tz, &self.inner.cfg.service.name),
            WebhookFormat::Teams => render::chat(body, true, ja, tz, &self.inner.cfg.service.name),
        };
        let bytes = serde_json::to_vec(&payload).map_err(|e| e.to_string())?;
        let sig = hmac_sha256_hex(hook.secret.as_bytes(), &bytes);
        let _slot = lane.slots.acquire().await.map_err(|e| e.to_string())?;
        let r = lane
            .http
            .post(&hook.url)
            .timeout(std::time::Duration::from_secs(hook.timeout_s))
            .header("content-type", "application/json")
            .header("x-mizuban-signature", format!("sha256={sig}"))
            .header("idempotency-key", body.id.as_str())
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

    async fn send_email(&self, to: &str, body: &Message, person: &Person, id: &str) -> Result<(), String> {
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
        let _slot = self.inner.mail_slots.acquire().await.map_err(|e| e.to_string())?;
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
        self.inner.outbox.tokens_used(&g.incident, &g.person, now)?;
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
        let (hash, code);
        let key = match key {
            AckKey::Link(t) => {
                hash = sha256_hex(t);
                TokenKey::Hash(&hash)
            }
            AckKey::Code(c) => {
                code = c.trim().to_ascii_uppercase();
                TokenKey::Code(&code)
            }
        };
        let (t, members) = self.inner.outbox.ack_token(key)?.ok_or(AckError::Unknown)?;
        Ok(Grant {
            incident: t.incident,
            person: t.person,
            channel: t.channel,
            expires: t.expires,
            used: t.used,
            members,
        })
    }

    /// Sets each alarm's `paged`: true only if a message about it was
    /// delivered to someone.
    pub fn mark_paged(&self, alarms: &mut [Alarm]) {
        let paged = self.inner.paged.lock().unwrap_or_else(|p| p.into_inner());
        for a in alarms {
            a.paged = paged.contains(&a.id);
        }
    }

    /// Every message about an alarm: to whom, through what, when, delivered or not.
    pub fn notifications_for(&self, alarm_id: &str) -> Result<Vec<OutboxRow>, StoreError> {
        self.inner.outbox.for_alarm(alarm_id)
    }

    /// Recent messages, optionally of one state (`pending`, `sent`, `failed`, `held`, `summarized`).
    /// Pages sent in `[from, to)`, for the KPIs.
    pub fn pages_between(&self, from: Timestamp, to: Timestamp) -> Result<Vec<crate::alarm::kpi::Page>, StoreError> {
        Ok(self
            .inner
            .outbox
            .sent_between(from, to)?
            .into_iter()
            .map(|(person, at)| crate::alarm::kpi::Page { at, person })
            .collect())
    }

    pub fn recent(&self, state: Option<&str>, limit: usize) -> Result<Vec<OutboxRow>, StoreError> {
        self.inner.outbox.recent(state, limit)
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
