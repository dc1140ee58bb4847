//! The notification tables on PostgreSQL: the same operations as
//! [`super::outbox`]'s SQLite ones, on a connection of their own beside the
//! store's writer. A planning step is one transaction that first takes an
//! advisory lock, so two planners (later, two nodes) never plan the same
//! journal rows; messages are written in that transaction before anything is
//! sent, as on SQLite.

use super::codec::{from_ms, ms};
use super::outbox::{AckToken, Incident, OutboxRow, TokenKey};
use super::postgres::Blocking;
use super::StoreError;
use crate::alarm::{Action, Alarm};
use crate::model::Timestamp;
use crate::notify::message::Kind;
use crate::notify::plan::{Grant, JournalRow, Ledger};
use postgres::{GenericClient, Row, Transaction};
use std::cell::RefCell;

/// The planner's lock: one planning step at a time across every connection
/// to the database.
const PLAN_LOCK: i64 = 0x6d69_7a75_6e6f; // "mizuno"

const INCIDENT_COLS: &str =
    "id, group_key, policy, site, opened_at, first_sent_at, flush_at, last_msg_at, level, next_level_at, closed, announced, alarms";

const OUTBOX_COLS: &str = "id, incident_id, kind, person, contact_idx, channel, level, created_at, state, attempts, next_at, last_error, sent_at, alarm_ids, body";

fn q(e: postgres::Error) -> StoreError {
    StoreError::Query(super::postgres::describe(&e))
}

fn incident_row(r: &Row) -> Incident {
    Incident {
        id: r.get(0),
        group_key: r.get(1),
        policy: r.get(2),
        site: r.get(3),
        opened_at: from_ms(r.get(4)),
        first_sent_at: r.get::<_, Option<i64>>(5).map(from_ms),
        flush_at: r.get::<_, Option<i64>>(6).map(from_ms),
        last_msg_at: r.get::<_, Option<i64>>(7).map(from_ms),
        level: r.get::<_, i64>(8) as usize,
        next_level_at: r.get::<_, Option<i64>>(9).map(from_ms),
        closed: r.get(10),
        announced: r.get::<_, i64>(11) as usize,
        alarms: serde_json::from_str(r.get(12)).unwrap_or_default(),
    }
}

fn outbox_row(r: &Row) -> Result<OutboxRow, StoreError> {
    let kind: String = r.get(2);
    let body: String = r.get(14);
    Ok(OutboxRow {
        id: r.get(0),
        incident_id: r.get(1),
        kind: Kind::parse(&kind).ok_or_else(|| StoreError::Query(format!("outbox kind: unknown kind {kind:?}")))?,
        person: r.get(3),
        contact_idx: r.get::<_, i64>(4) as usize,
        channel: r.get(5),
        level: r.get::<_, i64>(6) as usize,
        created_at: from_ms(r.get(7)),
        state: r.get(8),
        attempts: r.get::<_, i64>(9) as u32,
        next_at: from_ms(r.get(10)),
        last_error: r.get(11),
        sent_at: r.get::<_, Option<i64>>(12).map(from_ms),
        alarm_ids: serde_json::from_str(r.get(13)).unwrap_or_default(),
        body: serde_json::from_str(&body).map_err(|e| StoreError::Query(format!("outbox body: {e}")))?,
    })
}

fn rows(rs: Vec<Row>) -> Result<Vec<OutboxRow>, StoreError> {
    rs.iter().map(outbox_row).collect()
}

fn save_incident(c: &mut impl GenericClient, i: &Incident) -> Result<(), postgres::Error> {
    c.execute(
        &format!(
            "INSERT INTO incidents ({INCIDENT_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
             ON CONFLICT (id) DO UPDATE SET group_key = excluded.group_key, policy = excluded.policy,
               site = excluded.site, opened_at = excluded.opened_at, first_sent_at = excluded.first_sent_at,
               flush_at = excluded.flush_at, last_msg_at = excluded.last_msg_at, level = excluded.level,
               next_level_at = excluded.next_level_at, closed = excluded.closed, announced = excluded.announced,
               alarms = excluded.alarms"
        ),
        &[
            &i.id,
            &i.group_key,
            &i.policy,
            &i.site,
            &ms(i.opened_at),
            &i.first_sent_at.map(ms),
            &i.flush_at.map(ms),
            &i.last_msg_at.map(ms),
            &(i.level as i64),
            &i.next_level_at.map(ms),
            &i.closed,
            &(i.announced as i64),
            &serde_json::to_string(&i.alarms).unwrap_or_default(),
        ],
    )?;
    Ok(())
}

