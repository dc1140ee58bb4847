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
    http: reqwest::Client,
    smtp: Option<AsyncSmtpTransport<Tokio1Executor>>,
    public_url: String,
    /// People whose delivery failed with every contact method, and the site
    /// the `notification_failed` alarm was raised on (cleared on the next success).
    failing: Mutex<HashMap<String, crate::model::SiteId>>,
    /// Alarms a delivered message was about (an alarm's `paged`).
    paged: Mutex<std::collections::HashSet<String>>,
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
        let me = Self {
            inner: Arc::new(Inner {
                cfg,
                n,
                clock,
                pipeline,
                metrics,
                outbox,
                http: reqwest::Client::builder().build()?,
                smtp,
                public_url: public_url.trim_end_matches('/').to_string(),
                failing: Mutex::new(HashMap::new()),
                paged: Mutex::new(paged),
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

    /// Everything that decides what to send, in one transaction: follow the
    /// journal, flush groups, escalate, summarise held messages (the
    /// [`Planner`], over the outbox tables).
    fn plan(&self) -> Result<(), StoreError> {
        let now = self.inner.clock.now();
        let pending = self.inner.outbox.plan(now, |ledger, journal, open| {
            let mut planner = Planner {
                cfg: &self.inner.cfg,
                n: &self.inner.n,
                public_url: &self.inner.public_url,
                ids: &mut RandomIds,
            };
            planner.step(ledger, journal, open, now).map(|_| ())
        })?;
        self.inner.metrics.notify_pending.set(pending);
        Ok(())
    }

    /// Sends what is due, concurrently, and records each outcome. A message is
    /// marked sent only after the peer accepted it, so a crash in between
    /// sends it again with the same `id` (the receiver's idempotency key).
    async fn deliver(&self) {
        let now = self.inner.clock.now();
        let due = match self.inner.outbox.due(now, 32) {
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
                    if let Err(e) = self.inner.outbox.mark_sent(&row.id, now) {
                        tracing::error!(error = %e, id = %row.id, "sent but cannot record it; it may be sent again with the same id");
                    }
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
        let ja = person.language == "ja";
        let tz = self.inner.cfg.service.utc_offset_hours;
        let payload = match hook.format {
            WebhookFormat::Mizuban => serde_json::to_value(body).map_err(|e| e.to_string())?,
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
