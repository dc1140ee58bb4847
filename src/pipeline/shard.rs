//! One pipeline shard: the live runner around an [`Engine`] that owns its
//! sites. It takes inputs off its queue, steps the engine with the clock's
//! time, counts and logs what the step says, and hands the step to the store
//! as one batch. Nothing of a step is shown before it is durable: the shard's
//! view is updated, and a command answered, by acks that run after the
//! commit; the store publishes the committed transitions.

use super::view::ShardView;
use super::{Incoming, Input, Quarantine};
use crate::alarm::Alarm;
use crate::config::Config;
use crate::engine::{Engine, Message, Note, Resume, SiteStatus, Step};
use crate::model::{Clock, Quality};
use crate::store::{Ack, Batch, Store};
use crate::telemetry::{events, Metrics};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub(super) struct Shard {
    idx: usize,
    engine: Engine,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    store: Store,
    view: Arc<ShardView>,
    quarantine: Arc<Quarantine>,
}

/// Applies a step's alarms and site statuses to the shard's view once the
/// batch that carries them has committed.
struct ViewOnCommit {
    view: Arc<ShardView>,
    alarms: Vec<Alarm>,
    sites: Vec<SiteStatus>,
}

impl Ack for ViewOnCommit {
    fn ack(self: Box<Self>) {
        for a in &self.alarms {
            self.view.put_alarm(a);
        }
        for s in self.sites {
            self.view.put_site(s);
        }
    }
}

impl Shard {
    pub(super) fn new(
        idx: usize,
        n: usize,
        cfg: Arc<Config>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        store: Store,
        view: Arc<ShardView>,
        quarantine: Arc<Quarantine>,
        resume: &mut Resume,
    ) -> Self {
        let engine = Engine::new(cfg, |s| super::shard_of(s.as_str(), n) == idx, resume, clock.now());
        // What was committed before the restart is shown at once.
        for a in engine.open_alarms() {
            view.put_alarm(a);
        }
        for s in engine.site_statuses() {
            view.put_site(s);
        }
        Self {
            idx,
            engine,
            clock,
            metrics,
            store,
            view,
            quarantine,
        }
    }

    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Input>, cancel: CancellationToken) {
        loop {
            let input = tokio::select! {
                biased;
                i = rx.recv() => match i { Some(i) => i, None => break },
                _ = cancel.cancelled() => break,
            };
            if let Err(e) = self.handle(input, false).await {
                tracing::error!(shard = self.idx, error = %e, "store unavailable; shard stops");
                break;
            }
        }
        // Drain what was already queued so accepted work is stored before exit.
        rx.close();
        while let Some(input) = rx.recv().await {
            if self.handle(input, true).await.is_err() {
                break;
            }
        }
        tracing::debug!(shard = self.idx, "shard stopped");
    }

    /// One input, start to finish: step the engine, queue its batch for the
    /// store. While draining at shutdown the clock-driven checks are skipped.
    async fn handle(&mut self, input: Input, draining: bool) -> Result<(), crate::store::StoreError> {
        let now = self.clock.now();
        let mut acks: Vec<Box<dyn Ack>> = Vec::new();
        let mut received = None;
        let mut reply = None;
        let mut inputs = Vec::new();
        let is_msg = matches!(input, Input::Message(_));
        let step = match input {
            Input::Message(m) => {
                let Incoming {
                    decoded,
                    topic,
                    raw,
                    arrived,
                    received: r,
                    ack,
                    input,
                } = *m;
                received = Some(r);
                if let Some(sent) = decoded.sent_at {
                    // Ours and the broker's delay, reported apart from the
                    // device's (which decides lateness).
                    let lag = ((arrived - sent).num_milliseconds().max(0) as f64) / 1000.0;
                    self.metrics.ingest_lag.observe(lag);
                    self.metrics.ingest_lag_last.set(lag);
                }
                acks.extend(ack);
                inputs.push(input);
                let msg = Message {
                    decoded,
                    topic,
                    raw,
                    arrived,
                };
                self.engine.step(crate::engine::Input::Message(Box::new(msg)), now)
            }
            Input::Command(cmd, tx) => {
                reply = Some(tx);
                self.engine.step(crate::engine::Input::Command(cmd), now)
            }
            Input::Tick if draining => Step::default(),
            Input::Tick => {
                self.view.set_ticked(now);
                self.engine.step(crate::engine::Input::Tick, now)
            }
            Input::External(spec, active) => self.engine.step(crate::engine::Input::External(spec, active), now),
        };
        let mut batch = self.account(step, reply, acks);
        batch.received = received;
        batch.inputs = inputs;
        if !batch.is_empty() {
            self.store.submit(batch, &self.metrics).await?;
        }
        if is_msg {
            // Counted once handled and queued for the store, so a reader
            // that sees the count and then flushes the store sees its effects.
            self.metrics.messages.inc();
        }
        Ok(())
    }

    /// Logs and counts what the step says, and turns it into the batch to
    /// store, with the acks that run once it is durable.
    fn account(
        &self,
        step: Step,
        reply: Option<tokio::sync::oneshot::Sender<Result<Alarm, crate::alarm::CommandError>>>,
        mut acks: Vec<Box<dyn Ack>>,
    ) -> Batch {
        let m = &self.metrics;
        for q in step.quarantined {
            if q.whole {
                events::Quarantined {
                    topic: &q.topic,
                    reason: &q.reason,
                    error: &q.error,
                }
                .emit(m);
            }
            self.quarantine.push(q);
        }
        for n in &step.notes {
            match n {
                Note::SampleProblem {
                    device,
                    problem,
                    detail,
                } => events::SampleProblem {
                    device,
                    reason: problem.as_str(),
                    detail,
                }
                .emit(m),
                Note::DuplicateMessage { device, boot, seq } => events::DuplicateMessage {
                    device,
                    boot: *boot,
                    seq: *seq,
                }
                .emit(m),
                Note::Rebooted { site, device, boot } => {
                    tracing::info!(site = %site, device = %device, boot, "device rebooted")
                }
            }
        }
        for (i, q) in [Quality::Good, Quality::Uncertain, Quality::Bad]
            .into_iter()
            .enumerate()
        {
            events::SampleStored(q, step.counts.stored[i]).emit(m);
        }
        m.duplicate_samples.inc_by(step.counts.duplicate_samples);
        m.late_samples.inc_by(step.counts.late_samples);
        if let Some(lost) = step.comm_lost {
            m.devices_comm_lost.set(lost);
        }
        if !step.transitions.is_empty() || !step.sites.is_empty() {
            acks.push(Box::new(ViewOnCommit {
                view: self.view.clone(),
                alarms: step.transitions.iter().map(|t| t.alarm.clone()).collect(),
                sites: step.sites,
            }));
        }
        if let (Some(tx), Some(res)) = (reply, step.reply) {
            if res.is_ok() {
                // Answered once the change is committed: an operator's 200
                // means the acknowledgement is durable. After the view's ack,
                // so the answer and the board agree.
                acks.push(Box::new(super::reply::ReplyOnCommit::new(tx, res)));
            } else {
                // Nothing changed; the requester may have gone.
                let _ = tx.send(res);
            }
        }
        Batch {
            readings: step.readings,
            transitions: step.transitions,
            rule_states: step.states,
            device_states: step.device_states,
            seen: step.seen,
            raw: step.raw,
            acks,
            ..Default::default()
        }
    }
}