fn incident(c: &mut impl GenericClient, id: &str) -> Result<Option<Incident>, postgres::Error> {
    Ok(
        c.query_opt(&format!("SELECT {INCIDENT_COLS} FROM incidents WHERE id = $1"), &[&id])?
            .as_ref()
            .map(incident_row),
    )
}

fn insert_outbox(c: &mut impl GenericClient, o: &OutboxRow) -> Result<(), StoreError> {
    let body = serde_json::to_string(&o.body).map_err(|e| StoreError::Query(format!("outbox body: {e}")))?;
    c.execute(
        // `seq` orders an incident's messages, as on SQLite.
        &format!(
            "INSERT INTO outbox ({OUTBOX_COLS}, seq) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,
               (SELECT COALESCE(MAX(seq), 0) + 1 FROM outbox WHERE incident_id = $2))
             ON CONFLICT (id) DO NOTHING"
        ),
        &[
            &o.id,
            &o.incident_id,
            &o.kind.as_str(),
            &o.person,
            &(o.contact_idx as i64),
            &o.channel,
            &(o.level as i64),
            &ms(o.created_at),
            &o.state,
            &(o.attempts as i64),
            &ms(o.next_at),
            &o.last_error,
            &o.sent_at.map(ms),
            &serde_json::to_string(&o.alarm_ids).unwrap_or_default(),
            &body,
        ],
    )
    .map_err(q)?;
    Ok(())
}

fn alarm(c: &mut impl GenericClient, id: &str) -> Result<Option<Alarm>, postgres::Error> {
    Ok(c.query_opt("SELECT json FROM alarms WHERE id = $1", &[&id])?
        .and_then(|r| serde_json::from_str(r.get(0)).ok()))
}

fn outbox_where(c: &mut impl GenericClient, clause: &str, arg: &str) -> Result<Vec<OutboxRow>, StoreError> {
    rows(
        c.query(
            &format!("SELECT {OUTBOX_COLS} FROM outbox WHERE {clause} ORDER BY created_at, incident_id, seq"),
            &[&arg],
        )
        .map_err(q)?,
    )
}

/// The planner's ledger inside [`PgOutbox::plan`]'s transaction.
pub struct PgLedger<'a, 't>(RefCell<&'a mut Transaction<'t>>);

impl Ledger for PgLedger<'_, '_> {
    type Error = StoreError;

    fn alarm(&self, id: &str) -> Result<Option<Alarm>, StoreError> {
        alarm(&mut **self.0.borrow_mut(), id).map_err(q)
    }
    fn save_incident(&mut self, i: &Incident) -> Result<(), StoreError> {
        save_incident(&mut **self.0.get_mut(), i).map_err(q)
    }
    fn notified(&self, incident: &str) -> Result<Vec<String>, StoreError> {
        let rs = self
            .0
            .borrow_mut()
            .query(
                "SELECT person, MIN(created_at) m FROM outbox WHERE incident_id = $1 AND kind != 'summary'
                 GROUP BY person ORDER BY m",
                &[&incident],
            )
            .map_err(q)?;
        Ok(rs.iter().map(|r| r.get(0)).collect())
    }
    fn last_contact(&self, incident: &str, person: &str) -> Result<Option<usize>, StoreError> {
        Ok(self
            .0
            .borrow_mut()
            .query_opt(
                "SELECT contact_idx FROM outbox WHERE incident_id = $1 AND person = $2 AND state = 'sent'
                 ORDER BY seq DESC LIMIT 1",
                &[&incident, &person],
            )
            .map_err(q)?
            .map(|r| r.get::<_, i64>(0) as usize))
    }
    fn counted_times(&self, person: &str, since: Timestamp) -> Result<Vec<Timestamp>, StoreError> {
        let rows = self
            .0
            .borrow_mut()
            .query(
                "SELECT created_at FROM outbox WHERE person = $1 AND created_at > $2
                 AND state NOT IN ('held', 'summarized') AND id NOT LIKE '%-c_'",
                &[&person, &ms(since)],
            )
            .map_err(q)?;
        Ok(rows.iter().map(|r| from_ms(r.get::<_, i64>(0))).collect())
    }
    fn grant(&mut self, g: &Grant) -> Result<(), StoreError> {
        self.0
            .get_mut()
            .execute(
                "INSERT INTO ack_tokens (token_hash, code, incident_id, person, channel, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &g.token_hash,
                    &g.code,
                    &g.incident,
                    &g.person,
                    &g.channel,
                    &ms(g.expires),
                ],
            )
            .map_err(q)?;
        Ok(())
    }
    fn insert(&mut self, row: &OutboxRow, _lead: Option<&str>) -> Result<(), StoreError> {
        insert_outbox(&mut **self.0.get_mut(), row)
    }
    fn held(&self) -> Result<Vec<OutboxRow>, StoreError> {
        outbox_where(&mut **self.0.borrow_mut(), "state = $1", "held")
    }
    fn summarized(&mut self, id: &str) -> Result<(), StoreError> {
        self.0
            .get_mut()
            .execute("UPDATE outbox SET state = 'summarized' WHERE id = $1", &[&id])
            .map_err(q)?;
        Ok(())
    }
}

/// The engine's cursor into the journal: the seq of the last row planned.
fn cursor(c: &mut impl GenericClient) -> Result<i64, StoreError> {
    Ok(c.query_opt(
        "SELECT CAST(value AS BIGINT) FROM notify_meta WHERE key = 'cursor'",
        &[],
    )
    .map_err(q)?
    .map(|r| r.get(0))
    .unwrap_or(0))
}

/// The notification tables on their own PostgreSQL connection.
pub struct PgOutbox {
    c: Blocking,
}

impl PgOutbox {
    pub fn open(url: &str) -> Result<Self, StoreError> {
        Ok(Self {
            c: Blocking::connect(url)?,
        })
    }

    /// See [`super::outbox::Outbox::plan`].
    pub fn plan(
        &self,
        now: Timestamp,
        sent: &[String],
        step: impl FnOnce(&mut dyn Ledger<Error = StoreError>, &[JournalRow], &mut Vec<Incident>) -> Result<(), StoreError>
            + Send,
    ) -> Result<i64, StoreError> {
        self.c.try_with(|c| {
            let before = cursor(c)?;
            let upto = super::postgres::final_seq(c, "journal", before)?.unwrap_or(before);
            let (work, pending) = {
                let r = c
                    .query_one(
                        "SELECT
                           $1::int8 > $2::int8
                           OR EXISTS (SELECT 1 FROM incidents WHERE NOT closed AND (flush_at <= $3 OR next_level_at <= $3))
                           OR EXISTS (SELECT 1 FROM outbox WHERE state = 'held'),
                         (SELECT COUNT(*) FROM outbox WHERE state = 'pending')",
                        &[&upto, &before, &ms(now)],
                    )
                    .map_err(q)?;
                (r.get::<_, bool>(0), r.get::<_, i64>(1))
            };
            if !work && sent.is_empty() {
                return Ok(pending);
            }
            let mut tx = c.transaction().map_err(q)?;
            if !sent.is_empty() {
                tx.execute(&format!("{} WHERE id = ANY($1)", super::outbox::SET_SENT), &[&sent, &ms(now)])
                    .map_err(q)?;
            }
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PLAN_LOCK]).map_err(q)?;
            let mut open: Vec<Incident> = tx
                .query(&format!("SELECT {INCIDENT_COLS} FROM incidents WHERE NOT closed"), &[])
                .map_err(q)?
                .iter()
                .map(incident_row)
                .collect();
            // Read again under the lock: another planner may have moved it.
            let from = cursor(&mut tx)?;
            let mut last = None;
            let mut journal = Vec::new();
            for r in tx
                .query(
                    "SELECT seq, alarm_id, action, notify, to_state = 'normal' FROM journal WHERE seq > $1 AND seq <= $2
                     ORDER BY seq LIMIT 1000",
                    &[&from, &upto],
                )
                .map_err(q)?
            {
                let name: String = r.get(2);
                last = Some(r.get::<_, i64>(0));
                journal.push(JournalRow {
                    alarm_id: r.get(1),
                    action: Action::parse(&name)
                        .ok_or_else(|| StoreError::Query(format!("unknown journal action {name:?}")))?,
                    notify: r.get(3),
                    closes: r.get(4),
                });
            }
            step(&mut PgLedger(RefCell::new(&mut tx)), &journal, &mut open)?;
            if let Some(last) = last {
                tx.execute(
                    "INSERT INTO notify_meta (key, value) VALUES ('cursor', $1)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    &[&last.to_string()],
                )
                .map_err(q)?;
            }
            let pending: i64 = tx
                .query_one("SELECT COUNT(*) FROM outbox WHERE state = 'pending'", &[])
                .map_err(q)?
                .get(0);
            tx.commit().map_err(q)?;
            Ok(pending)
        })
    }

    /// Messages due now, a person's messages about one incident in order.
    pub fn due(&self, now: Timestamp, limit: usize) -> Result<Vec<OutboxRow>, StoreError> {
        self.c.try_with(|c| {
            rows(
                c.query(
                    &format!(
                        "SELECT {OUTBOX_COLS} FROM outbox WHERE state = 'pending' AND next_at <= $1
                         AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.person = outbox.person
                                         AND o.incident_id = outbox.incident_id
                                         AND o.state = 'pending' AND o.seq < outbox.seq)
                         ORDER BY created_at, incident_id, seq LIMIT $2"
                    ),
                    &[&ms(now), &(limit as i64)],
                )
                .map_err(q)?,
            )
        })
    }

    pub fn execute(&self, sql: &str, params: &[&(dyn postgres::types::ToSql + Sync)]) -> Result<(), StoreError> {
        self.c.try_with(|c| c.execute(sql, params).map(|_| ()).map_err(q))
    }

    pub fn insert(&self, row: &OutboxRow) -> Result<(), StoreError> {
        self.c.try_with(|c| insert_outbox(c, row))
    }

    pub fn incident(&self, id: &str) -> Result<Option<Incident>, StoreError> {
        self.c.try_with(|c| incident(c, id).map_err(q))
    }

    pub fn ack_token(&self, key: TokenKey<'_>) -> Result<Option<(AckToken, Vec<Alarm>)>, StoreError> {
        let (column, value) = key.column();
        self.c.try_with(|c| {
            let Some(r) = c
                .query_opt(
                    &format!(
                        "SELECT incident_id, person, channel, expires_at, used_at FROM ack_tokens WHERE {column} = $1"
                    ),
                    &[&value],
                )
                .map_err(q)?
            else {
                return Ok(None);
            };
            let incident_id: String = r.get(0);
            let Some(inc) = incident(c, &incident_id).map_err(q)? else {
                return Ok(None);
            };
            let mut members = Vec::new();
            for id in &inc.alarms {
                members.extend(alarm(c, id).map_err(q)?);
            }
            Ok(Some((
                AckToken {
                    incident: incident_id,
                    person: r.get(1),
                    channel: r.get(2),
                    expires: from_ms(r.get(3)),
                    used: r.get::<_, Option<i64>>(4).is_some(),
                },
                members,
            )))
        })
    }

    /// Messages whose alarm ids match `like` (the caller's LIKE pattern).
    pub fn for_alarm(&self, like: &str) -> Result<Vec<OutboxRow>, StoreError> {
        self.c.try_with(|c| outbox_where(c, "alarm_ids LIKE $1", like))
    }

    pub fn sent_between(&self, from: Timestamp, to: Timestamp) -> Result<Vec<(String, Timestamp)>, StoreError> {
        self.c.try_with(|c| {
            Ok(c.query(
                "SELECT person, sent_at FROM outbox WHERE state = 'sent' AND sent_at >= $1 AND sent_at < $2 ORDER BY sent_at",
                &[&ms(from), &ms(to)],
            )
            .map_err(q)?
            .iter()
            .map(|r| (r.get(0), from_ms(r.get(1))))
            .collect())
        })
    }

    pub fn recent(&self, state: Option<&str>, limit: usize) -> Result<Vec<OutboxRow>, StoreError> {
        self.c.try_with(|c| {
            rows(
                c.query(
                    &format!(
                        "SELECT {OUTBOX_COLS} FROM outbox WHERE $1::text IS NULL OR state = $1
                         ORDER BY created_at DESC, incident_id DESC, seq DESC LIMIT $2"
                    ),
                    &[&state, &(limit as i64)],
                )
                .map_err(q)?,
            )
        })
    }

    pub fn sent_alarm_ids(&self) -> Result<std::collections::HashSet<String>, StoreError> {
        self.c.try_with(|c| {
            let mut out = std::collections::HashSet::new();
            for r in c
                .query("SELECT alarm_ids FROM outbox WHERE state = 'sent'", &[])
                .map_err(q)?
            {
                out.extend(serde_json::from_str::<Vec<String>>(r.get(0)).unwrap_or_default());
            }
            Ok(out)
        })
    }
}
